"""SliceEngine: 3D segmentation from any 2D SliceModel by slice-to-slice propagation.

How a run works (all in model space, [D, H, W]):
1. Slicing axis: the axis of the view the latest click came from (`prompts.view_axis`), else the
   axis with the largest spacing (the acquisition axis; pass `spacing=` to `set_image`), else 0.
2. Anchors. A 3D box gives one anchor on its middle slice, prompted with the box. Positive clicks
   give one anchor per clicked slice: box-trained models (LiteMedSAM) give nothing useful for a bare
   point, so candidate boxes of several sizes are centred on the click, each is grown by refitting
   the box to its own mask, and the candidate that contains the click and scores best on
   predicted IoU x mask stability x edge contrast x intensity homogeneity is kept.
3. Propagation. From each anchor the mask walks to the neighbouring slices in both directions; each
   slice is prompted with the bounding box (plus a margin) of its neighbour's mask, refitted once
   if the result touches the box. It stops where the object ends: empty or tiny mask, a mask that no
   longer overlaps its neighbour's, a low predicted IoU, or a median intensity (of the model's
   normalised slice) that moved more than `max_level_change` from the anchor's (another tissue);
   and at the 3D box's ends.
4. Negative clicks. The object under each negative click is segmented the way a positive click's
   would be (click anchor on its slice, avoiding the positive clicks there, then propagation): the
   "excluded object". On every slice the positive mask meets it: when it covers most of the mask
   (`same_object`), both clicks see the same object and the slice goes to the nearer click along
   the slicing axis (a leak along the axis: the positive walk stops where the negative side begins);
   otherwise it is another object inside the mask (a leak in the plane) and is cut out, dilated by one
   pixel (positive clicks kept). Where the excluded object could not be segmented, the negative's own
   slice loses the pixels nearer to the negative than to a positive click (the whole 2D component when
   no positive shares it). At the end every 3D component that holds a negative click and no positive
   click is removed.
5. Seed (refining an existing segment): the result is the seed united with what the clicks found; the
   negative clicks cut the seed as in 4, one 2D component of the seed at a time (a negative on one
   object of the seed leaves its other objects alone), and a 3D box bounds it.
Per-slice image embeddings come from engines/embedding_cache.py (an LRU bounded in bytes, keyed by the slice's
content, optionally backed by an on-disk store), so later clicks are fast, also after `set_image` with the same
scan re-oriented or loaded again, and in a later process.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch
import SimpleITK as sitk

from ..errors import CancelledError, InputError
from ..families.base import SliceModel
from .base import ModelPrompts, ProgressCallback
from .embedding_cache import (DEFAULT_DISK_STORE, DEFAULT_MEMORY_BYTES, DiskEmbeddingStore, SliceData,
                              SliceEmbeddingCache)

#: candidate box half-sizes around a click, as fractions of the slice's longer side
CLICK_BOX_FRACTIONS = (0.03, 0.06, 0.09, 0.125, 0.16, 0.19, 0.23, 0.28, 0.34)
#: rounds of refitting each candidate box to its own mask
CLICK_ROUNDS = 4
#: a negative click's object: the smallest candidate scoring at least this fraction of the best one
NEGATIVE_SCORE_RATIO = 0.5


_SliceData = SliceData  # the per-slice record (embedding, transform, image01), defined with the cache


class SliceEngine:
    """Engine (see engines/base.py) running a SliceModel slice by slice."""

    def __init__(self, model: SliceModel, cache_bytes: int = DEFAULT_MEMORY_BYTES, box_margin: float = 0.1,
                 min_area: int = 4, min_overlap: float = 0.2, min_iou: float = 0.35,
                 max_level_change: float = 0.12, same_object: float = 0.5,
                 decode_cache_bytes: int = 128 << 20,
                 disk_cache: DiskEmbeddingStore | str | None = DEFAULT_DISK_STORE) -> None:
        self.model = model.eval()
        self.box_margin = box_margin
        self.min_area = min_area
        self.min_overlap = min_overlap
        self.min_iou = min_iou
        self.max_level_change = max_level_change
        self.same_object = same_object
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

    # ---- Engine protocol -----------------------------------------------------------------------
    def set_image(self, image: np.ndarray, spacing=None) -> None:
        """Model-space image [D, H, W] (preset-normalised). `spacing` (optional keyword): voxel size in
        mm along (D, H, W); it only picks the default slicing axis (the largest spacing)."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise InputError(f"SliceEngine needs a 3D image [D, H, W], got shape {image.shape}")
        if not np.all(np.isfinite(image)):
            raise InputError("the image holds NaN or infinite values")
        self.image = image
        if spacing is not None:
            spacing = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise InputError(f"spacing must be 3 positive numbers (D, H, W), got {spacing}")
        self.spacing = spacing
        self.embeddings.set_image(image)

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
        if self.spacing is None:
            return 0
        return int(np.argmax(self.spacing))

    @torch.no_grad()
    def run(self, prompts: ModelPrompts, seed: np.ndarray | None = None,
            progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> np.ndarray:
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
        run = _Run(self, axis, prompts, progress, cancel, seed=seed)
        prob = run.execute()
        return np.moveaxis(prob, 0, axis)

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


def bbox_2d(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive (r0, c0, r1, c1) of a 2D mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def _clip_box(box, shape, within=None) -> tuple[int, int, int, int]:
    lo_r, lo_c, hi_r, hi_c = (0, 0, shape[0] - 1, shape[1] - 1) if within is None else within
    r0, c0, r1, c1 = (int(v) for v in box)
    return (max(r0, lo_r), max(c0, lo_c), min(r1, hi_r), min(c1, hi_c))


def _grow(box, margin: float, shape, within=None) -> tuple[int, int, int, int]:
    r0, c0, r1, c1 = box
    pad = max(2, int(round(margin * max(r1 - r0 + 1, c1 - c0 + 1))))
    return _clip_box((r0 - pad, c0 - pad, r1 + pad, c1 + pad), shape, within)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return torch.nn.functional.max_pool2d(t, 2 * radius + 1, 1, radius)[0, 0].numpy() > 0.5


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~_dilate(~mask, radius)


def _label(mask: np.ndarray) -> np.ndarray:
    """Connected components (faces, edges and corners connect) of a 2D or 3D bool mask; 0 = background."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True))


class _Run:
    """One `run` call: prompts mapped onto slices along `axis`, anchors, propagation."""

    def __init__(self, engine: SliceEngine, axis: int, prompts: ModelPrompts, progress, cancel,
                 seed: np.ndarray | None = None) -> None:
        self.e = engine
        self.axis = axis
        self.progress = progress
        self.cancel = cancel
        self.n = engine.image.shape[axis]
        self.plane = tuple(s for a, s in enumerate(engine.image.shape) if a != axis)
        order = [axis] + [a for a in range(3) if a != axis]
        self.pos = np.round(prompts.positive[:, order]).astype(int) if len(prompts.positive) else np.zeros((0, 3), int)
        self.neg = np.round(prompts.negative[:, order]).astype(int) if len(prompts.negative) else np.zeros((0, 3), int)
        self.box = None
        if prompts.box is not None:
            lo, hi = (np.asarray(c)[order] for c in prompts.box)
            lo = np.clip(np.round(lo).astype(int), 0, np.asarray([self.n, *self.plane]) - 1)
            hi = np.clip(np.round(hi).astype(int), 0, np.asarray([self.n, *self.plane]) - 1)
            self.box = (lo, hi)
        self.prob = np.zeros((self.n, *self.plane), np.float32)
        #: an existing segment being refined, slices along axis 0 (see `execute`)
        self.seed = None if seed is None else np.moveaxis(np.asarray(seed, dtype=bool), axis, 0)
        self.done = 0
        #: slices holding a positive prompt (clicks; a box's middle slice)
        self.anchor_slices = sorted({int(k) for k in self.pos[:, 0]} | (
            set() if self.box is None else {int(round((self.box[0][0] + self.box[1][0]) / 2))}))
        #: per negative click, its excluded object {slice: mask} (filled by `_segment_excluded`)
        self.excluded: list[dict[int, np.ndarray]] = [{} for _ in range(len(self.neg))]

    # ---- helpers ---------------------------------------------------------------------------
    def _tick(self, message: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("segmentation cancelled")
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done / max(self.n, 1), 0.99), message)

    def _plane_box(self):
        if self.box is None:
            return None
        lo, hi = self.box
        return (int(lo[1]), int(lo[2]), int(hi[1]), int(hi[2]))

    def _in_range(self, k: int) -> bool:
        if self.box is None:
            return 0 <= k < self.n
        return int(self.box[0][0]) <= k <= int(self.box[1][0])

    def _segment_excluded(self) -> None:
        """The object under each negative click, segmented like a positive click's (see step 4)."""
        for n, (kn, r, c) in enumerate(self.neg):
            kn = int(kn)
            if not self._in_range(kn):
                continue
            self._tick(f"negative click on slice {kn}")
            avoid = [(int(pr), int(pc)) for kk, pr, pc in self.pos if kk == kn]
            found = self._click_anchor(kn, [(int(r), int(c))], avoid=avoid)
            if found is None:
                continue
            obj = self.excluded[n]
            obj[kn] = found[0] > 0

            def keep(k: int, logits: np.ndarray, mask: np.ndarray, obj=obj) -> None:
                obj[k] = mask

            for step in (+1, -1):
                self._propagate(kn, obj[kn], step, store=keep, exclude=False)

    def _apply_negatives(self, k: int, mask: np.ndarray) -> np.ndarray:
        """Mask on slice k after the negative clicks (see step 4 of the module docstring)."""
        if not len(self.neg) or not mask.any():
            return mask
        pos_here = [(int(r), int(c)) for kk, r, c in self.pos if kk == k]
        d_pos = min((abs(k - a) for a in self.anchor_slices), default=self.n + 1)
        out = mask.copy()
        for (kn, r, c), obj in zip(self.neg, self.excluded):
            wrong = obj.get(k)
            if wrong is None:
                if kn == k and out[r, c]:
                    out = self._cut_near(k, out, [(int(r), int(c))])
                continue
            overlap = int((out & wrong).sum())
            if overlap == 0:
                continue
            if overlap >= self.e.same_object * out.sum():  # one object seen from both sides: split along the axis
                d_neg = abs(k - int(kn))
                if d_neg < d_pos:
                    out[:] = False
                elif d_neg == d_pos and kn == k:
                    out = self._cut_near(k, out, [(int(r), int(c))])
                continue
            cut = _dilate(wrong, 1)
            if any(cut[pr, pc] for pr, pc in pos_here):
                cut = wrong
            if any(cut[pr, pc] for pr, pc in pos_here):
                out = self._cut_near(k, out, [(int(r), int(c))]) if kn == k else out
                continue
            out &= ~cut
        return out

    def _cut_near(self, k: int, mask: np.ndarray, negs: list[tuple[int, int]]) -> np.ndarray:
        """Without an excluded object: the mask's pixels nearer to the negative than to a positive click
        of the same component (the whole component when it holds no positive click)."""
        negs = [(r, c) for r, c in negs if mask[r, c]]
        if not negs:
            return mask
        labels = _label(mask)
        pos = [(r, c) for kk, r, c in self.pos if kk == k]
        mask = mask.copy()
        for r, c in negs:
            comp = labels == labels[r, c]
            shared = [(pr, pc) for pr, pc in pos if comp[pr, pc]]
            if not shared:
                mask &= ~comp
                continue
            rr, cc = np.nonzero(comp)
            d_neg = (rr - r) ** 2 + (cc - c) ** 2
            d_pos = np.min([(rr - pr) ** 2 + (cc - pc) ** 2 for pr, pc in shared], axis=0)
            cut = d_neg < d_pos
            mask[rr[cut], cc[cut]] = False
        return mask

    def _predict(self, k: int, box) -> tuple[np.ndarray, float]:
        data = self.e.slice_data(self.axis, k, self.cancel)
        logits, iou = self.e.predict_boxes(data, np.asarray([box]))
        return logits[0], float(iou[0])

    # ---- anchors ---------------------------------------------------------------------------
    def _click_anchor(self, k: int, points: list[tuple[int, int]],
                      avoid: list[tuple[int, int]] | None = None) -> tuple[np.ndarray, float] | None:
        """Best mask on slice k for clicks `points` (box candidates grown to fit) that holds none of the
        pixels `avoid` (default: the negative clicks on slice k)."""
        data = self.e.slice_data(self.axis, k, self.cancel)
        within = self._plane_box()
        negs = [(r, c) for kk, r, c in self.neg if kk == k] if avoid is None else list(avoid)
        pr = np.array([p[0] for p in points]); pc = np.array([p[1] for p in points])
        side = max(self.plane)
        boxes = []
        for frac in CLICK_BOX_FRACTIONS:
            h = max(2, int(round(frac * side)))
            box = _clip_box((pr.min() - h, pc.min() - h, pr.max() + h, pc.max() + h), self.plane, within)
            if box not in boxes:
                boxes.append(box)
        final: list[tuple[np.ndarray, float]] = []
        for round_ in range(CLICK_ROUNDS):
            logits, ious = self.e.predict_boxes(data, np.asarray(boxes))
            grow = []
            for box, lg, io in zip(boxes, logits, ious):
                mask = lg > 0
                if not mask[pr, pc].all():
                    continue  # lost the click: drop this candidate
                new = _grow(bbox_2d(mask), 0.15, self.plane, within)
                if round_ < CLICK_ROUNDS - 1 and max(abs(a - b) for a, b in zip(new, box)) > 1 and new not in grow:
                    grow.append(new)
                else:
                    final.append((lg, float(io)))
            if not grow:
                break
            boxes = grow
        scored: list[tuple[float, int, np.ndarray, float]] = []
        for logits, iou in final:
            mask = logits > 0
            if avoid is None:  # a positive anchor: judged after the negative clicks have cut it
                mask = self._apply_negatives(k, mask)
                if not mask[pr, pc].all():
                    continue
            if any(mask[r, c] for r, c in negs):
                continue
            score = iou * self._stability(logits) * self._edge(data.image01, mask) * self._homogeneity(
                data.image01, mask, pr, pc)
            scored.append((score, int(mask.sum()), logits, iou))
        if not scored:
            return None
        top = max(s[0] for s in scored)
        if avoid is None:
            pick = max(scored, key=lambda s: s[0])
        else:  # a negative click marks the smallest plausible object around it, not what encloses it
            pick = min((s for s in scored if s[0] >= NEGATIVE_SCORE_RATIO * top), key=lambda s: s[1])
        return pick[2], pick[3]

    @staticmethod
    def _stability(logits: np.ndarray) -> float:
        return float((logits > 1).sum() / max((logits > -1).sum(), 1))

    @staticmethod
    def _edge(img: np.ndarray, mask: np.ndarray) -> float:
        ring = _dilate(mask, 2) & ~mask
        inner = mask & ~_erode(mask, 2)
        if not ring.any() or not inner.any():
            return 0.0
        return float(abs(img[inner].mean() - img[ring].mean())) + 1e-3

    @staticmethod
    def _homogeneity(img: np.ndarray, mask: np.ndarray, pr, pc) -> float:
        ref = np.median([img[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] for r, c in zip(pr, pc)])
        return float(np.mean(np.abs(img[mask] - ref) < 0.1)) + 1e-3

    # ---- propagation -----------------------------------------------------------------------
    def _propagate(self, k0: int, mask0: np.ndarray, step: int, store=None, exclude: bool = True) -> None:
        """Walk from slice k0 in direction `step`; each accepted slice goes to `store(k, logits, mask)`
        (default: the result); `exclude` applies the negative clicks on the way."""
        store = self._store if store is None else store
        prev = mask0
        ref = float(np.median(self.e.slice_data(self.axis, k0, self.cancel).image01[mask0])) if mask0.any() else 0.0
        k = k0 + step
        within = self._plane_box()
        while self._in_range(k) and prev.sum() >= self.e.min_area:
            self._tick(f"slice {k}")
            box = _grow(bbox_2d(prev), self.e.box_margin, self.plane, within)
            logits, iou = self._predict(k, box)
            mask = logits > 0
            fit = bbox_2d(mask)
            if fit is not None and (fit[0] <= box[0] or fit[1] <= box[1] or fit[2] >= box[2] or fit[3] >= box[3]):
                refit = _grow(fit, self.e.box_margin, self.plane, within)
                if refit != box:
                    logits, iou = self._predict(k, refit)
                    mask = logits > 0
            if exclude:
                mask = self._apply_negatives(k, mask)
            if mask.sum() < self.e.min_area or iou < self.e.min_iou:
                break
            near = _dilate(prev, 2)
            if (mask & near).sum() < self.e.min_overlap * mask.sum():
                break
            level = float(np.median(self.e.slice_data(self.axis, k, self.cancel).image01[mask]))
            if abs(level - ref) > self.e.max_level_change:
                break  # another tissue: the object has ended
            store(k, logits, mask)
            prev = mask
            k += step

    def _store(self, k: int, logits: np.ndarray, mask: np.ndarray) -> None:
        p = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        p = np.where(mask, np.maximum(p, 0.5 + 1e-3), np.minimum(p, 0.5 - 1e-3))
        if self.box is not None:
            p = np.where(self._box_plane_mask(), p, 0.0)
        self.prob[k] = np.maximum(self.prob[k], p.astype(np.float32))

    def _box_plane_mask(self) -> np.ndarray:
        """Bool [rows, cols]: the 3D box's in-plane extent (call only with a box)."""
        r0, c0, r1, c1 = self._plane_box()
        inside = np.zeros(self.plane, bool)
        inside[r0:r1 + 1, c0:c1 + 1] = True
        return inside

    def execute(self) -> np.ndarray:
        anchors: list[tuple[int, np.ndarray]] = []
        if len(self.pos) or self.box is not None or self.seed is not None:  # negatives alone cut nothing
            self._segment_excluded()
        if self.box is not None:
            k = int(round((self.box[0][0] + self.box[1][0]) / 2))
            self._tick(f"slice {k}")
            logits, _ = self._predict(k, self._plane_box())
            mask = self._apply_negatives(k, logits > 0)
            self._store(k, logits, mask)
            anchors.append((k, mask))
        by_slice: dict[int, list[tuple[int, int]]] = {}
        for k, r, c in self.pos:
            by_slice.setdefault(int(k), []).append((int(r), int(c)))
        for k, points in by_slice.items():
            if not self._in_range(k):
                continue
            self._tick(f"click on slice {k}")
            found = self._click_anchor(k, points)
            if found is None:
                continue
            logits, _ = found
            mask = self._apply_negatives(k, logits > 0)
            self._store(k, logits, mask)
            anchors.append((k, mask))
        for k, mask in anchors:
            self._propagate(k, mask, +1)
            self._propagate(k, mask, -1)
        if self.seed is not None:  # refining: the seed joins what the clicks found, negatives cut both
            for k in np.flatnonzero(self.seed.reshape(self.n, -1).any(axis=1)):
                # component by component: a negative on one object of the seed leaves its other objects alone
                labels = _label(self.seed[k])
                kept = np.zeros(self.plane, bool)
                for lab in range(1, int(labels.max()) + 1):
                    kept |= self._apply_negatives(int(k), labels == lab)
                if self.box is not None:
                    kept &= self._box_plane_mask() & self._in_range(int(k))
                self.prob[k] = np.maximum(self.prob[k], kept.astype(np.float32))
        self._remove_negative_components()
        if self.progress is not None:
            self.progress(1.0, "done")
        return self.prob

    def _remove_negative_components(self) -> None:
        if not len(self.neg):
            return
        labels = _label(self.prob > 0.5)
        keep = {labels[tuple(p)] for p in self.pos} - {0}
        for p in self.neg:
            lab = labels[tuple(p)]
            if lab and lab not in keep:
                self.prob[labels == lab] = 0.0
