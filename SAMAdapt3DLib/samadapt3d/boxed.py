"""An array that is zero outside one box, stored as that box: how the session, its undo history and the slice
strategy's object memo hold probabilities and masks (a lung's probability on a 512 x 512 x 300 CT is nonzero in
16 % of the volume: 48 MiB of float32 in place of 300)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

#: elements of the array read at a time when its box is found
BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class BoxedArray:
    """`full()` is `shape` zeros (of `data`'s dtype) with `data` at `start`; exact. `data` is read-only."""

    shape: tuple[int, ...]
    start: tuple[int, ...]
    data: np.ndarray

    @classmethod
    def of(cls, array: np.ndarray) -> "BoxedArray":
        """The box of `array`'s nonzero elements, copied (an all-zero array keeps an empty box)."""
        array = np.asarray(array)
        box = nonzero_box(array)
        if box is None:
            empty = np.zeros((0,) * array.ndim, array.dtype)
            empty.setflags(write=False)
            return cls(tuple(array.shape), (0,) * array.ndim, empty)
        data = np.array(array[box])
        data.setflags(write=False)
        return cls(tuple(array.shape), tuple(s.start for s in box), data)

    @property
    def box(self) -> tuple[slice, ...]:
        return tuple(slice(a, a + n) for a, n in zip(self.start, self.data.shape))

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def full(self, dtype=None) -> np.ndarray:
        """A new writable array of `shape`."""
        out = np.zeros(self.shape, self.data.dtype if dtype is None else dtype)
        out[self.box] = self.data
        return out

    def map(self, function: Callable[[np.ndarray], np.ndarray]) -> "BoxedArray":
        """The same box with `function(data)` (which must keep zero at zero, and the data's shape)."""
        data = np.asarray(function(self.data))
        if data.shape != self.data.shape:
            raise ValueError(f"map changed the box's shape {self.data.shape} to {data.shape}")
        data.setflags(write=False)
        return BoxedArray(self.shape, self.start, data)


def nonzero_box(array: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of `array`'s nonzero elements (one slice per axis), None when there are none."""
    array = np.asarray(array)
    if array.ndim == 0:
        raise ValueError("a box needs at least one axis")
    # which indices along each axis hold a nonzero element, a block of the first axis at a time: the
    # whole array's `!= 0` would be a volume-sized temporary (75 MiB on a 512 x 512 x 300 CT)
    held = [np.zeros(n, bool) for n in array.shape]
    step = max(1, BLOCK_ELEMENTS // max(1, int(np.prod(array.shape[1:]))))
    for k in range(0, array.shape[0], step):
        nonzero = array[k:k + step] != 0
        for axis in range(array.ndim):
            found = nonzero.any(axis=tuple(a for a in range(array.ndim) if a != axis))
            if axis == 0:
                held[0][k:k + step] = found
            else:
                held[axis] |= found
    if not held[0].any():
        return None
    return tuple(slice(int(np.argmax(h)), len(h) - int(np.argmax(h[::-1]))) for h in held)
