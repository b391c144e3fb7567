"""The CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation" protocol, per object.

All arrays are [k, j, i] (array axis 0 is the slice index, as in the challenge's .npz files); prompts go to the
session in (i, j, k) index order.

- Step 0, a 3D box: the 2D bounding box of the object on its middle slice (middle = the element at position
  n // 2 of the sorted slices holding the object), each side moved outwards by randint(0, 6) px scaled by the
  image size / 256 along that axis (`BOX_JITTER_PX`, `BOX_REFERENCE_SIZE`; draws in the order row-low,
  col-low, row-high, col-high; clipped to the image), spanning the object's first to last slice.
  `--clicks-only`: step 0 is a foreground click at the distance-transform maximum of the whole object instead.
- Steps 1..5, one corrective click each, accumulated: the largest 26-connected component of
  (prediction != truth) (equal sizes: the first label of the component labelling); the Euclidean distance
  transform (voxel units) of that component cropped to its bounding box padded by 25 % per axis (at least one
  voxel; the padding is background, so the image edge counts as background); the click at its maximum, ties
  broken by the seeded generator; a foreground click where the truth is 1 there, else a background click.
  No error left: no click, the step repeats the previous result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..engines.prompts import label_components
from .metrics import curve_auc, dice, scored_nsd

BOX_JITTER_PX = 6
BOX_REFERENCE_SIZE = 256
CORRECTIVE_CLICKS = 5
EDT_PADDING = 0.25


@dataclass(frozen=True)
class Click:
    kji: tuple[int, int, int]
    positive: bool


@dataclass(frozen=True)
class Box:
    lo_kji: tuple[int, int, int]  # inclusive corners
    hi_kji: tuple[int, int, int]


def protocol_box(truth: np.ndarray, rng: np.random.Generator) -> Box:
    """Step 0's box (module docstring)."""
    slices = np.flatnonzero(truth.any(axis=(1, 2)))
    middle = int(slices[len(slices) // 2])
    rows, cols = np.nonzero(truth[middle])
    height, width = truth.shape[1:]
    jitter = [int(int(rng.integers(0, BOX_JITTER_PX + 1)) * size / BOX_REFERENCE_SIZE)
              for size in (height, width, height, width)]
    r0, c0 = max(int(rows.min()) - jitter[0], 0), max(int(cols.min()) - jitter[1], 0)
    r1, c1 = min(int(rows.max()) + jitter[2], height - 1), min(int(cols.max()) + jitter[3], width - 1)
    return Box((int(slices[0]), r0, c0), (int(slices[-1]), r1, c1))


def largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 26-connected component of a bool mask; None when the mask is empty."""
    if not mask.any():
        return None
    labels = label_components(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def padded_edt(component: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EDT (voxels) of `component` inside its bounding box padded by EDT_PADDING per axis: (distances over the
    unpadded bounding box, its low corner)."""
    from .metrics import distance_to

    idx = np.argwhere(component)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    size = hi - lo
    pad = np.maximum((size * EDT_PADDING).astype(int), 1)
    crop = np.zeros(tuple(size + 2 * pad), dtype=bool)
    inner = tuple(slice(int(p), int(p + s)) for p, s in zip(pad, size))
    crop[inner] = component[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))]
    distance = distance_to(~crop, (1.0, 1.0, 1.0))  # each voxel's distance to the nearest background voxel
    return distance[inner], lo


def edt_maximum(component: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """The voxel [k, j, i] of the EDT maximum of `component` (padded_edt), ties broken by `rng`."""
    distance, lo = padded_edt(component)
    best = np.argwhere(distance >= distance.max() - 1e-6)  # equal distances are sqrt of equal integers
    pick = best[int(rng.integers(len(best)))] if len(best) > 1 else best[0]
    return tuple(int(v) for v in lo + pick)


def corrective_click(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> Click | None:
    component = largest_component(np.asarray(prediction, bool) != np.asarray(truth, bool))
    if component is None:
        return None
    kji = edt_maximum(component, rng)
    return Click(kji, bool(truth[kji]))


def first_click(truth: np.ndarray, rng: np.random.Generator) -> Click:
    """`--clicks-only` step 0: a foreground click at the EDT maximum of the whole object."""
    return Click(edt_maximum(np.asarray(truth, bool), rng), True)


# ---- running it through a session --------------------------------------------------------------------
@dataclass
class Step:
    prompt: Box | Click | None  # None: nothing left to correct
    dice: float
    nsd: float
    seconds: float


@dataclass
class ObjectResult:
    steps: list[Step] = field(default_factory=list)

    @property
    def click_dice(self) -> list[float]:
        return [s.dice for s in self.steps[1:]]

    @property
    def click_nsd(self) -> list[float]:
        return [s.nsd for s in self.steps[1:]]

    @property
    def dsc_auc(self) -> float:
        return curve_auc(self.click_dice)

    @property
    def nsd_auc(self) -> float:
        return curve_auc(self.click_nsd)

    @property
    def final_dice(self) -> float:
        return self.steps[-1].dice

    @property
    def final_nsd(self) -> float:
        return self.steps[-1].nsd


def _ijk(kji) -> tuple[float, float, float]:
    return float(kji[2]), float(kji[1]), float(kji[0])


def run_object(session, truth: np.ndarray, spacing_kji, rng: np.random.Generator,
               clicks: int = CORRECTIVE_CLICKS, clicks_only: bool = False) -> ObjectResult:
    """The protocol for one object on a session whose image is set (its prompts are reset first)."""
    truth = np.asarray(truth, bool)
    session.reset()
    result = ObjectResult()

    def record(prompt, mask, seconds):
        d = dice(mask, truth)
        result.steps.append(Step(prompt, d, scored_nsd(mask, truth, spacing_kji, d), seconds))

    first: Box | Click = first_click(truth, rng) if clicks_only else protocol_box(truth, rng)
    if isinstance(first, Box) and np.count_nonzero(np.asarray(first.hi_kji) > np.asarray(first.lo_kji)) < 2:
        first = first_click(truth, rng)  # a box must span two axes (session.box_to_index): a tiny object gets a click
    t0 = time.perf_counter()
    if isinstance(first, Box):
        mask = session.set_box(_ijk(first.lo_kji), _ijk(first.hi_kji))
    else:
        mask = session.add_point(_ijk(first.kji), positive=True)
    record(first, mask, time.perf_counter() - t0)
    for _ in range(clicks):
        click = corrective_click(mask, truth, rng)
        if click is None:
            record(None, mask, 0.0)
            continue
        t0 = time.perf_counter()
        mask = session.add_point(_ijk(click.kji), positive=click.positive)
        record(click, mask, time.perf_counter() - t0)
    return result
