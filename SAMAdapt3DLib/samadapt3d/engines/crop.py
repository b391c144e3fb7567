"""CropEngine: runs a CropModel (3DSAM-adapter style) on a whole model-space volume, under the interaction
contract (docs/SESSION.md; engines.compose).

- Each positive click has its own object: the crop of `model.crop_size` whose start lies on a lattice of
  `crop_size // 4` steps and centres the click best (padded with the image minimum where it leaves the
  image), decoded with that one click, grown into neighbouring crops. So an object depends on its click only
  (clicks compose the same way in any order, and an undo replays from the caches), and clicks near each other
  share a crop. Encoder features are kept in a small LRU keyed by crop position (`cache_hits` /
  `cache_misses`), objects in an LRU keyed by click (`objects_decoded` counts the misses).
- Growth: when a crop's mask touches one of its faces (away from the image border), a neighbouring crop is
  added in that direction (stride = crop size minus a quarter overlap), prompted with the mask voxel in the
  overlap nearest its centre, until nothing touches a face or `max_crops` crops were run. Crops merge by taking
  the maximum probability.
- The network takes unlabelled points only, so negatives and boxes are emulated (docs/SESSION.md):
  * clicks compose as in engines.compose: a positive adds its object (minus what earlier negatives cut), a
    negative removes the part of the result it cuts (`engines.prompts.negative_cut`: the connected object it
    lands in, or, with positive clicks in that object, the voxels strictly nearer to it; ties go to the
    positive);
  * a box adds the object of a click at its centre, and bounds the objects of the clicks inside it: nothing
    they add lies outside the box, and no crop of theirs grows past it (a click outside the box is the user
    reaching beyond it: its object is not bounded).
- A seed mask (refining an existing segment) is where the composition starts.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch

from ..byte_lru import ByteLRU
from ..errors import CancelledError
from ..preprocess import extract_crop, paste_max
from .base import ModelPrompts, ProgressCallback
from .compose import ClickComposer
from .prompts import click_voxel

_FACES = [(axis, side) for axis in range(3) for side in (-1, 1)]
#: crops start on a lattice of crop_size // CROP_LATTICE_DIVISOR voxels (a click is within 1/8 crop of the centre)
CROP_LATTICE_DIVISOR = 4


class CropEngine:
    def __init__(self, model, max_crops: int = 27, cache_size: int = 16, overlap: float = 0.25,
                 object_cache_bytes: int = 256 << 20) -> None:
        self.model = model
        self.crop_size = np.asarray(model.crop_size, dtype=int)
        self.max_crops = int(max_crops)
        self.cache_size = int(cache_size)
        self.stride = np.maximum(1, self.crop_size - np.maximum(1, np.round(self.crop_size * overlap).astype(int)))
        self.lattice = np.maximum(1, self.crop_size // CROP_LATTICE_DIVISOR)
        self.image: np.ndarray | None = None
        self._features: OrderedDict[tuple[int, int, int], object] = OrderedDict()
        #: click -> (region, float16 probability inside it)
        self._objects: ByteLRU[tuple[tuple[slice, ...], np.ndarray]] = ByteLRU(object_cache_bytes)
        self._composer = ClickComposer()
        self.cache_hits = 0
        self.cache_misses = 0
        self.objects_decoded = 0
        #: crop starts (d, h, w) decoded by the latest run, in the order they ran (for tests and display)
        self.last_crops: list[tuple[int, int, int]] = []

    @property
    def object_cache_bytes(self) -> int:
        """The bound of the click-object cache."""
        return self._objects.max_bytes

    # ---- Engine protocol ----------------------------------------------------------------------
    def set_image(self, image: np.ndarray, spacing=None) -> None:  # crops are in model voxels: spacing unused
        self.image = np.ascontiguousarray(image, dtype=np.float32)
        self._pad_value = float(self.image.min())
        self._features.clear()
        self._objects.clear()
        self._composer.reset()
        self.last_crops = []

    def run(self, prompts: ModelPrompts, seed: np.ndarray | None = None,
            progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> np.ndarray:
        if self.image is None:
            raise RuntimeError("CropEngine.run before set_image")
        shape = self.image.shape
        box = None
        if prompts.box is not None:
            lo, hi = (np.asarray(click_voxel(c, shape)) for c in prompts.box)
            box = (lo, hi)
        self.last_crops = []

        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise CancelledError("segmentation cancelled")

        def object_of(point: np.ndarray, earlier) -> np.ndarray:  # one click, one object: earlier clicks unused
            inside = box is not None and bool(np.all(np.asarray(click_voxel(point, shape)) >= box[0])
                                               and np.all(np.asarray(click_voxel(point, shape)) <= box[1]))
            return self.object_of(point, box if inside else None, progress, cancel)

        box_object = None
        if box is not None:
            box_object = lambda: self.object_of((box[0] + box[1]) / 2.0, box, progress, cancel)  # noqa: E731
        prob = self._composer.compose(shape, prompts, None if seed is None else np.asarray(seed, bool),
                                      object_of, box_object, check)
        if progress is not None:
            progress(1.0, "done")
        return prob

    # ---- one click's object -----------------------------------------------------------------
    def object_of(self, point, box=None, progress=None, cancel=None) -> np.ndarray:
        """Foreground probability [D, H, W] of the object of one click (bounded by `box` when given); cached."""
        point = np.asarray(point, dtype=np.float64)
        key = (tuple(float(v) for v in point), None if box is None else tuple(int(v) for c in box for v in c))
        hit = self._objects.get(key)
        full = np.zeros(self.image.shape, dtype=np.float32)
        if hit is not None:
            region, values = hit
            full[region] = values
            return full
        self.objects_decoded += 1
        self._run_groups([(self._start_for(point), [point])], full, box, progress, cancel)
        nonzero = np.argwhere(full > 0)
        region = tuple(slice(0, 0) for _ in range(3))
        if len(nonzero):
            region = tuple(slice(int(a), int(b) + 1) for a, b in zip(nonzero.min(axis=0), nonzero.max(axis=0)))
        values = full[region].astype(np.float16)  # 1e-3 steps: plenty for a probability thresholded at 0.5
        self._objects.put(key, (region, values), values.nbytes)
        out = np.zeros_like(full)
        out[region] = values.astype(np.float32)  # the same values whether decoded now or read from the cache
        return out

    # ---- crops --------------------------------------------------------------------------------
    def _start_for(self, point) -> np.ndarray:
        """The lattice crop start that centres `point` best."""
        ideal = np.asarray(click_voxel(point)) - self.crop_size // 2
        return (np.floor(ideal / self.lattice + 0.5) * self.lattice).astype(int)

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
