"""What the session gives an engine and gets back, all in model space ([D, H, W] voxels)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

#: progress(fraction in [0, 1], message)
ProgressCallback = Callable[[float, str], None]
#: preview(the mask so far): bool, a new array the receiver may keep; an engine's in model axes [D, H, W], a
#: session's (InteractiveSession, RemoteSession) on the volume's grid [k, j, i], read-only
PreviewCallback = Callable[[np.ndarray], None]


def _points(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 3)


@dataclass
class ModelPrompts:
    """Prompts in model voxel coordinates (float, (d, h, w) order)."""

    positive: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    negative: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    #: (lo, hi) corners of a 3D box, inclusive voxel indices, (d, h, w); None for no box
    box: tuple[np.ndarray, np.ndarray] | None = None
    #: model axis (0, 1 or 2) of the 2D view the latest click came from, when known
    view_axis: int | None = None
    #: the order the clicks were given in: "positive" / "negative" per click, taking `positive` and `negative`
    #: in turn (so engines that compose clicks one by one, docs/SESSION.md, see the history); None: all
    #: positives, then all negatives
    order: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.positive = _points(self.positive)
        self.negative = _points(self.negative)
        if self.box is not None:
            lo, hi = (np.asarray(c, dtype=np.float64).reshape(3) for c in self.box)
            self.box = (np.minimum(lo, hi), np.maximum(lo, hi))
        if self.order is None:
            self.order = ("positive",) * len(self.positive) + ("negative",) * len(self.negative)
        self.order = tuple(self.order)
        if (self.order.count("positive"), self.order.count("negative"), len(self.order)) != (
                len(self.positive), len(self.negative), len(self.positive) + len(self.negative)):
            raise ValueError(f"click order {self.order} does not match {len(self.positive)} positive and "
                             f"{len(self.negative)} negative clicks")

    def clicks(self) -> list[tuple[bool, np.ndarray]]:
        """(positive?, point (d, h, w)) for every click, in the order given."""
        taken = {"positive": iter(self.positive), "negative": iter(self.negative)}
        return [(kind == "positive", next(taken[kind])) for kind in self.order]

    @property
    def empty(self) -> bool:
        return len(self.positive) == 0 and len(self.negative) == 0 and self.box is None


class Engine(Protocol):
    """Runs one model on one model-space image; keeps its own caches between calls."""

    def set_image(self, image: np.ndarray, spacing: tuple[float, float, float] | None = None) -> None:
        """Model-space image [D, H, W] float32, already normalised by the model's preset, and its voxel size in mm
        along (D, H, W) (engines that choose a slicing axis use it). Resets caches."""

    def run(
        self,
        prompts: ModelPrompts,
        seed: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        """Foreground probability [D, H, W] float32 in [0, 1]. `seed` is an existing mask to refine
        (bool [D, H, W]) or None. Raises samadapt3d.errors.CancelledError when `cancel` is set."""


@runtime_checkable
class Preparable(Protocol):
    """An engine with work to do before the first prompt (a slice engine embeds its slices)."""

    def warm_up(self, progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> int:
        """Do the prompt-independent work; returns the units of work done. Cancellable."""


@runtime_checkable
class Prefetching(Protocol):
    """An engine that can do its prompt-independent work in the background (a slice engine embeds outward from
    the slice the user looks at, pausing for each click)."""

    def prefetch(self, axis: int | None = None, centre: int | None = None) -> None:
        """Start the background work (returns at once); a later set_image stops it."""


@runtime_checkable
class Previewing(Protocol):
    """An engine that can show its result while it is still being built (a slice engine walking slice by slice:
    on a 300-slice CT a first click takes minutes on a CPU, and the part around the click is ready in seconds)."""

    def run_previewing(
        self,
        prompts: ModelPrompts,
        seed: np.ndarray | None,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        preview: PreviewCallback | None,
    ) -> np.ndarray:
        """`run`, calling `preview(mask so far)` (bool [D, H, W]) now and then while it works."""
