"""Slab engine: run a 2D / 2.5D adapter model over every slice of a model-space volume.

- prompt-free multi-class models (SAMed: one slice per pass; MA-SAM: 5 consecutive slices per
  pass, stride-1 sliding window, the per-slice probabilities of all windows covering a slice
  averaged; edge slices replicated as in MA-SAM's preprocessing) -> `class_probabilities`,
  `segment_volume`;
- prompted models (Med-SA points; the session converts its clicks) -> `segment_volume_prompted`.

Everything is in model space: image [D, H, W] already normalised by `model.preset`; slices are
taken along D.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from ..errors import CancelledError, InputError
from collections import OrderedDict

from .base import ModelPrompts, ProgressCallback
from .compose import ClickComposer
from .prompts import click_voxel


def _check_volume(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or min(image.shape) < 1:
        raise InputError(f"expected a model-space volume [D, H, W], got shape {image.shape}")
    if not np.isfinite(image).all():
        raise InputError("the volume contains NaN or infinite values")
    return image


def _tick(progress: ProgressCallback | None, cancel: threading.Event | None, done: int, total: int, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"{what} cancelled")
    if progress is not None:
        progress(done / max(total, 1), f"{what} {done}/{total}")


def window_starts(depth: int, slab: int, stride: int = 1) -> list[int]:
    """Start indices (in the edge-padded volume) of the sliding windows; stride 1 is the published
    test. With a larger stride the last window is moved back so every slice is covered."""
    padded = depth + 2 * (slab // 2)
    last = padded - slab
    starts = list(range(0, last + 1, max(1, stride)))
    if starts[-1] != last:
        starts.append(last)
    return starts


@torch.no_grad()
def class_probabilities(
    model,
    image: np.ndarray,
    stride: int = 1,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Per-class probabilities [K, D, H, W] (K = 1 + len(model.class_names), background first) of a
    prompt-free multi-class slab model (`model.slab_size`, `model.predict_slab`)."""
    image = _check_volume(image)
    depth = image.shape[0]
    slab = int(model.slab_size)
    half = slab // 2
    padded = np.concatenate([image[:1]] * half + [image] + [image[-1:]] * half, axis=0) if half else image
    k = 1 + len(model.class_names)
    total = np.zeros((k,) + padded.shape, dtype=np.float64)
    count = np.zeros(padded.shape[0], dtype=np.float64)
    starts = window_starts(depth, slab, stride)
    for n, start in enumerate(starts):
        _tick(progress, cancel, n, len(starts), "slices")
        probs = model.predict_slab(padded[start:start + slab]).float().cpu().numpy()  # [slab, K, H, W]
        total[:, start:start + slab] += probs.transpose(1, 0, 2, 3)
        count[start:start + slab] += 1
    _tick(progress, cancel, len(starts), len(starts), "slices")
    out = total[:, half:half + depth] / count[None, half:half + depth, None, None]
    return out.astype(np.float32)


def segment_volume(
    model,
    image: np.ndarray,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    stride: int = 1,
) -> dict[str, np.ndarray]:
    """{class name: probability [D, H, W]} for every foreground class of a multi-class model. A voxel's
    label is the argmax over background and classes (`labels_from_probabilities`)."""
    probs = class_probabilities(model, image, stride=stride, progress=progress, cancel=cancel)
    return {name: probs[i + 1] for i, name in enumerate(model.class_names)}


@torch.no_grad()
def box_probabilities(
    model,
    image: np.ndarray,
    box: tuple[np.ndarray, np.ndarray],
    stride: int = 1,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Foreground probability [D, H, W] of a box-prompted slab model (MA-SAM's box variant): every
    slice of every window gets the 3D box's in-plane extent as its box; slices outside the box's
    depth range are background. Windows slide as in `class_probabilities`."""
    image = _check_volume(image)
    lo, hi = (np.asarray(c, dtype=np.float64).reshape(3) for c in box)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    d0, d1 = max(int(np.floor(lo[0])), 0), min(int(np.ceil(hi[0])), image.shape[0] - 1)
    out = np.zeros(image.shape, dtype=np.float32)
    if d1 < d0:
        return out
    slab = int(model.slab_size)
    half = slab // 2
    planar = np.array([lo[2], lo[1], hi[2], hi[1]], dtype=np.float32)  # x0, y0, x1, y1
    padded = np.concatenate([image[:1]] * half + [image] + [image[-1:]] * half, axis=0) if half else image
    total = np.zeros(padded.shape, dtype=np.float64)
    count = np.zeros(padded.shape[0], dtype=np.float64)
    starts = [s for s in window_starts(image.shape[0], slab, stride) if s <= d1 + half and s + slab - 1 >= d0 + half]
    for n, start in enumerate(starts):
        _tick(progress, cancel, n, len(starts), "slices")
        probs = model.predict_slab(padded[start:start + slab], boxes=np.tile(planar, (slab, 1)))
        total[start:start + slab] += (1.0 - probs[:, 0]).float().cpu().numpy()
        count[start:start + slab] += 1
    _tick(progress, cancel, len(starts), len(starts), "slices")
    inner = slice(half + d0, half + d1 + 1)
    out[d0:d1 + 1] = total[inner] / np.maximum(count[inner], 1)[:, None, None]
    return out


def labels_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """Label map [D, H, W] (0 = background, i = class_names[i - 1]) from [K, D, H, W] probabilities."""
    return np.argmax(probs, axis=0).astype(np.uint8 if probs.shape[0] < 256 else np.int32)


def segment_volume_prompted(
    model,
    image: np.ndarray,
    prompts: ModelPrompts,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Foreground probability [D, H, W] of a prompted slab model (Med-SA) from clicks in model voxel
    coordinates (d, h, w). The model decides which slices its prompts reach
    (`model.predict_volume_prompted(image, positive, negative, box, progress)`)."""
    image = _check_volume(image)
    if prompts.empty:
        raise InputError("no prompt: add at least one click")
    for name, pts in (("positive", prompts.positive), ("negative", prompts.negative)):
        if len(pts) and ((pts < -0.5).any() or (pts > np.array(image.shape) - 0.5).any()):
            raise InputError(f"a {name} click lies outside the image {image.shape}")

    def tick(done: int, total: int) -> None:
        _tick(progress, cancel, done, total, "slabs")

    return model.predict_volume_prompted(image, prompts.positive, prompts.negative, prompts.box, tick)


class SlabEngine:
    """`engines.base.Engine` for the slab families. Multi-class models ignore prompts and return the
    probability of `target_class` (a name in `model.class_names`). Prompted models (Med-SA) obey the
    interaction contract (docs/SESSION.md): clicks compose one by one (engines.compose); a positive click's
    object is the model's answer to every click so far (it understands negatives: `model.prompt_kinds`), a
    negative keeps what the model still keeps and cuts around its voxel. A box, which Med-SA cannot take, is
    emulated as in the crop engine: the object of a click at its centre, and a bound on the objects of the
    clicks inside it. Answers are cached per click list, so an undo replays without running the model."""

    def __init__(self, model, target_class: str | None = None, stride: int = 1, cache_entries: int = 64) -> None:
        self.model = model
        self.target_class = target_class
        self.stride = stride
        self.cache_entries = int(cache_entries)
        self._image: np.ndarray | None = None
        self._probs: np.ndarray | None = None
        self._answers: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._composer = ClickComposer()
        #: model runs (predict_volume_prompted calls) so far, for tests and benchmarks
        self.model_runs = 0

    def set_image(self, image: np.ndarray, spacing=None) -> None:
        # spacing is unused: slab models slice along the model's D axis, fixed by their preset
        self._image = _check_volume(image)
        self._probs = None
        self._answers.clear()
        self._composer.reset()

    def class_probabilities(self, progress=None, cancel=None) -> np.ndarray:
        if self._image is None:
            raise InputError("set_image first")
        if self._probs is None:
            self._probs = class_probabilities(self.model, self._image, self.stride, progress, cancel)
        return self._probs

    def run(self, prompts: ModelPrompts, seed=None, progress=None, cancel=None) -> np.ndarray:
        if self._image is None:
            raise InputError("set_image first")
        if self.model.multi_class:
            probs = self.class_probabilities(progress, cancel)
            names = list(self.model.class_names)
            if self.target_class is None:
                return 1.0 - probs[0]  # any foreground class
            if self.target_class not in names:
                raise InputError(f"unknown class {self.target_class!r}; this model has {', '.join(names)}")
            return probs[1 + names.index(self.target_class)]
        return self._run_prompted(prompts, seed, progress, cancel)

    # ---- prompted slab models under the contract ----------------------------------------------
    def _answer(self, clicks: list, box, progress, cancel) -> np.ndarray:
        """The model's probability for these clicks ((positive?, point) list), bounded by `box` when given."""
        key = (tuple((bool(ok), tuple(float(v) for v in p)) for ok, p in clicks),
               None if box is None else tuple(int(v) for c in box for v in c))
        hit = self._answers.get(key)
        if hit is None:
            pos = np.reshape([p for ok, p in clicks if ok], (-1, 3))
            neg = np.reshape([p for ok, p in clicks if not ok], (-1, 3))
            hit = segment_volume_prompted(self.model, self._image, ModelPrompts(pos, neg), progress, cancel)
            self.model_runs += 1
            if box is not None:
                bounded = np.zeros_like(hit)
                region = tuple(slice(int(a), int(b) + 1) for a, b in zip(*box))
                bounded[region] = hit[region]
                hit = bounded
            self._answers[key] = hit
            while len(self._answers) > self.cache_entries:
                self._answers.popitem(last=False)
        self._answers.move_to_end(key)
        return hit

    def _run_prompted(self, prompts: ModelPrompts, seed, progress, cancel) -> np.ndarray:
        image = self._image
        shape = image.shape
        for name, pts in (("positive", prompts.positive), ("negative", prompts.negative)):
            if len(pts) and ((pts < -0.5).any() or (pts > np.array(shape) - 0.5).any()):
                raise InputError(f"a {name} click lies outside the image {shape}")
        box = None
        if prompts.box is not None:
            box = tuple(np.asarray(click_voxel(c, shape)) for c in prompts.box)

        def in_box(point) -> bool:
            v = np.asarray(click_voxel(point, shape))
            return box is not None and bool(np.all(v >= box[0]) and np.all(v <= box[1]))

        def object_of(point, earlier) -> np.ndarray:
            return self._answer(list(earlier) + [(True, point)], box if in_box(point) else None, progress, cancel)

        def refine(clicks) -> np.ndarray:
            if not any(ok for ok, _ in clicks):
                return np.ones(shape, np.float32)  # the model needs a positive click: only the cut applies
            return self._answer(clicks, None, progress, cancel)

        box_object = None
        if box is not None:
            centre = (box[0] + box[1]) / 2.0
            box_object = lambda: self._answer([(True, centre)], box, progress, cancel)  # noqa: E731

        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise CancelledError("segmentation cancelled")

        native = "negative" in self.model.prompt_kinds
        return self._composer.compose(shape, prompts, None if seed is None else np.asarray(seed, bool), object_of,
                                      box_object, check, refine if native else None)


ProgressFn = Callable[[int, int], None]
