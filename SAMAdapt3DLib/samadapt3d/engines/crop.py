"""CropEngine: runs a CropModel (3DSAM-adapter style) on a whole model-space volume.

- Crops of `model.crop_size` are centred on the prompts and padded (with the image minimum) where
  they leave the image. Encoder features are kept in a small LRU cache keyed by crop position, so a
  click inside an already encoded crop re-runs only the decoder (`cache_hits` / `cache_misses`).
- Positive points are assigned, in order, to the first crop that contains them; a point outside every
  crop opens a new crop centred on it (earlier assignments never move, so their features stay cached).
- Growth: when a crop's mask touches one of its faces (away from the image border), a neighbouring
  crop is added in that direction (stride = crop size minus a quarter overlap), prompted with the
  mask voxels in the overlap, until nothing touches a face or `max_crops` crops were run. Crops merge
  by taking the maximum probability.
- Models trained with unlabelled points only cannot take negatives or boxes, so they are emulated
  (docs/SESSION.md):
  * a negative click removes the connected region of the result it lands in; when that region holds
    positive clicks, only the voxels strictly nearer to the negative click than to every positive click
    in it go (ties go to the positive: `engines.prompts.negative_cut`);
  * a box places the first crop at its centre (the box centre is the click when there are no positive
    points) and bounds the result: nothing outside the box is foreground, and no crop grows past it.
- A seed mask (refining an existing segment) is kept: the result is the union of the seed and what
  the positive clicks find, then negatives and the box apply.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

from ..errors import CancelledError
from ..preprocess import extract_crop, paste_max
from .base import ModelPrompts, ProgressCallback
from .prompts import click_voxel, click_voxels, label_components, negative_cut

_FACES = [(axis, side) for axis in range(3) for side in (-1, 1)]


class CropEngine:
    def __init__(self, model, max_crops: int = 27, cache_size: int = 16, overlap: float = 0.25) -> None:
        self.model = model
        self.crop_size = np.asarray(model.crop_size, dtype=int)
        self.max_crops = int(max_crops)
        self.cache_size = int(cache_size)
        self.stride = np.maximum(1, self.crop_size - np.maximum(1, np.round(self.crop_size * overlap).astype(int)))
        self.image: np.ndarray | None = None
        self._features: OrderedDict[tuple[int, int, int], object] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        #: crop starts (d, h, w) used by the latest run, in the order they ran (for tests and display)
        self.last_crops: list[tuple[int, int, int]] = []

    # ---- Engine protocol ----------------------------------------------------------------------
    def set_image(self, image: np.ndarray, spacing=None) -> None:  # crops are in model voxels: spacing unused
        self.image = np.ascontiguousarray(image, dtype=np.float32)
        self._pad_value = float(self.image.min())
        self._features.clear()
        self.last_crops = []

    def run(self, prompts: ModelPrompts, seed: np.ndarray | None = None,
            progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> np.ndarray:
        if self.image is None:
            raise RuntimeError("CropEngine.run before set_image")
        shape = np.asarray(self.image.shape)
        box = None
        if prompts.box is not None:
            lo, hi = (click_voxel(c, shape) for c in prompts.box)
            lo, hi = np.asarray(lo), np.asarray(hi)
            box = (lo, hi)
        positives = [np.asarray(p, dtype=np.float64) for p in prompts.positive]
        if not positives and box is not None and seed is None:
            positives = [(box[0] + box[1]) / 2.0]

        prob = np.zeros(self.image.shape, dtype=np.float32)
        if seed is not None:
            prob[np.asarray(seed, dtype=bool)] = 1.0
        previous = [np.asarray(k) for k in self.last_crops if k in self._features]
        self.last_crops = []
        if positives:
            # first crop: the box centre when there is a box; a point inside a crop of the previous
            # run (whose features are cached) reuses it; any other point opens a crop centred on it
            groups: list[tuple[np.ndarray, list[np.ndarray]]] = []
            if box is not None:
                groups.append((self._start_centred_on((box[0] + box[1]) / 2.0), []))
            for point in positives:
                for start, members in groups:
                    if self._inside(point, start):
                        members.append(point)
                        break
                else:
                    reuse = [s for s in previous if self._inside(point, s)]
                    groups.append((reuse[0] if reuse else self._start_centred_on(point), [point]))
            self._run_groups([(s, m) for s, m in groups if m], prob, box, progress, cancel)

        result_mask = prob > 0.5
        if len(prompts.negative):
            self._apply_negatives(prob, result_mask, prompts.negative, prompts.positive)
        if box is not None:
            bounded = np.zeros_like(prob)
            region = tuple(slice(int(a), int(b) + 1) for a, b in zip(*box))
            bounded[region] = prob[region]
            prob = bounded
        if progress is not None:
            progress(1.0, "done")
        return prob

    # ---- crops --------------------------------------------------------------------------------
    def _start_centred_on(self, point) -> np.ndarray:
        return np.asarray(click_voxel(point)) - self.crop_size // 2

    def _inside(self, point, start) -> bool:
        p = np.asarray(click_voxel(point))
        return bool(np.all(p >= start) and np.all(p < start + self.crop_size))

    def features(self, start) -> object:
        """Encoder features of the crop at `start` (cached)."""
        key = tuple(int(v) for v in start)
        if key in self._features:
            self.cache_hits += 1
            self._features.move_to_end(key)
            return self._features[key]
        self.cache_misses += 1
        crop = extract_crop(self.image, start, self.crop_size, self._pad_value)
        tensor = torch.from_numpy(crop)[None, None].to(self.model.device)
        with torch.inference_mode():
            feats = self.model.encode(tensor)
        self._features[key] = feats
        while len(self._features) > self.cache_size:
            self._features.popitem(last=False)
        return feats

    def _decode(self, start, points) -> np.ndarray:
        feats = self.features(start)
        local = torch.as_tensor(np.asarray(points, dtype=np.float32) - start.astype(np.float32))[None]
        with torch.inference_mode():
            out = self.model.decode(feats, local.to(self.model.device))
        return out.float().reshape(tuple(self.crop_size)).cpu().numpy()

    def _run_groups(self, groups, prob, box, progress, cancel) -> None:
        shape = np.asarray(prob.shape)
        done: set[tuple[int, int, int]] = set()
        queue = [(start, members) for start, members in groups]
        budget = max(self.max_crops, len(groups))
        while queue and len(done) < budget:
            if cancel is not None and cancel.is_set():
                raise CancelledError("segmentation cancelled")
            start, points = queue.pop(0)
            key = tuple(int(v) for v in start)
            if key in done:
                continue
            if progress is not None:
                progress(len(done) / budget, f"crop {len(done) + 1}")
            crop_prob = self._decode(start, points)
            done.add(key)
            self.last_crops.append(key)
            if box is not None:  # nothing outside the box counts, nor drives growth
                local = np.zeros_like(crop_prob)
                lo = np.maximum(box[0] - start, 0)
                hi = np.minimum(box[1] + 1 - start, self.crop_size)
                if np.all(hi > lo):
                    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
                    local[region] = crop_prob[region]
                crop_prob = local
            paste_max(prob, crop_prob, start)
            mask = crop_prob > 0.5
            for axis, side in _FACES:
                nxt = self._grow(start, mask, axis, side, shape, box)
                if nxt is not None and tuple(int(v) for v in nxt[0]) not in done:
                    queue.append(nxt)
        if cancel is not None and cancel.is_set():
            raise CancelledError("segmentation cancelled")

    def _grow(self, start, mask, axis, side, shape, box):
        """The neighbouring crop across face (axis, side) with its prompt points, or None."""
        face = [slice(None)] * 3
        face[axis] = 0 if side < 0 else self.crop_size[axis] - 1
        if not mask[tuple(face)].any():
            return None
        edge = start[axis] + (0 if side < 0 else self.crop_size[axis] - 1)  # model index of the face
        limit_lo, limit_hi = (0, shape[axis] - 1) if box is None else (box[0][axis], box[1][axis])
        if (side < 0 and edge <= limit_lo) or (side > 0 and edge >= limit_hi):
            return None  # the object stops at the image border (or the box)
        new_start = start.copy()
        new_start[axis] += side * self.stride[axis]
        # prompt the new crop with mask voxels in the overlap, nearest the centre of that overlap
        overlap = self.crop_size[axis] - self.stride[axis]
        slab = [slice(None)] * 3
        slab[axis] = slice(0, overlap) if side < 0 else slice(self.crop_size[axis] - overlap, None)
        idx = np.argwhere(mask[tuple(slab)])
        if len(idx) == 0:
            return None
        idx[:, axis] += 0 if side < 0 else self.crop_size[axis] - overlap
        centre = idx.mean(axis=0)
        order = np.argsort(((idx - centre) ** 2).sum(axis=1))
        points = [(idx[n] + start).astype(np.float64) for n in order[:1]]
        return new_start, points

    # ---- negatives ----------------------------------------------------------------------------
    @staticmethod
    def _apply_negatives(prob, mask, negatives, positives) -> None:
        labels = label_components(mask)
        pos = click_voxels(positives, prob.shape)
        for neg in click_voxels(negatives, prob.shape):
            prob[negative_cut(mask, neg, pos, labels)] = 0.0  # ties go to the positive (engines.prompts)
