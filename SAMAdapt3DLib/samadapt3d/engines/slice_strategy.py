"""How SliceEngine turns prompts into a 3D mask: objects from a 2D model, propagated slice to slice, composed
click by click so that the interaction contract of docs/SESSION.md holds by construction.

All arrays here are "slicing-axis first": [slices, rows, cols] (SliceEngine moves the axis back).

Objects (each computed once per image and prompt, then kept; thresholds in `SliceConfig`): what the 2D model
finds for a box, a click or a negative click, propagated (engines/slice_objects.py).

Composition (`_Fold`), prompts in the order given (ModelPrompts.clicks):
- start from the seed (refining) united with the box's object;
- a positive click ADDS its object (plus its own voxel, minus what earlier negatives cut from it): a positive
  never removes anything, and clicks on separate objects give their union, on any slice, in any order.
  Its object: a correction of the mask when it can be one (`extended_object`: just outside a component of its
  slice; `end_object`: on a slice the mask misses, within `end_reach` slices of its end), else its own object.
  A correction walks on only while it adds (`correction_ended`) and keeps to the click's tissue (`keep_alike`);
  with a box, positive clicks may reach `correction_reach` beyond its in-plane extent (the box bounds one slice);
- a negative click REMOVES its cut from the result (never adds; its own voxel leaves unless a positive is on it).
  The cut, on the negative's slice, of the mask component it lands in:
  * the excluded object covers a small part of the component (another structure inside the mask) and looks like
    the negative's tissue there (`looks_like`): that object, dilated by `cut_dilation`, on every slice where it
    stays a small part and still looks like it;
  * else, positive clicks in the component: the pixels nearer to the negative (engines.prompts split); only the
    part of them that looks unlike the rest (`unlike_part`) when there is one;
  * else, inside a box, when the negative lands on a part that looks unlike the rest of the component (another
    tissue taken in): that part, and what continues it on the next slices without outgrowing it (`cut_taper`;
    `appearance_cut`, no decoder run);
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
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..boxed import BoxedArray, nonzero_box
from ..byte_lru import ByteLRU
from .base import ModelPrompts, PreviewCallback, ProgressCallback
from .prompts import label_components, nearer_to_negative
from .slice_objects import SliceObject, SliceObjects
from .slice_ops import bbox_2d, box_is_valid, component_at, dilate, grow_box
from .slice_region import level_at

if TYPE_CHECKING:
    from .slices import SliceEngine

#: a forced-in voxel's probability / a cut voxel's ceiling
INSIDE, OUTSIDE = 1.0, 0.0
#: bytes of objects kept per image, the latest first, each slice held as the box of its nonzero pixels (a lung on
#: a 512 x 512 x 300 CT is ~220 MiB of float32 slices, ~45 MiB boxed); an evicted object is recomputed when a run
#: needs it
MAX_OBJECT_BYTES = 256 << 20

@dataclass
class _Fold:
    key: tuple
    prob: np.ndarray
    evidence: np.ndarray  # bool: voxels that keep a component (positive clicks, box anchor, seed)
    positives: list[tuple[int, int, int]] = field(default_factory=list)
    negatives: list[tuple[int, int, int]] = field(default_factory=list)

    def copy(self) -> "_Fold":
        return _Fold(self.key, self.prob.copy(), self.evidence.copy(), list(self.positives), list(self.negatives))

    def lent(self) -> bool:
        """Whether an array returned by `run` (or a view of one) still refers to `prob`: then the next run works on
        a copy. Every numpy view, and every buffer exported from it, holds a reference to the array that owns the
        memory, so a reference count above the fold's own says so."""
        return _prob_references(self) > _OWN_REFERENCES


def _prob_references(fold) -> int:
    return sys.getrefcount(fold.prob)


class _Holder:
    def __init__(self) -> None:
        self.prob = np.zeros(1)


#: `_prob_references` where nothing but the attribute refers to the array: measured through the same call, as
#: interpreters count a call's argument differently
_OWN_REFERENCES = _prob_references(_Holder())


def _seed_key(seed: np.ndarray | None) -> bytes:
    if seed is None:
        return b""
    return hashlib.blake2b(np.packbits(seed).tobytes() + str(seed.shape).encode(), digest_size=16).digest()


class SliceStrategy:
    """The click / propagation strategy of one SliceEngine: object memo and the last fold, per image."""

    def __init__(self, engine: "SliceEngine") -> None:
        self.engine = engine
        self._objects: ByteLRU[tuple] = ByteLRU(MAX_OBJECT_BYTES)
        self._last: _Fold | None = None

    def reset(self) -> None:
        """A new image: forget objects and the fold (the decode / embedding caches stay, keyed by content)."""
        self._objects.clear()
        self._last = None

    def memo(self, key: tuple, make: Callable[[], tuple]) -> tuple:
        """`make()`'s object for `key`, kept boxed: each call gets its own copy (plain arrays full again,
        SliceObjects as they are)."""
        hit = self._objects.get(key)
        if hit is None:
            made = make()
            kept = _boxed(made)
            self._objects.put(key, kept, _nbytes(kept))
            return made
        return _unboxed(hit)

    def run(self, axis: int, prompts: ModelPrompts, seed: np.ndarray | None,
            progress: ProgressCallback | None, cancel: threading.Event | None,
            preview: PreviewCallback | None = None) -> np.ndarray:
        """The probability [slices, rows, cols] (read-only). `preview(mask)`: the mask so far (bool, the same
        axes), while positive objects propagate (`SliceObjects.show_preview`)."""
        walk = _Walk(self, axis, prompts, progress, cancel)
        seed = None if seed is None else np.ascontiguousarray(np.moveaxis(np.asarray(seed, bool), axis, 0))
        walk.preview = preview
        walk.set_preview_base(None if seed is None else seed.copy)
        clicks = [(positive, walk.voxel(point)) for positive, point in prompts.clicks()]
        base = (axis, _seed_key(seed), None if walk.box is None else tuple(map(tuple, walk.box)))
        keys = [base + tuple(clicks[:n]) for n in range(len(clicks) + 1)]
        last = self._last
        if last is not None and last.key in keys:
            done = keys.index(last.key)
            # in place when no earlier result still refers to it (a 512 x 512 x 300 fold is 375 MiB); until
            # this run ends a cancel or an error would leave it half-changed, so it is forgotten meanwhile
            fold = last.copy() if last.lent() else last
            if fold is last:
                self._last = None
        else:
            done, fold = 0, walk.start(seed, base)
        for n in range(done, len(clicks)):
            positive, voxel = clicks[n]
            walk.set_preview_base(lambda: fold.prob > 0.5)  # the fold as this click finds it
            (walk.add if positive else walk.remove)(fold, voxel)
            fold.key = keys[n + 1]
        # kept as is (the next run copies it before any change): the caller gets a read-only view, not a copy
        self._last = fold
        if progress is not None:
            progress(1.0, "done")
        prob = fold.prob.view()
        prob.flags.writeable = False
        return prob


class _Walk(SliceObjects):
    """One `run`: the objects (engines/slice_objects.py) composed click by click into the fold."""

    #: True while a positive click's correction of the mask is made: the box's in-plane extent is widened
    widened = False

    def plane_box(self):
        """The box's in-plane extent; widened by `correction_reach` for corrections: the protocol's box is the
        bounding box of one slice, and the object may reach beyond it on others (the box's slices still bound)."""
        box = super().plane_box()
        if box is None or not self.widened:
            return box
        return grow_box(box, self.cfg.correction_reach, self.plane)

    def end_object(self, fold: _Fold, k: int, r: int, c: int) -> SliceObject | None:
        """A positive click on a slice the mask misses, next to slices it holds (an end of the object, where the
        walk stopped): the slice re-prompted with the nearest masked slice's box plus the click, propagated while it
        adds to the mask; None when no masked slice is within `end_reach` slices or the model's mask misses it."""
        if not self.in_range(k) or (fold.prob[k] > 0.5).any():
            return None
        # the slices within reach first: the whole mask is made only for a click at an end
        reach = range(max(k - self.cfg.end_reach, 0), min(k + self.cfg.end_reach + 1, fold.prob.shape[0]))
        held = [j for j in reach if (fold.prob[j] > 0.5).any()]
        if not held:
            return None
        near = min(held, key=lambda j: (abs(j - k), j))  # the nearest; of two as near, the lower
        current = fold.prob > 0.5
        ref = current[near].copy()
        ref[r, c] = True
        box = grow_box(bbox_2d(ref), self.cfg.box_margin, self.plane, self.plane_box())
        self.tick(f"click on slice {k}")
        logits, _ = self.predict(k, [box])
        mask = logits[0] > 0
        limit = self.cfg.end_taper * float(current[near].sum())
        if not mask[r, c] or mask.sum() > limit:
            return None  # missed the click, or larger than the slice it continues: a leak, not the object's end
        if (mask & dilate(current[near], 2)).sum() < self.cfg.min_overlap * mask.sum():
            return None  # does not continue the mask: another object (its own click object is the answer)
        limit = self.cfg.end_taper * float(mask.sum())
        obj = SliceObject(mask_only=True)
        self.keep(obj, k, logits[0], mask)
        self.propagate(obj, k, mask, adds_to=current, until=self.correction_ended(current, k, limit))
        self.refine(obj)
        return obj

    def extended_object(self, fold: _Fold, k: int, r: int, c: int) -> SliceObject | None:
        """A positive click just outside a mask component (a missed part of it): the slice re-prompted with the box
        of the component plus the click, propagated while it adds to the mask; None when no component is near or
        the model's mask misses the click."""
        if not self.in_range(k):
            return None
        here = fold.prob[k] > 0.5  # the slice first: the whole mask is made only for a click near a component
        if here[r, c] or not here.any():
            return None
        labels = label_components(here)
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
        obj = SliceObject(mask_only=True)
        self.keep(obj, k, logits[0], mask)
        limit = self.cfg.end_taper * float(mask.sum())
        current = fold.prob > 0.5
        self.propagate(obj, k, mask, adds_to=current, until=self.correction_ended(current, k, limit))
        self.refine(obj)
        return obj

    def correction_ended(self, current: np.ndarray, k0: int | None = None,
                         limit: float | None = None) -> Callable[[int, np.ndarray], bool]:
        """Where a correction's walk reaches slices the mask holds: it stops where it adds less than
        `correction_min_gain` of the slice's mask (nothing to correct) or more than `correction_max_gain` (a leak).
        Walking on from an end slice k0 beyond the mask, it stops where the mask grows past `end_taper` times the
        previous slice's (`limit` for k0's; an object tapers toward its end)."""
        lo, hi = self.cfg.correction_min_gain, self.cfg.correction_max_gain
        previous = {+1: limit, -1: limit}

        def ended(k: int, mask: np.ndarray) -> bool:
            area = int(current[k].sum())
            if area == 0:
                if k0 is None or limit is None:
                    return False
                side = 1 if k > k0 else -1
                if mask.sum() > previous[side]:
                    return True
                previous[side] = self.cfg.end_taper * float(mask.sum())
                return False
            gain = int((mask & ~current[k]).sum())
            return gain < lo * area or gain > hi * area
        return ended

    # ---- the fold ----------------------------------------------------------------------------
    def start(self, seed: np.ndarray | None, key: tuple) -> _Fold:
        prob = np.zeros(self.shape, np.float32)
        evidence = np.zeros(self.shape, bool)
        if seed is not None:
            prob[seed] = INSIDE
            evidence |= seed
        if self.box is not None:
            obj, k, anchor = self.box_object()
            for kk in obj:
                b = obj.boxed(kk)
                np.maximum(prob[kk][b.box], b.data, out=prob[kk][b.box])
            evidence[k] |= anchor
        return _Fold(key, prob, evidence)

    def add(self, fold: _Fold, voxel: tuple[int, int, int]) -> None:
        k, r, c = voxel
        self.widened = True  # only for corrections of the mask: a click's own object stays within the box
        try:
            obj = self.extended_object(fold, k, r, c)
            if obj is None:
                obj = self.end_object(fold, k, r, c)
        finally:
            self.widened = False
        corrects = obj is not None
        if obj is None:
            (obj,) = self.click_object(k, r, c)
        if corrects:
            self.keep_alike(obj, fold.prob > 0.5, voxel)
        fold.positives.append(voxel)
        # slice by slice: a volume-sized copy of the object would add 300 MiB to a click on a 512 x 512 x 300 CT
        for kk in sorted(set(obj) | {k}):
            found = obj[kk] if kk in obj else np.zeros(self.plane, np.float32)
            if kk == k:
                found[r, c] = INSIDE
            mask = found > 0.5
            for neg in fold.negatives:  # earlier negatives keep their say: split against the positives
                if neg[0] == kk and mask[neg[1:]]:
                    comp = component_at(mask, neg[1:])
                    pos = [q[1:] for q in fold.positives if q[0] == kk and comp[q[1:]]]
                    rr, cc = np.nonzero(comp)
                    drop = nearer_to_negative(np.stack([rr, cc], 1), neg[1:], pos)
                    mask[rr[drop], cc[drop]] = False
            found[~mask] = 0.0
            np.maximum(fold.prob[kk], found, out=fold.prob[kk])
        fold.prob[voxel] = INSIDE
        fold.evidence[voxel] = True

    def keep_alike(self, obj: SliceObject, current: np.ndarray, voxel: tuple[int, int, int]) -> None:
        """What a correction adds to the mask keeps only the pixels that look like the click's tissue (intensity
        nearer to the click's than to the rest of the model's mask there): the model's mask of a partial object
        often takes in its surroundings. A homogeneous mask is kept whole."""
        tol = self.cfg.homogeneity_tolerance
        k, r, c = voxel
        img = self.e.slice_data(self.axis, k, self.cancel).image01
        ref = level_at(img, r, c, 1)  # the click's 3 x 3 neighbourhood
        for kk, p in obj.items():
            new = (p > 0.5) & ~current[kk]
            im = self.e.slice_data(self.axis, kk, self.cancel).image01
            other = new & (np.abs(im - ref) > tol)
            if other.sum() < self.cfg.min_area:
                continue
            unlike = new & (np.abs(im - ref) >= np.abs(im - float(np.median(im[other]))))
            p[unlike] = np.minimum(p[unlike], OUTSIDE)
            obj[kk] = p

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
        neg = level_at(self.e.slice_data(self.axis, k, self.cancel).image01, r, c, 1)
        if other is not None and self.is_other_structure(other, comp, pos_in) and \
                self.looks_like(k, other & comp, comp & ~other, neg):
            cut[k] = dilate(other, cfg.cut_dilation) & comp
            for step in (+1, -1):  # follow the excluded object while it stays another structure
                kk = k + step
                while kk in excluded and mask[kk].any():
                    region = self.components_touching(mask[kk], excluded[kk])
                    pos_k = [p[1:] for p in fold.positives if p[0] == kk and region[p[1:]]]
                    if not self.is_other_structure(excluded[kk], region, pos_k):
                        break
                    if not self.looks_like(kk, excluded[kk] & region, region & ~excluded[kk], neg):
                        break  # the model's object there is no longer the tissue the negative points at
                    cut[kk] = dilate(excluded[kk], cfg.cut_dilation) & region
                    kk += step
        elif pos_in:
            rr, cc = np.nonzero(comp)
            drop = nearer_to_negative(np.stack([rr, cc], 1), (r, c), pos_in)
            cut[k, rr[drop], cc[drop]] = True
            found = self.unlike_part(mask, k, r, c, comp)
            if found is not None:  # the negative's half holds another tissue: only that tissue goes
                part = component_at(found[0] & cut[k], (r, c))
                if part.any():
                    cut[k] = part
        elif self.box is not None and self.appearance_cut(fold, mask, cut, k, r, c, comp):
            pass
        elif self.box is not None:
            cut[k] = self.shrink_cut(k, comp, r, c)
        elif not fold.positives and excluded:  # refining a seed: the object the negative points at goes
            for kk, m in excluded.items():
                cut[kk] = dilate(m, cfg.cut_dilation) & mask[kk]
        else:
            self.cut_along_axis(fold, mask, cut, k, comp)
        return self.detached(fold, mask, cut)

    def looks_like(self, k: int, part: np.ndarray, rest: np.ndarray, level: float) -> bool:
        """The part's median intensity on slice k is nearer to `level` than to the rest's (a part to cut)."""
        if not part.any() or not rest.any():
            return bool(part.any())
        im = self.e.slice_data(self.axis, k, self.cancel).image01
        median = float(np.median(im[part]))
        return abs(median - level) < abs(median - float(np.median(im[rest])))

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

    def unlike_part(self, mask: np.ndarray, k: int, r: int, c: int,
                    comp: np.ndarray) -> tuple[np.ndarray, Callable[[int], np.ndarray]] | None:
        """The pixels of the component whose intensity is nearer to the negative's than to the rest's, connected to
        the click, and the test of that likeness for any slice's mask; None when the component is homogeneous or
        that part is more than `unlike_max_share` of it (then it is the object itself)."""
        cfg = self.cfg
        img = self.e.slice_data(self.axis, k, self.cancel).image01
        near = comp[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
        neg = float(np.median(img[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2][near]))
        rest = comp & (np.abs(img - neg) > cfg.homogeneity_tolerance)
        if rest.sum() < cfg.min_area:
            return None
        fg = float(np.median(img[rest]))

        def like(kk: int) -> np.ndarray:
            im = self.e.slice_data(self.axis, kk, self.cancel).image01
            # nearer to the negative's level than to the rest's, and within its own tissue's spread: at 3 mm a
            # vertebra's marrow is nearer to the muscle around it than to its cortex
            return mask[kk] & (np.abs(im - neg) < np.minimum(np.abs(im - fg), cfg.unlike_tolerance))
        region = component_at(like(k), (r, c))
        if region.sum() >= cfg.unlike_max_share * comp.sum():
            return None
        return region, like

    def appearance_cut(self, fold: _Fold, mask: np.ndarray, cut: np.ndarray, k: int, r: int, c: int,
                       comp: np.ndarray) -> bool:
        """The negative lands on a tissue that looks unlike the rest of the component (e.g. soft tissue taken into
        a lung, a canal inside bone): that part (`unlike_part`), and what continues it on the next slices (no
        decoder run). False (nothing cut) when there is no such part."""
        cfg = self.cfg
        found = self.unlike_part(mask, k, r, c, comp)
        if found is None:
            return False
        region, like = found
        cut[k] = region
        for step in (+1, -1):
            prev, kk = region, k + step
            while self.in_range(kk) and 0 <= kk < self.n and mask[kk].any():
                grown = self.components_touching(like(kk), dilate(prev, 1))
                if not grown.any() or any(grown[p[1:]] for p in fold.positives if p[0] == kk):
                    break
                if (grown & prev).sum() < cfg.cut_overlap * grown.sum():
                    break  # mostly beside the previous slice's cut: another part of that intensity (a vertebra's body)
                if grown.sum() >= cfg.unlike_max_share * mask[kk].sum():
                    break  # most of that slice's mask: not a part that looks different any more
                if grown.sum() > cfg.cut_taper * prev.sum():
                    break  # larger than what it continues: the object's own tissue at its edge, not that part
                cut[kk] = grown
                prev, kk = grown, kk + step
        return True

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
        return with_detached(cut, mask, fold.evidence)


def with_detached(cut: np.ndarray, mask: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """`cut` (bool [slices, rows, cols], within `mask`; changed in place) plus the components of the rest of the mask
    (26-connected) that touch it and hold no `evidence`. Worked out inside the mask's bounding box: the components
    of a lung's mask over a whole 512 x 512 x 300 CT were ~800 MiB of labels and their copies."""
    if not cut.any():
        return cut
    box = nonzero_box(mask)  # not None: the cut lies in the mask
    rest = mask[box] & ~cut[box]
    labels = label_components(rest)
    near = np.stack([dilate(s, 1) if s.any() else s for s in cut[box]])
    touching = near.copy()  # and the neighbouring slices (26-connected)
    touching[1:] |= near[:-1]
    touching[:-1] |= near[1:]
    touched = np.unique(labels[touching & rest])
    kept = np.unique(labels[evidence[box] & rest])
    cut[box] |= np.isin(labels, [lab for lab in touched if lab and lab not in kept])
    return cut


def _boxed(value):
    """A memoised object (tuples and dicts of arrays, SliceObjects, numbers) with each plane or volume as a
    BoxedArray."""
    return _map_arrays(value, lambda v: BoxedArray.of(v) if isinstance(v, np.ndarray) and v.ndim >= 2 else
                       v.copy() if isinstance(v, SliceObject) else v)


def _unboxed(value):
    return _map_arrays(value, lambda v: v.full() if isinstance(v, BoxedArray) else
                       v.copy() if isinstance(v, SliceObject) else v)


def _map_arrays(value, leaf: Callable):
    """`value` (nested tuples and dicts) with `leaf` applied to everything else in it."""
    if isinstance(value, dict):
        return {k: _map_arrays(v, leaf) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_map_arrays(v, leaf) for v in value)
    return leaf(value)


def _nbytes(value) -> int:
    """Bytes of the arrays in a memoised object (tuples and dicts of arrays, numbers)."""
    if isinstance(value, (np.ndarray, BoxedArray, SliceObject)):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0
