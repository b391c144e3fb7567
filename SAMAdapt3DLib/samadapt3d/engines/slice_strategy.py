"""How SliceEngine turns prompts into a 3D mask: objects from a 2D model, propagated slice to slice, composed
click by click so that the interaction contract of docs/SESSION.md holds by construction.

All arrays here are "slicing-axis first": [slices, rows, cols] (SliceEngine moves the axis back).

Objects (each computed once per image and prompt, then kept; thresholds in `SliceConfig`):
- a 3D box: its middle slice prompted with the box, then propagated to both ends of the box;
- a positive click: candidate boxes of several sizes centred on the click, each refitted to its own mask; the
  candidate that keeps the click and scores best on predicted IoU x stability x edge contrast x intensity
  homogeneity is the anchor, then propagated in both directions;
- a negative click's "excluded object": the same search, but the smallest candidate scoring at least
  `negative_score_ratio` of the best (what the user points at, not what encloses it), propagated.
Propagation: each next slice is prompted with its neighbour's mask box (+ `box_margin`), refitted once when
the mask touches the box; it stops at an empty / tiny mask, a mask that no longer overlaps its neighbour's, and,
without a box, a low predicted IoU or a change of tissue intensity (the object has ended). A box bounds
everything (its in-plane extent and its slices).

Composition (`_Fold`), prompts in the order given (ModelPrompts.clicks):
- start from the seed (refining) united with the box's object;
- a positive click ADDS its object (plus its own voxel, minus what earlier negatives cut from it): a positive
  never removes anything, and clicks on separate objects give their union, on any slice, in any order;
- a negative click REMOVES its cut from the result (never adds; its own voxel leaves unless a positive is on it).
  The cut, on the negative's slice, of the mask component it lands in:
  * the excluded object covers a small part of the component (another structure inside the mask): that object,
    dilated by `cut_dilation`, on every slice where it stays a small part;
  * else, positive clicks in the component: the pixels nearer to the negative (engines.prompts split);
  * else, inside a box: the model re-segments the component in the largest box shrunk to stop just before
    the negative (the model's own boundary), and the rest is cut;
  * else, refining a seed without positive clicks: the excluded object, on every slice it spans;
  * else (a leak along the slicing axis): the component, and the slices beyond it (away from the positive
    clicks) that continue it, stopping where it merges with another object.
  Parts of the mask the cut disconnects from every positive click / box anchor / seed go too.
The fold after each run is kept: one more click costs one step, so N prompts cost O(N) decoder runs.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import CancelledError
from .base import ModelPrompts, ProgressCallback
from .prompts import click_voxels, label_components, nearer_to_negative
from .slice_config import SliceConfig
from .slice_ops import Box, bbox_2d, box_is_valid, clip_box, component_at, dilate, erode, grow_box

if TYPE_CHECKING:
    from .slices import SliceEngine

#: a forced-in voxel's probability / a cut voxel's ceiling
INSIDE, OUTSIDE = 1.0, 0.0
#: objects kept per image (each a few slices of float32)
MAX_OBJECTS = 512

SliceObject = dict  # slice index -> float32 probability [rows, cols]


@dataclass
class _Fold:
    key: tuple
    prob: np.ndarray
    evidence: np.ndarray  # bool: voxels that keep a component (positive clicks, box anchor, seed)
    positives: list[tuple[int, int, int]] = field(default_factory=list)
    negatives: list[tuple[int, int, int]] = field(default_factory=list)

    def copy(self) -> "_Fold":
        return _Fold(self.key, self.prob.copy(), self.evidence.copy(), list(self.positives), list(self.negatives))


def _seed_key(seed: np.ndarray | None) -> bytes:
    if seed is None:
        return b""
    return hashlib.blake2b(np.packbits(seed).tobytes() + str(seed.shape).encode(), digest_size=16).digest()


class SliceStrategy:
    """The click / propagation strategy of one SliceEngine: object memo and the last fold, per image."""

    def __init__(self, engine: "SliceEngine") -> None:
        self.engine = engine
        self._objects: OrderedDict[tuple, tuple] = OrderedDict()
        self._last: _Fold | None = None

    def reset(self) -> None:
        """A new image: forget objects and the fold (the decode / embedding caches stay, keyed by content)."""
        self._objects.clear()
        self._last = None

    def memo(self, key: tuple, make: Callable[[], tuple]) -> tuple:
        hit = self._objects.get(key)
        if hit is None:
            hit = make()
            self._objects[key] = hit
            while len(self._objects) > MAX_OBJECTS:
                self._objects.popitem(last=False)
        else:
            self._objects.move_to_end(key)
        return hit

    def run(self, axis: int, prompts: ModelPrompts, seed: np.ndarray | None,
            progress: ProgressCallback | None, cancel: threading.Event | None) -> np.ndarray:
        walk = _Walk(self, axis, prompts, progress, cancel)
        seed = None if seed is None else np.ascontiguousarray(np.moveaxis(np.asarray(seed, bool), axis, 0))
        clicks = [(positive, walk.voxel(point)) for positive, point in prompts.clicks()]
        base = (axis, _seed_key(seed), None if walk.box is None else tuple(map(tuple, walk.box)))
        keys = [base + tuple(clicks[:n]) for n in range(len(clicks) + 1)]
        last = self._last
        if last is not None and last.key in keys:
            done, fold = keys.index(last.key), last.copy()
        else:
            done, fold = 0, walk.start(seed, base)
        for n in range(done, len(clicks)):
            positive, voxel = clicks[n]
            (walk.add if positive else walk.remove)(fold, voxel)
            fold.key = keys[n + 1]
        self._last = fold.copy()
        if progress is not None:
            progress(1.0, "done")
        return fold.prob


class _Walk:
    """One `run`: the model calls, objects and cuts along the slicing axis `axis`."""

    def __init__(self, strategy: SliceStrategy, axis: int, prompts: ModelPrompts, progress, cancel) -> None:
        self.s = strategy
        self.e = strategy.engine
        self.cfg: SliceConfig = strategy.engine.config
        self.axis = axis
        self.progress = progress
        self.cancel = cancel
        shape = self.e.image.shape
        self.n = shape[axis]
        self.plane = tuple(s for a, s in enumerate(shape) if a != axis)
        self.order = [axis] + [a for a in range(3) if a != axis]
        self.shape = (self.n, *self.plane)
        self.box = None
        if prompts.box is not None:
            lo, hi = (click_voxels(np.asarray(c)[self.order][None], self.shape)[0] for c in prompts.box)
            self.box = (tuple(int(v) for v in lo), tuple(int(v) for v in hi))
        self.done = 0

    # ---- small helpers -----------------------------------------------------------------------
    def voxel(self, point) -> tuple[int, int, int]:
        return tuple(int(v) for v in click_voxels(np.asarray(point, float)[self.order][None], self.shape)[0])

    def tick(self, message: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("segmentation cancelled")
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done / max(self.n, 1), 0.99), message)

    def plane_box(self) -> Box | None:
        if self.box is None:
            return None
        lo, hi = self.box
        return (lo[1], lo[2], hi[1], hi[2])

    def in_range(self, k: int) -> bool:
        if self.box is None:
            return 0 <= k < self.n
        return self.box[0][0] <= k <= self.box[1][0]

    def predict(self, k: int, boxes) -> tuple[np.ndarray, np.ndarray]:
        data = self.e.slice_data(self.axis, k, self.cancel)
        return self.e.predict_boxes(data, np.asarray(boxes).reshape(-1, 4))

    def key(self, kind: str, *what) -> tuple:
        return (self.axis, kind, self.plane_box(), None if self.box is None else (self.box[0][0], self.box[1][0]),
                *what)

    # ---- objects -----------------------------------------------------------------------------
    def box_object(self) -> tuple[SliceObject, int, np.ndarray]:
        def make():
            k = int(round((self.box[0][0] + self.box[1][0]) / 2))
            self.tick(f"slice {k}")
            logits, _ = self.predict(k, [self.plane_box()])
            obj: SliceObject = {}
            mask = logits[0] > 0
            self.keep(obj, k, logits[0], mask)
            self.propagate(obj, k, mask)
            return obj, k, mask
        return self.s.memo(self.key("box"), make)

    def click_object(self, k: int, r: int, c: int) -> tuple[SliceObject]:
        def make():
            obj: SliceObject = {}
            if not self.in_range(k):
                return (obj,)
            self.tick(f"click on slice {k}")
            found = self.click_anchor(k, r, c, smallest=False)
            if found is not None:
                self.keep(obj, k, found, found > 0)
                self.propagate(obj, k, found > 0)
            return (obj,)
        return self.s.memo(self.key("click", k, r, c), make)

    def extended_object(self, fold: _Fold, k: int, r: int, c: int) -> SliceObject | None:
        """A positive click just outside a mask component (a missed part of it): the slice re-prompted with the box
        of the component plus the click, propagated while it adds to the mask; None when no component is near or
        the model's mask misses the click."""
        current = fold.prob > 0.5
        if not self.in_range(k) or current[k, r, c] or not current[k].any():
            return None
        labels = label_components(current[k])
        rr, cc = np.nonzero(labels)
        dist = (rr - r) ** 2 + (cc - c) ** 2
        nearest = int(np.argmin(dist))
        if dist[nearest] > (self.cfg.extend_reach * max(self.plane)) ** 2:
            return None
        comp = labels == labels[rr[nearest], cc[nearest]]
        comp[r, c] = True
        box = grow_box(bbox_2d(comp), self.cfg.box_margin, self.plane, self.plane_box())
        self.tick(f"click on slice {k}")
        logits, _ = self.predict(k, [box])
        mask = logits[0] > 0
        if not mask[r, c]:
            return None
        obj: SliceObject = {}
        self.keep(obj, k, logits[0], mask)
        self.propagate(obj, k, mask, adds_to=current)
        return obj

    def excluded_object(self, k: int, r: int, c: int) -> tuple[dict]:
        def make():
            obj: dict = {}
            if not self.in_range(k):
                return (obj,)
            self.tick(f"negative click on slice {k}")
            found = self.click_anchor(k, r, c, smallest=True)
            if found is not None:
                obj[k] = found > 0
                self.propagate(obj, k, found > 0, masks_only=True)
            return (obj,)
        return self.s.memo(self.key("excluded", k, r, c), make)

    def keep(self, obj: SliceObject, k: int, logits: np.ndarray, mask: np.ndarray) -> None:
        p = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        p = np.where(mask, np.maximum(p, 0.5 + 1e-3), np.minimum(p, 0.5 - 1e-3)).astype(np.float32)
        if self.box is not None:
            r0, c0, r1, c1 = self.plane_box()
            inside = np.zeros(self.plane, bool)
            inside[r0:r1 + 1, c0:c1 + 1] = True
            p = np.where(inside, p, 0.0).astype(np.float32)
        obj[k] = p

    def click_anchor(self, k: int, r: int, c: int, smallest: bool) -> np.ndarray | None:
        """Logits of the best candidate mask on slice k around the click (see the module docstring)."""
        cfg = self.cfg
        data = self.e.slice_data(self.axis, k, self.cancel)
        within = self.plane_box()
        side = max(self.plane)
        boxes: list[Box] = []
        for frac in cfg.click_box_fractions:
            h = max(2, int(round(frac * side)))
            box = clip_box((r - h, c - h, r + h, c + h), self.plane, within)
            if box_is_valid(box) and box not in boxes:
                boxes.append(box)
        final: list[tuple[np.ndarray, float]] = []
        for round_ in range(cfg.click_rounds):
            if not boxes:
                break
            logits, ious = self.e.predict_boxes(data, np.asarray(boxes))
            grow = []
            for box, lg, io in zip(boxes, logits, ious):
                mask = lg > 0
                if not mask[r, c]:
                    continue  # lost the click: drop this candidate
                new = grow_box(bbox_2d(mask), cfg.refit_margin, self.plane, within)
                if round_ < cfg.click_rounds - 1 and max(abs(a - b) for a, b in zip(new, box)) > 1 and new not in grow:
                    grow.append(new)
                else:
                    final.append((lg, float(io)))
            boxes = grow
        scored = []
        for logits, iou in final:
            mask = logits > 0
            score = iou * _stability(logits) * _edge(data.image01, mask) * _homogeneity(
                data.image01, mask, r, c, cfg.homogeneity_tolerance)
            scored.append((score, int(mask.sum()), logits))
        if not scored:
            return None
        if not smallest:
            return max(scored, key=lambda s: s[0])[2]
        top = max(s[0] for s in scored)
        return min((s for s in scored if s[0] >= cfg.negative_score_ratio * top), key=lambda s: s[1])[2]

    def propagate(self, obj: dict, k0: int, mask0: np.ndarray, masks_only: bool = False,
                  adds_to: np.ndarray | None = None) -> None:
        """Walk from slice k0 both ways; each accepted slice goes into `obj` (logits kept as probability, or
        the bool mask with `masks_only`). With `adds_to` (the current mask) the walk stops where it adds nothing
        to it: a correction propagates only its change."""
        cfg = self.cfg
        if not mask0.any():
            return
        ref = float(np.median(self.e.slice_data(self.axis, k0, self.cancel).image01[mask0]))
        within = self.plane_box()
        lenient = self.box is not None and cfg.box_keeps_walking
        for step in (+1, -1):
            prev, k = mask0, k0 + step
            while self.in_range(k) and prev.sum() >= cfg.min_area:
                self.tick(f"slice {k}")
                box = grow_box(bbox_2d(prev), cfg.box_margin, self.plane, within)
                logits, iou = self.predict(k, [box])
                logits, iou = logits[0], float(iou[0])
                mask = logits > 0
                fit = bbox_2d(mask)
                if fit is not None and (fit[0] <= box[0] or fit[1] <= box[1] or fit[2] >= box[2] or fit[3] >= box[3]):
                    refit = grow_box(fit, cfg.box_margin, self.plane, within)
                    if refit != box:
                        lg, io = self.predict(k, [refit])
                        logits, iou, mask = lg[0], float(io[0]), lg[0] > 0
                if mask.sum() < cfg.min_area or (not lenient and iou < cfg.min_iou):
                    break
                if (mask & dilate(prev, 2)).sum() < cfg.min_overlap * mask.sum():
                    break
                if not lenient:
                    level = float(np.median(self.e.slice_data(self.axis, k, self.cancel).image01[mask]))
                    if abs(level - ref) > cfg.max_level_change:
                        break  # another tissue: the object has ended
                if adds_to is not None and (mask & ~adds_to[k]).sum() < cfg.min_area:
                    break  # nothing new here: the correction has ended
                if masks_only:
                    obj[k] = mask
                else:
                    self.keep(obj, k, logits, mask)
                prev, k = mask, k + step

    # ---- the fold ----------------------------------------------------------------------------
    def start(self, seed: np.ndarray | None, key: tuple) -> _Fold:
        prob = np.zeros(self.shape, np.float32)
        evidence = np.zeros(self.shape, bool)
        if seed is not None:
            prob[seed] = INSIDE
            evidence |= seed
        if self.box is not None:
            obj, k, anchor = self.box_object()
            for kk, p in obj.items():
                np.maximum(prob[kk], p, out=prob[kk])
            evidence[k] |= anchor
        return _Fold(key, prob, evidence)

    def add(self, fold: _Fold, voxel: tuple[int, int, int]) -> None:
        k, r, c = voxel
        obj = self.extended_object(fold, k, r, c)
        if obj is None:
            (obj,) = self.click_object(k, r, c)
        found = np.zeros(self.shape, np.float32)
        for kk, p in obj.items():
            found[kk] = p
        found[voxel] = INSIDE
        mask = found > 0.5
        fold.positives.append(voxel)
        for neg in fold.negatives:  # earlier negatives keep their say: split against the positives
            if mask[neg]:
                comp = component_at(mask[neg[0]], neg[1:])
                pos = [p[1:] for p in fold.positives if p[0] == neg[0] and comp[p[1:]]]
                rr, cc = np.nonzero(comp)
                drop = nearer_to_negative(np.stack([rr, cc], 1), neg[1:], pos)
                mask[neg[0], rr[drop], cc[drop]] = False
        np.maximum(fold.prob, np.where(mask, found, 0.0).astype(np.float32), out=fold.prob)
        fold.prob[voxel] = INSIDE
        fold.evidence[voxel] = True

    def remove(self, fold: _Fold, voxel: tuple[int, int, int]) -> None:
        fold.negatives.append(voxel)
        mask = fold.prob > 0.5
        if mask[voxel]:
            cut = self.cut(fold, mask, voxel)
            for p in fold.positives:
                cut[p] = False
            fold.prob[cut] = OUTSIDE
            fold.evidence &= ~cut
        if voxel not in fold.positives:
            fold.prob[voxel] = min(float(fold.prob[voxel]), OUTSIDE)

    def cut(self, fold: _Fold, mask: np.ndarray, voxel: tuple[int, int, int]) -> np.ndarray:
        """The voxels a negative click at `voxel` removes from `mask` (see the module docstring)."""
        cfg = self.cfg
        k, r, c = voxel
        cut = np.zeros(self.shape, bool)
        comp = component_at(mask[k], (r, c))
        pos_in = [p[1:] for p in fold.positives if p[0] == k and comp[p[1:]]]
        (excluded,) = self.excluded_object(k, r, c)
        other = excluded.get(k)
        if other is not None and self.is_other_structure(other, comp, pos_in):
            cut[k] = dilate(other, cfg.cut_dilation) & comp
            for step in (+1, -1):  # follow the excluded object while it stays another structure
                kk = k + step
                while kk in excluded and mask[kk].any():
                    region = self.components_touching(mask[kk], excluded[kk])
                    pos_k = [p[1:] for p in fold.positives if p[0] == kk and region[p[1:]]]
                    if not self.is_other_structure(excluded[kk], region, pos_k):
                        break
                    cut[kk] = dilate(excluded[kk], cfg.cut_dilation) & region
                    kk += step
        elif pos_in:
            rr, cc = np.nonzero(comp)
            drop = nearer_to_negative(np.stack([rr, cc], 1), (r, c), pos_in)
            cut[k, rr[drop], cc[drop]] = True
        elif self.box is not None:
            cut[k] = self.shrink_cut(k, comp, r, c)
        elif not fold.positives and excluded:  # refining a seed: the object the negative points at goes
            for kk, m in excluded.items():
                cut[kk] = dilate(m, cfg.cut_dilation) & mask[kk]
        else:
            self.cut_along_axis(fold, mask, cut, k, comp)
        return self.detached(fold, mask, cut)

    def is_other_structure(self, other: np.ndarray, region: np.ndarray, positives) -> bool:
        overlap = int((other & region).sum())
        if overlap == 0 or overlap >= self.cfg.same_object * region.sum():
            return False
        grown = dilate(other, self.cfg.cut_dilation)
        return not any(grown[p] for p in positives)

    @staticmethod
    def components_touching(mask: np.ndarray, other: np.ndarray) -> np.ndarray:
        labels = label_components(mask)
        hit = np.unique(labels[other & mask])
        return np.isin(labels, hit[hit > 0])

    def shrink_cut(self, k: int, comp: np.ndarray, r: int, c: int) -> np.ndarray:
        """The model re-segments the component in its box shrunk (one side at a time) to end just before the
        negative; the largest re-segmentation that leaves the negative out is kept, the rest is cut."""
        gap = self.cfg.shrink_gap
        r0, c0, r1, c1 = bbox_2d(comp)
        candidates = [(r0, c0, r - 1 - gap, c1), (r + 1 + gap, c0, r1, c1),
                      (r0, c0, r1, c - 1 - gap), (r0, c + 1 + gap, r1, c1)]
        candidates = [b for b in candidates if box_is_valid(b)]
        best = np.zeros(self.plane, bool)
        if candidates:
            self.tick(f"negative click on slice {k}")
            logits, _ = self.predict(k, candidates)
            for lg, b in zip(logits, candidates):
                kept = (lg > 0) & comp
                kept[max(r - gap, 0):r + gap + 1, max(c - gap, 0):c + gap + 1] = False
                if kept.sum() > best.sum():
                    best = kept
        if not best.any():  # the model found nothing there: cut the part of the component around the click
            return dilate(np.pad(np.ones((1, 1), bool), ((r, self.plane[0] - r - 1), (c, self.plane[1] - c - 1))),
                          gap) & comp
        return comp & ~best

    def cut_along_axis(self, fold: _Fold, mask: np.ndarray, cut: np.ndarray, k: int, comp: np.ndarray) -> None:
        """A leak along the axis: the component, and what continues it away from the positive clicks."""
        cut[k] = comp
        pos_slices = sorted({p[0] for p in fold.positives})
        for step in (+1, -1):
            if any((pk - k) * step > 0 for pk in pos_slices) and any((pk - k) * step < 0 for pk in pos_slices):
                continue  # positives on both sides: only this slice
            if pos_slices and all((pk - k) * step > 0 for pk in pos_slices):
                continue  # toward the positives: they keep their part
            prev, kk = comp, k + step
            while 0 <= kk < self.n and mask[kk].any():
                region = self.components_touching(mask[kk], dilate(prev, 1))
                if not region.any() or any(region[p[1:]] for p in fold.positives if p[0] == kk):
                    break
                if (region & dilate(prev, 2)).sum() < self.cfg.min_overlap * region.sum():
                    break  # merges with another object here (e.g. the other lung): stop before taking it
                cut[kk] = region
                prev, kk = region, kk + step

    def detached(self, fold: _Fold, mask: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """`cut` plus the parts of the mask it disconnects from all evidence (positives, box anchor, seed)."""
        if not cut.any():
            return cut
        rest = mask & ~cut
        labels = label_components(rest)
        near = np.stack([dilate(s, 1) if s.any() else s for s in cut])
        near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0)  # neighbouring slices too (26-connected)
        touched = np.unique(labels[near & rest])
        kept = np.unique(labels[fold.evidence & rest])
        for lab in touched:
            if lab and lab not in kept:
                cut |= labels == lab
        return cut


def _stability(logits: np.ndarray) -> float:
    return float((logits > 1).sum() / max((logits > -1).sum(), 1))


def _edge(img: np.ndarray, mask: np.ndarray) -> float:
    ring = dilate(mask, 2) & ~mask
    inner = mask & ~erode(mask, 2)
    if not ring.any() or not inner.any():
        return 0.0
    return float(abs(img[inner].mean() - img[ring].mean())) + 1e-3


def _homogeneity(img: np.ndarray, mask: np.ndarray, r: int, c: int, tolerance: float) -> float:
    near = (slice(max(r - 1, 0), r + 2), slice(max(c - 1, 0), c + 2))
    ref = float(np.median(img[near][mask[near]]))  # the click's neighbours inside the candidate (it holds the click)
    return float(np.mean(np.abs(img[mask] - ref) < tolerance)) + 1e-3
