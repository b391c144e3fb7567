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
- `--canonical`: all of this on the volume reoriented to LPS (array axis 0 = superior-inferior), so the prompts
  do not depend on how the file stores its axes (`PromptFrame`); without it, on the array as stored (as the
  challenge reads its .npz files).
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


class PromptFrame:
    """The array the protocol reads: the stored one (identity), or the volume reoriented to LPS (array axis 0 is
    then inferior -> superior: axial slices), so that a copy stored with permuted or flipped axes gets the same
    physical prompts. Masks go forward into the frame; prompts come back as stored (i, j, k) indices."""

    def __init__(self, volume, canonical: bool) -> None:
        from ..preprocess import AxisMap

        self.map = AxisMap.to_orientation(volume, "LPS") if canonical else AxisMap.identity(volume.size_ijk)
        self.spacing_kji = tuple(float(volume.spacing[c]) for c in self.map.source)[::-1]

    def forward(self, mask_kji: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.map.forward_array(mask_kji))

    def stored_ijk(self, frame_kji) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.map.inverse_index(_ijk(frame_kji))[0])

    def stored_kji(self, frame_kji) -> tuple[int, int, int]:
        i, j, k = self.stored_ijk(frame_kji)
        return int(round(k)), int(round(j)), int(round(i))


def run_object(session, truth: np.ndarray, spacing_kji, rng: np.random.Generator,
               clicks: int = CORRECTIVE_CLICKS, clicks_only: bool = False,
               frame: PromptFrame | None = None) -> ObjectResult:
    """The protocol for one object on a session whose image is set (its prompts are reset first). `truth` is on the
    volume's grid; the prompts are computed in `frame` (default: the stored array); recorded prompts are stored
    [k, j, i] indices."""
    if frame is not None:
        truth, spacing_kji = frame.forward(np.asarray(truth, bool)), frame.spacing_kji
        to_frame, back = frame.forward, frame.stored_ijk
        stored_kji = frame.stored_kji
    else:
        to_frame, back = (lambda m: m), _ijk  # noqa: E731
        stored_kji = lambda kji: tuple(int(v) for v in kji)  # noqa: E731
    truth = np.asarray(truth, bool)
    session.reset()
    result = ObjectResult()

    def record(prompt, mask, seconds):
        d = dice(mask, truth)
        if isinstance(prompt, Box):
            corners = np.array([stored_kji(prompt.lo_kji), stored_kji(prompt.hi_kji)])
            prompt = Box(tuple(int(v) for v in corners.min(0)), tuple(int(v) for v in corners.max(0)))
        elif isinstance(prompt, Click):
            prompt = Click(stored_kji(prompt.kji), prompt.positive)
        result.steps.append(Step(prompt, d, scored_nsd(mask, truth, spacing_kji, d), seconds))

    first: Box | Click = first_click(truth, rng) if clicks_only else protocol_box(truth, rng)
    if isinstance(first, Box) and np.count_nonzero(np.asarray(first.hi_kji) > np.asarray(first.lo_kji)) < 2:
        first = first_click(truth, rng)  # a box must span two axes (session.box_to_index): a tiny object gets a click
    t0 = time.perf_counter()
    if isinstance(first, Box):
        mask = session.set_box(back(first.lo_kji), back(first.hi_kji))
    else:
        mask = session.add_point(back(first.kji), positive=True)
    mask = to_frame(mask)
    record(first, mask, time.perf_counter() - t0)
    for _ in range(clicks):
        click = corrective_click(mask, truth, rng)
        if click is None:
            record(None, mask, 0.0)
            continue
        t0 = time.perf_counter()
        mask = to_frame(session.add_point(back(click.kji), positive=click.positive))
        record(click, mask, time.perf_counter() - t0)
    return result
