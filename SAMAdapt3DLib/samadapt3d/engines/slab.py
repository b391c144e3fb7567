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
from .base import ModelPrompts, ProgressCallback


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
    probability of `target_class` (a name in `model.class_names`); prompted models use the prompts."""

    def __init__(self, model, target_class: str | None = None, stride: int = 1) -> None:
        self.model = model
        self.target_class = target_class
        self.stride = stride
        self._image: np.ndarray | None = None
        self._probs: np.ndarray | None = None

    def set_image(self, image: np.ndarray, spacing=None) -> None:
        # spacing is unused: slab models slice along the model's D axis, fixed by their preset
        self._image = _check_volume(image)
        self._probs = None

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
        return segment_volume_prompted(self.model, self._image, prompts, progress, cancel)


ProgressFn = Callable[[int, int], None]
