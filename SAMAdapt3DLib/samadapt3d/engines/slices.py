"""SliceEngine: 3D segmentation from any 2D SliceModel by slice-to-slice propagation.

The engine (this file): the image, the slicing axis, the per-slice model calls and their caches. The click /
propagation strategy: engines/slice_objects.py (objects, propagation) and engines/slice_strategy.py (how clicks
compose, negative cuts); its thresholds `SliceConfig` (engines/slice_config.py), the 2D helpers engines/slice_ops.py.

Slicing axis: the axis of the view the latest click came from (`prompts.view_axis`), else the acquisition axis
(`acquisition_axis`: the axis whose slices have square pixels, the thickest of those; pass `spacing=` to
`set_image`), else 0.

Per-slice image embeddings come from engines/embedding_cache.py (an LRU bounded in bytes, keyed by the slice's
content, optionally backed by an on-disk store), so later clicks are fast, also after `set_image` with the same
scan re-oriented or loaded again, and in a later process.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..errors import CancelledError, InputError
from ..families.base import SliceModel
from ..preprocess import exact_in_float32
from .base import ModelPrompts, PreviewCallback, ProgressCallback
from .prompts import click_voxel
from .embedding_cache import (DEFAULT_DISK_STORE, DEFAULT_MEMORY_BYTES, DiskEmbeddingStore, SliceData,
                              SliceEmbeddingCache)
from .slice_config import SliceConfig
from .slice_ops import bbox_2d  # noqa: F401  (re-exported: the simulated training boxes use it)
from .slice_strategy import SliceStrategy


_SliceData = SliceData  # the per-slice record (embedding, transform, image01), defined with the cache


#: the least time between two previews of a run (`run_previewing`): each costs a pass over the volume, and a
#: viewer needs a moment to show one
PREVIEW_EVERY_S = 2.0

#: two spacings within this relative difference count as equal (square pixels, equally thick slices)
SAME_SPACING = 0.01


def acquisition_axis(spacing) -> int:
    """The axis a scan was acquired along, from its voxel size (mm, per array axis): the axis whose slices have the
    squarest pixels (a scanner's plane), the thickest of those when several are as square (10 mm CT slices of
    3 mm pixels, 1 mm slices of 3 mm pixels, 0.6 mm slices of 0.8 mm pixels: all axial), then the first. The
    largest spacing alone would slice a CT with slices thinner than its pixels along a coronal plane."""
    spacing = [float(v) for v in spacing]
    skew = [abs(np.log(spacing[b] / spacing[c])) for b, c in ((1, 2), (0, 2), (0, 1))]
    square = [a for a in range(3) if skew[a] <= min(skew) + SAME_SPACING]
    thickest = max(spacing[a] for a in square)
    return next(a for a in square if spacing[a] >= thickest * (1 - SAME_SPACING))


class SliceEngine:
    """Engine (see engines/base.py) running a SliceModel slice by slice."""

    def __init__(self, model: SliceModel, cache_bytes: int = DEFAULT_MEMORY_BYTES,
                 config: SliceConfig | None = None, decode_cache_bytes: int = 128 << 20,
                 disk_cache: DiskEmbeddingStore | str | None = DEFAULT_DISK_STORE, **thresholds) -> None:
        """`config`: the strategy's thresholds; single thresholds may also be given by name (`min_iou=0.4`)."""
        self.model = model.eval()
        self.config = dataclasses.replace(config or SliceConfig(), **thresholds)
        self.image: np.ndarray | None = None
        self.spacing: tuple[float, float, float] | None = None
        #: (id of the slice data, box) -> (logits, IoU, slice data kept alive so the id stays unique)
        self._decoded: OrderedDict[tuple, tuple[np.ndarray, float, _SliceData]] = OrderedDict()
        self._decoded_used = 0
        self.decode_cache_bytes = int(decode_cache_bytes)
        #: the slicing axis of the latest run (model axis)
        self.last_axis: int | None = None
        #: counters for tests and benchmarks
        self.stats = {"embedded": 0, "cache_hits": 0}
        #: the slice embeddings (memory LRU, optional disk store, background prefetch); updates `stats`
        self.embeddings = SliceEmbeddingCache(model, cache_bytes, disk=disk_cache, stats=self.stats)
        #: objects per prompt and the last composition (engines/slice_strategy.py)
        self.strategy = SliceStrategy(self)
        #: background embedding on (`prefetch`): each run pauses it and restarts it from the clicked slice
        self._background = False
        #: the least time between two previews of one run (seconds)
        self.preview_every_s = PREVIEW_EVERY_S

    # ---- Engine protocol -----------------------------------------------------------------------
    def set_image(self, image: np.ndarray, spacing=None) -> None:
        """Model-space image [D, H, W] (preset-normalised). `spacing` (optional keyword): voxel size in
        mm along (D, H, W); it only picks the default slicing axis (`acquisition_axis`)."""
        image = np.asarray(image)
        # integers that float32 holds exactly stay as they are (each slice is read as float32: the same values);
        # a model that embeds a slice with its neighbours reads the volume at once, as float32
        if not (exact_in_float32(image) and self.model.slice_context == 0):
            image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise InputError(f"SliceEngine needs a 3D image [D, H, W], got shape {image.shape}")
        if image.dtype == np.float32 and not np.all(np.isfinite(image)):
            raise InputError("the image holds NaN or infinite values")
        self.image = image
        if spacing is not None:
            spacing = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise InputError(f"spacing must be 3 positive numbers (D, H, W), got {spacing}")
        self.spacing = spacing
        self._background = False  # a new image: prefetch again when wanted
        self.embeddings.set_image(image)
        self.strategy.reset()

    # ---- background embedding ------------------------------------------------------------------
    def prefetch(self, axis: int | None = None, centre: int | None = None) -> None:
        """Embed the slices along `axis` (default: the acquisition axis) in a background thread, outward from
        `centre` (default: the middle slice), until the memory budget is full. From then on each run pauses it
        (a click waits for at most the slice being embedded, then embeds lazily the slices it needs) and restarts
        it outward from the run's latest click. Off with `stop_prefetch` or a new `set_image`."""
        if self.image is None:
            raise InputError("call set_image before prefetch")
        axis = self.default_axis() if axis is None else int(axis)
        if axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {axis}")
        centre = self.image.shape[axis] // 2 if centre is None else int(centre)
        self._background = True
        self.embeddings.prefetch(axis, centre)

    def stop_prefetch(self) -> None:
        self._background = False
        self.embeddings.stop_prefetch()

    def _focus(self, prompts: ModelPrompts, axis: int) -> int | None:
        """The slice along `axis` the user looks at: the latest click's voxel, else the box's middle (as the
        strategy picks it)."""
        clicks = prompts.clicks()
        if clicks:
            return int(click_voxel(clicks[-1][1], self.image.shape)[axis])
        if prompts.box is not None:
            lo, hi = (click_voxel(corner, self.image.shape)[axis] for corner in prompts.box)
            return int(round((lo + hi) / 2))
        return None

    def warm_up(self, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                axis: int | None = None) -> int:
        """Embed every slice along `axis` (default: the acquisition axis) before the first click, so that the
        click only decodes. Returns how many slices were embedded (0 when all were cached)."""
        if self.image is None:
            raise InputError("call set_image before warm_up")
        axis = self.default_axis() if axis is None else int(axis)
        count, before = self.image.shape[axis], self.stats["embedded"]
        with torch.no_grad():
            for k in range(count):
                if cancel is not None and cancel.is_set():
                    raise CancelledError("preparation cancelled")
                if progress is not None:
                    progress(k / count, f"preparing slice {k + 1}/{count}")
                self.slice_data(axis, k, cancel)
        if progress is not None:
            progress(1.0, "slices ready")
        return self.stats["embedded"] - before

    def default_axis(self) -> int:
        return 0 if self.spacing is None else acquisition_axis(self.spacing)

    def run(self, prompts: ModelPrompts, seed: np.ndarray | None = None,
            progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> np.ndarray:
        return self.run_previewing(prompts, seed, progress, cancel, None)

    @torch.no_grad()
    def run_previewing(self, prompts: ModelPrompts, seed: np.ndarray | None,
                       progress: ProgressCallback | None, cancel: threading.Event | None,
                       preview: PreviewCallback | None) -> np.ndarray:
        """`run`; while a positive object walks from slice to slice, `preview(mask so far)` (bool [D, H, W]): the
        first as soon as the clicked slice is decoded, then at most every `preview_every_s` seconds. Both ways are
        walked in turn, so the preview grows around the click."""
        if self.image is None:
            raise InputError("call set_image before run")
        shape = self.image.shape
        if prompts.empty:
            return np.zeros(shape, np.float32) if seed is None else np.asarray(seed, np.float32)
        axis = self.default_axis() if prompts.view_axis is None else int(prompts.view_axis)
        if axis not in (0, 1, 2):
            raise InputError(f"view_axis must be 0, 1 or 2, got {prompts.view_axis}")
        self._check_inside(prompts)
        self.last_axis = axis
        if seed is not None and np.shape(seed) != shape:
            raise InputError(f"seed mask shape {np.shape(seed)} does not match the image {shape}")
        background = self._background
        if background:
            self.embeddings.stop_prefetch()  # joins after the slice in progress: the click has the CPU
        try:
            shown = None if preview is None else (lambda mask: preview(np.moveaxis(mask, 0, axis)))
            prob = self.strategy.run(axis, prompts, seed, progress, cancel, shown)
        finally:
            if background and self._background:
                focus = self._focus(prompts, axis)
                self.embeddings.prefetch(axis, self.image.shape[axis] // 2 if focus is None else focus)
            else:  # nothing embeds until the next click: its buffers need not stay while the result is made
                self.embeddings.release_backend_memory()
        return np.ascontiguousarray(np.moveaxis(prob, 0, axis))

    def _check_inside(self, prompts: ModelPrompts) -> None:
        size = np.asarray(self.image.shape)
        for name, pts in (("positive", prompts.positive), ("negative", prompts.negative)):
            bad = [p for p in pts if np.any(p < -0.5) or np.any(p > size - 0.5)]
            if bad:
                raise InputError(f"{name} point {tuple(np.round(bad[0], 2))} is outside the image {tuple(size)}")

    # ---- per-slice model calls -----------------------------------------------------------------
    def slice_data(self, axis: int, index: int, cancel: threading.Event | None = None) -> _SliceData:
        return self.embeddings.get(axis, index, cancel)

    def predict_boxes(self, data: _SliceData, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [N, 4] (r0, c0, r1, c1 inclusive, slice pixels) -> logits [N, rows, cols], IoU [N].
        Results are kept in a small LRU (per slice content and box), so a re-run after one more click
        decodes only the slices whose prompt changed."""
        model = self.model
        tr = data.transform
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        keys = [(id(data), tuple(float(v) for v in b)) for b in boxes]
        todo = [n for n, key in enumerate(keys) if key not in self._decoded]
        if todo:
            mboxes = np.stack([model.box_to_model(tr, *boxes[n]) for n in todo])
            logits, iou = model.decode(data.embedding, boxes=torch.as_tensor(mboxes, dtype=torch.float32))
            logits = model.mask_to_slice(tr, logits[:, :1].float().cpu())[:, 0].numpy()
            iou = iou[:, 0].float().cpu().numpy()
            for m, n in enumerate(todo):
                self._decoded[keys[n]] = (logits[m].copy(), float(iou[m]), data)
                self._decoded_used += logits[m].nbytes
            self.stats["decoded"] = self.stats.get("decoded", 0) + len(todo)
        out = []
        for key in keys:
            self._decoded.move_to_end(key)
            out.append(self._decoded[key])
        while self._decoded_used > self.decode_cache_bytes and len(self._decoded) > len(keys):
            _, old = self._decoded.popitem(last=False)
            self._decoded_used -= old[0].nbytes
        return np.stack([o[0] for o in out]), np.asarray([o[1] for o in out], np.float32)

