"""2D mask and box helpers of the slice engine (boxes are inclusive (r0, c0, r1, c1) in slice pixels)."""
from __future__ import annotations

import numpy as np

from .prompts import label_components

Box = tuple[int, int, int, int]


def bbox_2d(mask: np.ndarray) -> Box | None:
    """Inclusive (r0, c0, r1, c1) of a 2D mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def clip_box(box, shape, within: Box | None = None) -> Box:
    lo_r, lo_c, hi_r, hi_c = (0, 0, shape[0] - 1, shape[1] - 1) if within is None else within
    r0, c0, r1, c1 = (int(v) for v in box)
    return (max(r0, lo_r), max(c0, lo_c), min(r1, hi_r), min(c1, hi_c))


def grow_box(box: Box, margin: float, shape, within: Box | None = None) -> Box:
    """`box` grown on every side by `margin` x its longer side (at least 2 px), clipped to the slice / `within`."""
    r0, c0, r1, c1 = box
    pad = max(2, int(round(margin * max(r1 - r0 + 1, c1 - c0 + 1))))
    return clip_box((r0 - pad, c0 - pad, r1 + pad, c1 + pad), shape, within)


def box_is_valid(box: Box) -> bool:
    return box[0] <= box[2] and box[1] <= box[3]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square (Chebyshev) dilation of a 2D bool mask (pixels beyond the border count as outside): separable, one
    shifted OR per pixel of radius and axis (10x faster than a max pool on a 400 x 400 slice)."""
    out = np.array(mask, dtype=bool)
    for axis in (0, 1):
        src = out.copy()
        for shift in range(1, max(int(radius), 0) + 1):
            if shift >= out.shape[axis]:
                break
            lead = [slice(None)] * 2
            tail = [slice(None)] * 2
            lead[axis], tail[axis] = slice(shift, None), slice(None, -shift)
            out[tuple(lead)] |= src[tuple(tail)]
            out[tuple(tail)] |= src[tuple(lead)]
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~dilate(~np.asarray(mask, bool), radius)


def component_at(mask: np.ndarray, point) -> np.ndarray:
    """The connected component (full connectivity) of `mask` holding `point`; empty when the point is outside."""
    point = tuple(int(v) for v in point)
    if not mask[point]:
        return np.zeros(mask.shape, bool)
    labels = label_components(mask)
    return labels == labels[point]
