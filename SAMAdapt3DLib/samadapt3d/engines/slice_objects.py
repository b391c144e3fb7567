"""Objects of the slice strategy: what the 2D model finds for a box, a click or a negative click on its slice,
propagated slice to slice (see engines/slice_strategy.py for how they compose, `SliceConfig` for the thresholds).

- a 3D box: its middle slice prompted with the box, then propagated to both ends of the box;
- a positive click: candidate boxes of several sizes centred on the click, each refitted to its own mask, plus
  the box of the click's similar-intensity region (engines/slice_region.py: the connected pixels of the click's
  level, vessels filled, cut at thin necks); the candidate that keeps the click (the region's: or covers most of
  the region) and scores best on predicted IoU x stability x edge contrast x intensity homogeneity x agreement
  with the region is the anchor, then propagated in both directions;
- a negative click's "excluded object": the same search, but the smallest candidate scoring at least
  `negative_score_ratio` of the best (what the user points at, not what encloses it), propagated.
Propagation: each next slice is prompted with its neighbour's mask box (+ `box_margin`), refitted once when
the mask touches the box; it stops at an empty / tiny mask, a mask that no longer overlaps its neighbour's, and,
without a box, a low predicted IoU or a change of tissue intensity (the object has ended); an anchor that is its
click's region (an organ of uniform intensity) also stops where its mask leaks out of that intensity. Before
stopping, the slice is retried once with the box of the object's intensity overlapping the previous mask (the
neighbour's box held more than the object: an apex, a dome), the model's mask kept where it has that intensity.
An object of uniform intensity (a click's region of the click's own level, or a box's mask that is the
similar-intensity region inside the box: a lung) goes on where the model's mask has become another tissue, as its
own intensity near the previous mask and never larger than it (`continuation`: a lung's base around the liver's
dome, its apex). A candidate whose refit loses the click keeps the mask before the refit.
A box bounds everything (its in-plane extent and its slices).
Every positive object (the box's, a click's, a correction's) ends with its boundary re-decided by intensity in a
thin band (engines/slice_appearance.py), where its own histograms tell it from its surroundings.

All arrays here are "slicing-axis first": [slices, rows, cols].
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..boxed import BoxedArray
from ..errors import CancelledError
from .base import ModelPrompts, PreviewCallback
from .prompts import click_voxels
from .slice_config import SliceConfig
from .slice_ops import Box, bbox_2d, box_is_valid, clip_box, dilate, erode, grow_box
from ..evaluate.metrics import dice  # the candidate's agreement with a non-empty region
from .slice_appearance import refined_windows
from .slice_region import level_at, region_near, similar_filled, similar_region, smoothed

if TYPE_CHECKING:
    from .slice_strategy import SliceStrategy



class SliceObject(MutableMapping):
    """A positive object's probability, slice index -> float32 [rows, cols], each slice held as the box of its
    nonzero pixels: reading a slice gives a new full array, writing one keeps its box. A lung's object on a
    512 x 512 x 300 CT is ~220 MiB of full slices and a few tens boxed; its full slices were the largest memory of
    a click.

    `mask_only`: only the object's mask counts (what a click or a correction adds: SliceStrategy.add keeps its
    values above 0.5), so values at or below 0.5 are kept as 0 and the box is the mask's. A box's object keeps the
    model's probabilities under 0.5 (they are part of the session's probability)."""

    def __init__(self, mask_only: bool) -> None:
        self.mask_only = mask_only
        self._slices: dict[int, BoxedArray] = {}

    def __getitem__(self, k: int) -> np.ndarray:
        return self._slices[k].full()

    def __setitem__(self, k: int, probability: np.ndarray) -> None:
        p = np.asarray(probability, np.float32)
        if self.mask_only:
            p = np.where(p > 0.5, p, np.float32(0.0))
        self._slices[k] = BoxedArray.of(p)

    def __delitem__(self, k: int) -> None:
        del self._slices[k]

    def __iter__(self) -> Iterator[int]:
        return iter(self._slices)

    def __len__(self) -> int:
        return len(self._slices)

    def boxed(self, k: int) -> BoxedArray:
        return self._slices[k]

    def mask(self, k: int) -> np.ndarray:
        """Slice k's mask (> 0.5), bool [rows, cols]."""
        b = self._slices[k]
        out = np.zeros(b.shape, bool)
        out[b.box] = b.data > 0.5
        return out

    def copy(self) -> "SliceObject":
        """An object of its own (the boxes are read-only, so they are shared)."""
        out = SliceObject(self.mask_only)
        out._slices = dict(self._slices)
        return out

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._slices.values())


#: diagnostics sink: the first-click study (evaluate/first_click.py) sets a list; None (nothing kept) otherwise
TRACE: list[dict] | None = None


def _note(**event) -> None:
    if TRACE is not None:
        TRACE.append(event)


class SliceObjects:
    """The model calls and objects of one `run` along the slicing axis `axis` (the fold is SliceStrategy's)."""

    def __init__(self, strategy: "SliceStrategy", axis: int, prompts: ModelPrompts, progress, cancel) -> None:
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
        #: the positive object being propagated (slice -> probability or mask), shown by `preview`
        self.growing: SliceObject | None = None
        #: preview(mask so far, bool [slices, rows, cols]) while positive objects propagate, at most every
        #: `preview_every_s` seconds, over the mask the object adds to (SliceStrategy sets both: `set_preview_base`)
        self.preview: PreviewCallback | None = None
        self._preview_base: Callable[[], np.ndarray] | None = None
        self._base: np.ndarray | bool | None = None  # the base, made once per `set_preview_base` (False: empty)
        self.preview_every_s = strategy.engine.preview_every_s
        self._shown_at: float | None = None  # the first preview comes at once: the clicked slice, decoded first

    # ---- small helpers -----------------------------------------------------------------------
    def voxel(self, point) -> tuple[int, int, int]:
        return tuple(int(v) for v in click_voxels(np.asarray(point, float)[self.order][None], self.shape)[0])

    def tick(self, message: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("segmentation cancelled")
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done / max(self.n, 1), 0.99), message)
        if self.preview is not None and self.growing is not None and \
                (self._shown_at is None or time.monotonic() - self._shown_at >= self.preview_every_s):
            self.show_preview()

    def set_preview_base(self, base: Callable[[], np.ndarray] | None) -> None:
        """What a positive object adds to from now on (bool [slices, rows, cols]; None: nothing); made only when
        a preview is shown, once until the next `set_preview_base` (the base does not change while objects walk)."""
        self._preview_base, self._base = base, None

    def show_preview(self) -> None:
        """The mask so far: what the growing object adds to the base (a new array the receiver may keep)."""
        if self._base is None:
            base = self._preview_base() if self._preview_base is not None else None
            self._base = base if base is not None and base.any() else False
        # over an empty base (a first click) fresh zeros: a copy would touch every page of a CT-sized mask
        shown = np.zeros(self.shape, bool) if self._base is False else self._base.copy()
        for k in self.growing:
            shown[k] |= self.growing.mask(k)
        self.preview(shown)
        self._shown_at = time.monotonic()

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
            obj = SliceObject(mask_only=False)
            mask = logits[0] > 0
            self.keep(obj, k, logits[0], mask)
            uniform = self.is_uniform_mask(k, mask)
            self.propagate(obj, k, mask, continues=uniform, holds_level=not uniform)
            self.refine(obj)
            return obj, k, mask
        return self.s.memo(self.key("box"), make)

    def click_object(self, k: int, r: int, c: int) -> tuple[SliceObject]:
        def make():
            obj = SliceObject(mask_only=True)  # only its mask is ever added (SliceStrategy.add)
            if not self.in_range(k):
                return (obj,)
            self.tick(f"click on slice {k}")
            found = self.click_anchor(k, r, c, smallest=False)
            if found is not None:
                self.keep(obj, k, found, found > 0)
                uniform = self.is_uniform(k, r, c, found > 0)
                continues = uniform and self.has_click_level(k, r, c, found > 0)
                self.propagate(obj, k, found > 0, uniform=uniform, continues=continues)
                self.refine(obj)
            return (obj,)
        return self.s.memo(self.key("click", k, r, c), make)

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
        p = _decided(p, mask)
        inside = self.inside_box()
        if inside is not None:
            p = np.where(inside, p, 0.0).astype(np.float32)
        obj[k] = p

    def inside_box(self) -> np.ndarray | None:
        """The pixels of the box's in-plane extent (bool [rows, cols]); None without a box."""
        within = self.plane_box()
        if within is None:
            return None
        r0, c0, r1, c1 = within
        inside = np.zeros(self.plane, bool)
        inside[r0:r1 + 1, c0:c1 + 1] = True
        return inside

    def band_width(self, masks: dict[int, np.ndarray]) -> int:
        """The appearance band's width (px) for an object: `appearance_band`, wider for a large one."""
        cfg = self.cfg
        areas = [int(m.sum()) for m in masks.values() if m.any()]
        if not areas:
            return cfg.appearance_band
        wide = int(round(cfg.appearance_band_share * float(np.sqrt(np.median(areas)))))
        return max(cfg.appearance_band, min(wide, cfg.appearance_band_max))

    def refine(self, obj: SliceObject) -> None:
        """The object's boundary re-decided by intensity in a thin band (engines/slice_appearance.py), within the
        box's in-plane extent; pixels it adds enter just above 0.5, pixels it drops leave just below."""
        cfg = self.cfg
        if cfg.appearance_band <= 0 or not obj:
            return
        masks = _ObjectMasks(obj)
        refined, check = refined_windows(_SliceImages(self, obj), masks, self.band_width(masks),
                                         cfg.appearance_separation)
        _note(kind="appearance", core_inside=check.core_inside, far_outside=check.far_outside, used=check.used)
        if not check.used:
            return
        inside = self.inside_box()
        for k in obj:
            mask = np.zeros(self.plane, bool)
            if k in refined:
                window, part = refined[k]
                mask[window] = part
            obj[k] = _decided(obj[k], mask if inside is None else mask & inside)

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
        source = {box: "box" for box in boxes}
        region = self.click_region(data.image01, r, c) if cfg.region_candidate else None
        if region is not None and region.any():
            # the similar-intensity region around the click: one more candidate (fitted to the region: not refitted)
            box = grow_box(bbox_2d(region), cfg.refit_margin, self.plane, within)
            if box not in source:
                boxes.append(box)
                source[box] = "region"

        def agrees(mask: np.ndarray) -> bool:  # the model's mask is the click's region (most of it)
            return bool((mask & region).sum() >= cfg.same_object * region.sum())

        final: list[tuple[np.ndarray, float, str]] = []
        before: dict[Box, tuple[np.ndarray, float, str]] = {}  # a refitted box -> the mask it was fitted to
        for round_ in range(cfg.click_rounds):
            if not boxes:
                break
            logits, ious = self.e.predict_boxes(data, np.asarray(boxes))
            grow = []
            for box, lg, io in zip(boxes, logits, ious):
                mask = lg > 0
                if not (mask[r, c] or (source[box] == "region" and agrees(mask))):
                    if box in before:  # the refit lost the click: the mask before it stands
                        final.append(before.pop(box))
                    continue  # lost the click: drop this candidate (the region's may pass it by: a vessel)
                new = grow_box(bbox_2d(mask), cfg.refit_margin, self.plane, within)
                moved = max(abs(a - b) for a, b in zip(new, box)) > 1
                if source[box] != "region" and round_ < cfg.click_rounds - 1 and moved and new not in grow:
                    grow.append(new)
                    source.setdefault(new, source[box])
                    before[new] = (lg, float(io), source[box])
                else:
                    final.append((lg, float(io), source[box]))
            boxes = grow
        scored = []
        for logits, iou, _ in final:
            mask = logits > 0
            agree = 1.0 if region is None or not region.any() else dice(mask, region)
            parts = (iou, _stability(logits), _edge(data.image01, mask),
                     _homogeneity(data.image01, mask, r, c, cfg.homogeneity_tolerance),
                     1.0 - cfg.region_weight + cfg.region_weight * agree)
            scored.append((float(np.prod(parts)), int(mask.sum()), logits, parts))
        if not scored:
            _note(kind="anchor", slice=k, candidates=[], winner=None)
            return None
        if not smallest:
            best = max(scored, key=lambda s: s[0])
        else:
            top = max(s[0] for s in scored)
            best = min((s for s in scored if s[0] >= cfg.negative_score_ratio * top), key=lambda s: s[1])
        _note(kind="anchor", slice=k, smallest=smallest, winner=next(n for n, s in enumerate(scored) if s is best),
              candidates=[(s[0], s[1], *s[3]) for s in scored], sources=[f[2] for f in final])
        return best[2]

    def click_region(self, img01: np.ndarray, r: int, c: int) -> np.ndarray:
        """The click's similar-intensity region on its slice (engines/slice_region.py)."""
        cfg = self.cfg
        level = level_at(img01, r, c, cfg.level_radius)
        return similar_region(img01, r, c, level, cfg.homogeneity_tolerance,
                              int(round(cfg.region_neck * max(self.plane))))

    def is_uniform(self, k: int, r: int, c: int, mask: np.ndarray) -> bool:
        """The anchor is the click's similar-intensity region (an organ of uniform intensity, e.g. a lung)."""
        if not self.cfg.region_candidate:
            return False
        region = self.click_region(self.e.slice_data(self.axis, k, self.cancel).image01, r, c)
        return region.any() and dice(mask, region) >= self.cfg.uniform_agreement

    def has_click_level(self, k: int, r: int, c: int, mask: np.ndarray) -> bool:
        """The mask has the intensity of the click's own 3 x 3 pixels (a click at an organ's edge may get the
        neighbour's mask: that mask may not be continued as the click's tissue)."""
        img = self.e.slice_data(self.axis, k, self.cancel).image01
        return abs(level_at(img, r, c, 1) - float(np.median(img[mask]))) < self.cfg.homogeneity_tolerance

    def is_uniform_mask(self, k: int, mask: np.ndarray) -> bool:
        """The mask is the similar-intensity region it lies in, within the box (an organ of uniform intensity: a
        box's lung)."""
        if not mask.any():
            return False
        img = self.e.slice_data(self.axis, k, self.cancel).image01
        region = similar_filled(img, mask, float(np.median(img[mask])), self.cfg.homogeneity_tolerance)
        inside = self.inside_box()
        return dice(mask, region if inside is None else region & inside) >= self.cfg.uniform_agreement

    def continuation(self, k: int, prev: np.ndarray, ref: float) -> np.ndarray | None:
        """Where the model's mask has turned into another tissue: the object's own intensity on slice k near the
        previous mask (within the box), never larger than it (else only its part inside the previous mask: a
        lung's base around the liver's dome, its apex); None when too little of it is left."""
        img = self.e.slice_data(self.axis, k, self.cancel).image01
        region = region_near(img, prev, ref, self.cfg.homogeneity_tolerance)
        inside = self.inside_box()
        if inside is not None:
            region &= inside
        if region.sum() > self.cfg.end_taper * prev.sum():
            region &= prev  # never larger: what of the intensity the previous mask also holds
        return region if region.sum() >= self.cfg.min_area else None

    def propagate(self, obj: dict, k0: int, mask0: np.ndarray, masks_only: bool = False,
                  adds_to: np.ndarray | None = None, uniform: bool = False, until=None,
                  continues: bool = False, holds_level: bool = False) -> None:
        """Walk from slice k0 both ways; each accepted slice goes into `obj` (logits kept as probability, or
        the bool mask with `masks_only`). With `adds_to` (the current mask) the walk stops where it adds nothing
        to it: a correction propagates only its change. A `uniform` object also stops where its mask leaks out of
        its intensity. `until(k, mask)`: True stops the walk before slice k (a correction's own end rule). An
        object that `continues` goes on by its own intensity where the model's mask has become another tissue
        (`continuation`)."""
        if not mask0.any():
            return
        ref = float(np.median(self.e.slice_data(self.axis, k0, self.cancel).image01[mask0]))
        # both ways in turn, a slice each: what is shown while the walk goes on (`preview`) grows around the click
        walks = [self._walk(obj, k0, mask0, step, ref, masks_only, adds_to, uniform, until, continues, holds_level)
                 for step in (+1, -1)]
        before = self.growing
        if not masks_only:
            self.growing = obj
        try:
            while walks:
                for walk in list(walks):
                    if next(walk, None) is None:
                        walks.remove(walk)
        finally:
            self.growing = before

    def _walk(self, obj: dict, k0: int, mask0: np.ndarray, step: int, ref: float, masks_only: bool,
              adds_to: np.ndarray | None, uniform: bool, until, continues: bool, holds_level: bool):
        """One direction of `propagate`, a slice per step (yields True after each slice it keeps)."""
        cfg = self.cfg
        within = self.plane_box()
        lenient = self.box is not None and cfg.box_keeps_walking
        prev, k = mask0, k0 + step
        why = "end"
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
            why = self.stop_reason(k, mask, prev, iou, ref, lenient, adds_to, uniform)
            retried = region = None
            # not inside a 3D box (measured: there it made corrective clicks cost up to 0.15 Dice)
            if why and why != "adds nothing" and cfg.retry_stops and self.box is None:
                retried = self.retry(k, prev, ref, box, within)
                if retried is not None and self.stop_reason(k, retried[1], prev, retried[2], ref,
                                                            lenient, adds_to, uniform):
                    retried = None
            if why and why not in ("empty", "adds nothing") and continues and cfg.uniform_continuation:
                region = self.continuation(k, prev, ref)
            # the retry's mask is the model's inside the object's intensity: where it has lost most of that
            # intensity (through many thin slices it would shrink slice by slice), the intensity goes on
            if region is not None and (retried is None or
                                       (retried[1] & region).sum() < cfg.uniform_inside * region.sum()):
                _note(kind="continued", slice=k, why=why)
                mask, why = region, ""
            elif retried is not None:
                _note(kind="retry", slice=k, why=why)
                (logits, mask, iou), why = retried, ""
            elif why.startswith("level") and holds_level and cfg.level_continuation:
                part = self.level_part(k, mask, prev, ref)
                if part is not None:
                    _note(kind="level part", slice=k, why=why)
                    mask, why = part, ""
            if why:
                break
            if until is not None and until(k, mask):
                why = "correction ends"
                break
            if masks_only:
                obj[k] = mask
            else:
                self.keep(obj, k, logits, mask)
            prev, k = mask, k + step
            yield True
        _note(kind="stop", start=k0, step=step, slice=k, why=why or "end")

    def level_part(self, k: int, mask: np.ndarray, prev: np.ndarray, ref: float) -> np.ndarray | None:
        """The part of the model's mask on slice k at the object's own level (the mask also took in a neighbour of
        another intensity: a body's mask its lungs), when what it leaves out lies `level_part_contrast` or more from
        that level and the part continues the previous slice's mask (most of it on that mask, at most `cut_taper`
        times its area); None otherwise."""
        img = self.e.slice_data(self.axis, k, self.cancel).image01
        part = mask & (np.abs(smoothed(img) - ref) < self.cfg.homogeneity_tolerance)
        area = int(part.sum())
        if area < self.cfg.min_area or area > self.cfg.cut_taper * prev.sum() or not (mask & ~part).any():
            return None
        if abs(float(np.median(img[mask & ~part])) - ref) < self.cfg.level_part_contrast:
            return None  # what it leaves out is no other tissue (the bone beside a vertebra's muscle)
        if (part & dilate(prev, 2)).sum() < self.cfg.cut_overlap * area:
            return None
        return part

    def retry(self, k: int, prev: np.ndarray, ref: float, box: Box,
              within: Box | None) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(logits, mask, IoU) on slice k prompted with the box of the region of the object's intensity that
        overlaps the previous mask (the neighbour's box held more than the object); the model's mask is kept
        where it agrees with that region. None when there is no such region."""
        data = self.e.slice_data(self.axis, k, self.cancel)
        region = region_near(data.image01, prev, ref, self.cfg.homogeneity_tolerance)
        if region.sum() < self.cfg.min_area:
            return None
        fit = grow_box(bbox_2d(region), self.cfg.box_margin, self.plane, within)
        logits, iou = self.predict(k, [fit])
        return logits[0], (logits[0] > 0) & region, float(iou[0])

    def stop_reason(self, k: int, mask: np.ndarray, prev: np.ndarray, iou: float, ref: float, lenient: bool,
                    adds_to: np.ndarray | None, uniform: bool = False) -> str:
        """Why propagation ends at slice k with this mask ("" when it goes on)."""
        cfg = self.cfg
        if mask.sum() < cfg.min_area:
            return "empty"
        if not lenient and iou < cfg.min_iou:
            return f"iou {iou:.2f}"
        if (mask & dilate(prev, 2)).sum() < cfg.min_overlap * mask.sum():
            return "no overlap"
        if not lenient:
            level = float(np.median(self.e.slice_data(self.axis, k, self.cancel).image01[mask]))
            if abs(level - ref) > cfg.max_level_change:
                return f"level {level - ref:+.2f}"  # another tissue: the object has ended
            if uniform:
                img = self.e.slice_data(self.axis, k, self.cancel).image01
                inside = float((mask & similar_filled(img, mask, ref, cfg.homogeneity_tolerance)).sum()) / mask.sum()
                if inside < cfg.uniform_inside:
                    return f"leak {inside:.2f}"
        if adds_to is not None and (mask & ~adds_to[k]).sum() < cfg.min_area:
            return "adds nothing"  # the correction has ended
        return ""


class _ObjectMasks(Mapping):
    """An object's masks, each made when asked (all held at once they were 55 MiB on a lung)."""

    def __init__(self, obj: SliceObject) -> None:
        self._obj = obj

    def __getitem__(self, k: int) -> np.ndarray:
        return self._obj.mask(k)

    def __iter__(self) -> Iterator[int]:
        return iter(self._obj)

    def __len__(self) -> int:
        return len(self._obj)


class _SliceImages(Mapping):
    """The normalised images of an object's slices, each read when asked (not all held at once: on a lung that
    would be a few hundred MiB)."""

    def __init__(self, walk: SliceObjects, slices: Iterable[int]) -> None:
        self._walk, self._slices = walk, list(slices)
        self._known = set(self._slices)

    def __getitem__(self, k: int) -> np.ndarray:
        if k not in self._known:
            raise KeyError(k)
        return self._walk.e.slice_data(self._walk.axis, k, self._walk.cancel).image01

    def __iter__(self) -> Iterator[int]:
        return iter(self._slices)

    def __len__(self) -> int:
        return len(self._slices)


def _decided(p: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Probabilities that agree with `mask`: above 0.5 inside it, below outside (the model's own value where it
    already agrees)."""
    return np.where(mask, np.maximum(p, 0.5 + 1e-3), np.minimum(p, 0.5 - 1e-3)).astype(np.float32)


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
    inside = img[near][mask[near]]  # the click's neighbours inside the candidate (a region's may pass the click by)
    ref = float(np.median(inside if inside.size else img[near]))
    return float(np.mean(np.abs(img[mask] - ref) < tolerance)) + 1e-3
