"""InteractiveSession: volumes in, masks out, with prompts, undo/redo, cancel and progress.

The session is the only place that knows both the volume's geometry and the model's space:
prompts come in as (i, j, k) indices (ITK order) or LPS / RAS points, are converted to model voxel
coordinates (d, h, w) through `preprocess.ModelSpace`, run through an engine (CropEngine for a
CropModel, SliceEngine for a SliceModel), and the model-space probability is mapped back exactly
onto the volume's grid and thresholded at 0.5. See docs/SESSION.md.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .boxed import BoxedArray
from .engines.base import ModelPrompts, Preparable, Prefetching, PreviewCallback, Previewing
from .errors import CancelledError, InputError
from .preprocess import ModelSpace
from .volume import Volume

ProgressCallback = Callable[[float, str], None]
POINT_KINDS = ("positive", "negative")


@dataclass(frozen=True)
class Prompt:
    """One prompt, in the volume's continuous (i, j, k) index coordinates.

    kind: "positive", "negative" or "box"; `ijk` is the point (a box's low corner); `ijk_end` is a
    box's high corner (None for points); `view_axis` the ijk axis normal to the view of a click.
    """

    kind: str
    ijk: tuple[float, float, float]
    ijk_end: tuple[float, float, float] | None = None
    view_axis: int | None = None


@dataclass(frozen=True)
class _State:
    prompts: tuple[Prompt, ...] = ()
    seed: np.ndarray | None = None  # bool [k, j, i] on the volume grid
    mask: np.ndarray | None = None  # bool [k, j, i]
    #: float32 [k, j, i], held as the box of its nonzero voxels (the slice engine's is zero off the mask)
    probability: BoxedArray | None = None
    view_axis: int | None = None


#: voxels per block when a probability is quantised for the history (a few MiB of float temporaries, not the
#: volume's size: 2 x 300 MiB on a 512 x 512 x 300 CT)
QUANTIZE_BLOCK_VOXELS = 1 << 20


def _quantized(prob: np.ndarray) -> np.ndarray:
    """round(clip(prob, 0, 1) * 255) as uint8, computed a block of slices at a time."""
    out = np.empty(prob.shape, np.uint8)
    step = max(1, QUANTIZE_BLOCK_VOXELS // max(1, int(np.prod(prob.shape[1:]))))
    for k in range(0, prob.shape[0], step):
        out[k:k + step] = np.round(np.clip(prob[k:k + step], 0, 1) * 255)
    return out


def _dequantized(prob_u8: np.ndarray) -> np.ndarray:
    prob = prob_u8.astype(np.float32)
    prob /= 255.0  # in place: no second array of the box's size
    return prob


@dataclass(frozen=True)
class _Stored:
    """A state in the undo / redo history, compact: the mask bit-packed (exact), the probability in
    1/255 steps (uint8); the seed is shared (read-only)."""

    prompts: tuple[Prompt, ...]
    seed: np.ndarray | None
    shape: tuple[int, int, int]
    mask_bits: np.ndarray
    probability_u8: BoxedArray | None
    view_axis: int | None

    @classmethod
    def pack(cls, state: _State) -> "_Stored":
        mask = state.mask
        prob = state.probability
        return cls(state.prompts, state.seed, tuple(mask.shape), np.packbits(mask, axis=None),
                   None if prob is None else prob.map(_quantized), state.view_axis)

    def unpack(self) -> _State:
        count = int(np.prod(self.shape))
        mask = np.unpackbits(self.mask_bits, count=count).astype(bool).reshape(self.shape)
        mask.setflags(write=False)
        prob = None if self.probability_u8 is None else self.probability_u8.map(_dequantized)
        return _State(self.prompts, self.seed, mask, prob, self.view_axis)


def _without_box(prompts: tuple[Prompt, ...]) -> tuple[Prompt, ...]:
    return tuple(p for p in prompts if p.kind != "box")


def make_engine(model):
    """The engine a model declares (`model.engine`): SlabEngine ("slab", Med-SA), CropEngine ("crop",
    3DSAM-adapter), SliceEngine ("slices", LiteMedSAM). Fixed-class models are refused."""
    from .errors import SAMAdapt3DError
    from .families.base import SegmentationModel
    from .models import DEFAULT_MODEL

    if not isinstance(model, SegmentationModel):
        raise TypeError(f"no engine for a {type(model).__name__}: expected a samadapt3d SegmentationModel")
    if model.multi_class:
        names = model.class_names
        raise SAMAdapt3DError(
            f"the {model.family} model segments fixed classes "
            f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}) without prompts; "
            f"an interactive session needs a prompted model (e.g. {DEFAULT_MODEL} or 3DSAM-adapter); "
            "run fixed-class models with `samadapt3d auto`")
    if model.engine == "slab":
        from .engines.slab import SlabEngine  # prompted slab models (Med-SA) choose their own slices

        return SlabEngine(model)
    if model.engine == "crop":
        from .engines.crop import CropEngine

        return CropEngine(model)
    if model.engine == "slices":
        from .engines.slices import SliceEngine  # written with LiteMedSAM; imported only when needed

        return SliceEngine(model)
    raise TypeError(f"no engine {model.engine!r} for a {type(model).__name__}: expected one of crop, slices, slab")


def require_image(volume: Volume | None) -> Volume:
    """The session's image; the user error when none was set (the local and the remote session say the same)."""
    if volume is None:
        raise InputError("no image: call set_image first")
    return volume


def check_finite(array: np.ndarray, what: str = "the image") -> None:
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            nan = int(np.count_nonzero(np.isnan(array)))
            raise InputError(f"{what} has {bad} non-finite voxels ({nan} NaN, {bad - nan} Inf); "
                             "fill or mask them before segmenting")


def _triple(values, what: str) -> np.ndarray:
    try:
        point = np.asarray(values, dtype=np.float64).reshape(3)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} needs 3 coordinates, got {values!r}") from exc
    if not np.all(np.isfinite(point)):
        raise InputError(f"{what} needs 3 finite coordinates, got {values!r}")
    return point


def point_to_index(volume: Volume, coord, space: str = "ijk") -> np.ndarray:
    """Continuous (i, j, k) of a point given in `space` ("ijk", "lps", "ras"); InputError when its
    nearest voxel is outside the image."""
    point = _triple(coord, "a point")
    ijk = volume.to_index(point, space).reshape(3)
    if not volume.contains_index(ijk)[0]:
        where = "" if space == "ijk" else f" (index {tuple(round(float(v), 2) for v in ijk)})"
        raise InputError(f"point {tuple(float(v) for v in point)} in {space.upper()}{where} is outside "
                         f"the image of size {volume.size_ijk} (i, j, k)")
    return ijk


def box_to_index(volume: Volume, corner_a, corner_b, space: str = "ijk") -> tuple[tuple, tuple]:
    """A box's (lo, hi) inclusive voxel corners in (i, j, k), clipped to the image. Corners given in
    LPS/RAS are converted to indices first (the box is axis-aligned in index space). InputError when
    it misses the image or is empty: it must span more than one voxel along at least two axes."""
    corners = [volume.to_index(_triple(c, "a box corner"), space).reshape(3) for c in (corner_a, corner_b)]
    lo = np.floor(np.minimum(*corners) + 0.5)
    hi = np.floor(np.maximum(*corners) + 0.5)
    size = np.asarray(volume.size_ijk)
    if np.any(hi < 0) or np.any(lo > size - 1):
        raise InputError(f"box {tuple(lo)}..{tuple(hi)} (i, j, k) lies outside the image of size {tuple(size)}")
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    if np.count_nonzero(hi > lo) < 2:
        raise InputError(f"empty box {tuple(int(v) for v in lo)}..{tuple(int(v) for v in hi)} (i, j, k): "
                         "a box must span more than one voxel along at least two axes")
    return tuple(float(v) for v in lo), tuple(float(v) for v in hi)


class InteractiveSession:
    """Prompted segmentation of one volume at a time with one model.

    All masks are bool arrays in the volume's array order [k, j, i]. Every prompt change runs the
    model and returns the new mask; a failure or a cancel leaves the session as it was.
    """

    def __init__(self, model, progress: ProgressCallback | None = None, engine=None, max_undo: int = 32,
                 preview: PreviewCallback | None = None) -> None:
        """`preview`: called with the mask so far while a prompt runs, when the engine can show one (`Previewing`:
        the slice engine: the clicked slice at once, then at most every couple of seconds); the call's return value
        stays the result."""
        self.model = model
        self.progress = progress
        self.preview = preview
        self.engine = engine if engine is not None else make_engine(model)
        self.max_undo = int(max_undo)
        self.volume: Volume | None = None
        self.space: ModelSpace | None = None
        self._state = _State()
        self._undo: list[_Stored] = []
        self._redo: list[_Stored] = []
        self._lock = threading.RLock()
        self._cancel_lock = threading.Lock()
        self._cancel_event: threading.Event | None = None

    # ---- image ------------------------------------------------------------------------------
    def set_image(self, volume: Volume) -> None:
        if not isinstance(volume, Volume):
            raise InputError(f"set_image expects a samadapt3d Volume, got {type(volume).__name__}")
        if volume.array.ndim != 3:
            raise InputError(f"a volume must be 3D, got {volume.array.ndim} dimensions")
        if volume.array.dtype == np.bool_ or not np.issubdtype(volume.array.dtype, np.number):
            if volume.array.dtype != np.bool_:
                raise InputError(f"image voxels must be numbers, got dtype {volume.array.dtype}")
        if np.iscomplexobj(volume.array):
            raise InputError("complex-valued images are not supported")
        check_finite(volume.array)
        with self._lock:
            self._report(0.0, "preparing image")
            space = ModelSpace(volume, self.model.preset)
            self._report(0.5, "preparing model")
            # the voxel size (mm, (D, H, W)) lets a slice engine default to the acquisition axis
            # (engines/slices.py `acquisition_axis`)
            spacing_dhw = tuple(float(v) for v in np.asarray(space.grid.spacing, dtype=np.float64)[::-1])
            self.engine.set_image(space.image, spacing=spacing_dhw)
            self.volume, self.space = volume, space
            self._state = self._empty_state()
            self._undo.clear()
            self._redo.clear()
            self._report(1.0, "image ready")

    def prepare(self, background: bool = False) -> int:
        """Do ahead of the first prompt what does not depend on it (a slice engine embeds every slice along the
        acquisition axis), so the first click is fast; cancellable with `cancel`. Returns the units of work done
        (0 for engines with nothing to prepare, e.g. a crop engine, whose crops follow the clicks).

        `background=True` returns at once (0) and does that work in a background thread instead, where the engine
        can (`Prefetching`: a slice engine embeds outward from the middle slice, then from each click's slice;
        a click pauses it and embeds what it needs first), so a large CT is usable at once; stopped by the next
        `set_image`."""
        self._require_image()
        if background:
            if isinstance(self.engine, Prefetching):
                with self._lock:
                    self.engine.prefetch()
            return 0
        if not isinstance(self.engine, Preparable):
            return 0
        with self._lock, self._cancellable() as event:
            return int(self.engine.warm_up(self._report, event))

    @contextlib.contextmanager
    def _cancellable(self):
        """The event that `cancel` sets while a computation runs (one at a time, under self._lock)."""
        event = threading.Event()
        with self._cancel_lock:
            self._cancel_event = event
        try:
            yield event
        finally:
            with self._cancel_lock:
                self._cancel_event = None

    def _empty_state(self) -> _State:
        shape = self.volume.array.shape
        mask = np.zeros(shape, dtype=bool)
        mask.setflags(write=False)
        return _State(mask=mask)

    def _require_image(self) -> Volume:
        return require_image(self.volume)

    # ---- read-only state --------------------------------------------------------------------
    @property
    def mask(self) -> np.ndarray:
        volume = self._require_image()
        mask = self._state.mask
        return mask if mask is not None else np.zeros(volume.array.shape, dtype=bool)

    @property
    def probability(self) -> np.ndarray | None:
        """float32 [k, j, i] (a new read-only array each call), or None."""
        boxed = self._state.probability
        if boxed is None:
            return None
        prob = boxed.full()
        prob.setflags(write=False)
        return prob

    @property
    def has_probability(self) -> bool:
        """Whether `probability` is an array (asking costs nothing; `probability` builds the full array)."""
        return self._state.probability is not None

    @property
    def prompts(self) -> list[Prompt]:
        return list(self._state.prompts)

    @property
    def seed_mask(self) -> np.ndarray | None:
        return self._state.seed

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # ---- prompts ----------------------------------------------------------------------------
    def to_index(self, coord, space: str = "ijk") -> np.ndarray:
        """Continuous (i, j, k) of one point given in `space`; InputError when outside the image."""
        return point_to_index(self._require_image(), coord, space)

    def add_point(self, coord, positive: bool = True, space: str = "ijk", view_axis: int | None = None) -> np.ndarray:
        ijk = self.to_index(coord, space)
        if view_axis is not None and view_axis not in (0, 1, 2):
            raise InputError(f"view_axis must be 0, 1, 2 (an ijk axis) or None, got {view_axis!r}")
        prompt = Prompt("positive" if positive else "negative", tuple(float(v) for v in ijk), None, view_axis)
        return self._change(lambda state: (state.prompts + (prompt,), state.seed), view_axis=view_axis)

    def box_to_index(self, corner_a, corner_b, space: str = "ijk") -> tuple[tuple, tuple]:
        """A box's (lo, hi) inclusive voxel corners (i, j, k); see `box_to_index`."""
        return box_to_index(self._require_image(), corner_a, corner_b, space)

    def set_box(self, corner_a, corner_b, space: str = "ijk") -> np.ndarray:
        lo, hi = self.box_to_index(corner_a, corner_b, space)
        return self._change(lambda state: (_without_box(state.prompts) + (Prompt("box", lo, hi),), state.seed))

    def clear_box(self) -> np.ndarray:
        def build(state: _State):
            prompts = _without_box(state.prompts)
            return None if len(prompts) == len(state.prompts) else (prompts, state.seed)

        return self._change(build)

    def remove_prompt(self, index: int) -> np.ndarray:
        def build(state: _State):
            prompts = list(state.prompts)
            if not isinstance(index, (int, np.integer)) or not -len(prompts) <= index < len(prompts):
                raise InputError(f"no prompt {index!r}: the session has {len(prompts)} prompts")
            del prompts[index]
            return tuple(prompts), state.seed

        return self._change(build)

    def set_seed_mask(self, mask_kji: np.ndarray | None) -> np.ndarray:
        """Start from an existing segment: it becomes the mask, prompts are cleared, and later prompts
        refine it (positives add to it, negatives cut from it). None drops the seed. Undoable."""
        volume = self._require_image()
        seed = None
        if mask_kji is not None:
            seed = np.asarray(mask_kji)
            if seed.shape != volume.array.shape:
                raise InputError(f"seed mask shape {seed.shape} does not match the image's {volume.array.shape} "
                                 "[k, j, i]")
            check_finite(seed, "the seed mask")
            seed = np.ascontiguousarray(seed > 0.5 if seed.dtype != np.bool_ else seed)
            seed.setflags(write=False)
        return self._change(lambda state: ((), seed))

    def reset(self) -> np.ndarray:
        """Drop prompts and seed (undoable)."""
        self._require_image()

        def build(state: _State):
            empty = not state.prompts and state.seed is None and (state.mask is None or not state.mask.any())
            return None if empty else ((), None)

        return self._change(build)

    def segment(self, positive: Sequence = (), negative: Sequence = (), box=None, space: str = "ijk",
                seed: np.ndarray | None = None) -> np.ndarray:
        """One shot: replace all prompts with these and return the mask (one model run)."""
        self._require_image()
        prompts = [Prompt("positive", tuple(map(float, self.to_index(p, space)))) for p in positive]
        prompts += [Prompt("negative", tuple(map(float, self.to_index(p, space)))) for p in negative]
        if box is not None:
            lo, hi = self.box_to_index(box[0], box[1], space)
            prompts.append(Prompt("box", lo, hi))
        seed_arr = None
        if seed is not None:
            seed_arr = np.asarray(seed) > 0.5 if np.asarray(seed).dtype != np.bool_ else np.asarray(seed)
            if seed_arr.shape != self.volume.array.shape:
                raise InputError(f"seed mask shape {seed_arr.shape} does not match the image's "
                                 f"{self.volume.array.shape}")
        prompts = tuple(prompts)
        return self._change(lambda state: (prompts, state.seed if seed_arr is None else seed_arr))

    # ---- undo / redo ------------------------------------------------------------------------
    def undo(self) -> np.ndarray:
        """Back to the state before the last change (no model run). The probability of a restored
        state is kept in 1/255 steps; the mask is exact."""
        with self._lock:
            if self._undo:
                self._redo.append(_Stored.pack(self._state))
                self._state = self._undo.pop().unpack()
            return self.mask

    def redo(self) -> np.ndarray:
        with self._lock:
            if self._redo:
                self._undo.append(_Stored.pack(self._state))
                self._state = self._redo.pop().unpack()
            return self.mask

    # ---- cancel -----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel the running computation, if any (safe from any thread); it raises CancelledError
        in the thread that started it and leaves the session unchanged."""
        with self._cancel_lock:
            if self._cancel_event is not None:
                self._cancel_event.set()

    @property
    def busy(self) -> bool:
        return self._cancel_event is not None

    # ---- the one place that runs the model --------------------------------------------------
    def _change(self, build: Callable[[_State], tuple[tuple[Prompt, ...], np.ndarray | None] | None],
                view_axis: int | None = None) -> np.ndarray:
        """Run `build(current state) -> (prompts, seed)` (None: nothing to change) and the model, all under the
        lock: the new prompt list is made from the state the change applies to, so concurrent calls from
        several threads are serialised and none is lost."""
        self._require_image()
        with self._lock:
            change = build(self._state)
            if change is None:
                return self.mask
            prompts, seed = change
            with self._cancellable() as event:
                new_state = self._compute(prompts, seed, view_axis, event)
            self._undo.append(_Stored.pack(self._state))
            del self._undo[: max(0, len(self._undo) - self.max_undo)]
            self._redo.clear()
            self._state = new_state
            return self.mask

    def _compute(self, prompts, seed, view_axis, cancel: threading.Event) -> _State:
        volume, space = self.volume, self.space
        has_model_prompt = any(p.kind in ("positive", "box") for p in prompts) or (
            seed is not None and any(p.kind == "negative" for p in prompts))
        if not has_model_prompt:
            mask = np.zeros(volume.array.shape, dtype=bool) if seed is None else seed
            mask.setflags(write=False)
            prob = None if seed is None else BoxedArray.of(mask).map(lambda m: m.astype(np.float32))
            return _State(prompts, seed, mask, prob, view_axis)
        model_prompts = self.model_prompts(prompts, view_axis)
        model_seed = None if seed is None else space.mask_to_model(seed)
        self._report(0.0, "segmenting")

        def engine_progress(fraction: float, message: str) -> None:
            if cancel.is_set():
                raise CancelledError("segmentation cancelled")
            self._report(0.05 + 0.85 * float(fraction), message)

        preview = self.preview
        if preview is not None and isinstance(self.engine, Previewing):
            def engine_preview(mask_model: np.ndarray) -> None:
                if cancel.is_set():
                    raise CancelledError("segmentation cancelled")
                shown = space.mask_from_model(mask_model)
                shown.setflags(write=False)
                preview(shown)

            prob_model = self.engine.run_previewing(model_prompts, model_seed, engine_progress, cancel,
                                                    engine_preview)
        else:
            prob_model = self.engine.run(model_prompts, model_seed, engine_progress, cancel)
        if cancel.is_set():
            raise CancelledError("segmentation cancelled")
        self._report(0.9, "mapping the result back to the image")
        probability = space.boxed_from_model(prob_model, linear=True)
        del prob_model  # the engine may then reuse its array for the next prompt (engines/slice_strategy.py)
        mask = probability.map(lambda p: p > 0.5).full()
        mask.setflags(write=False)
        if cancel.is_set():
            raise CancelledError("segmentation cancelled")
        self._report(1.0, "done")
        return _State(prompts, seed, mask, probability, view_axis)

    def model_prompts(self, prompts: Sequence[Prompt], view_axis: int | None = None) -> ModelPrompts:
        """Session prompts -> model voxel coordinates (d, h, w)."""
        space = self.space
        pos = [p.ijk for p in prompts if p.kind == "positive"]
        neg = [p.ijk for p in prompts if p.kind == "negative"]
        box = None
        for p in prompts:
            if p.kind == "box":
                lo, hi = np.asarray(p.ijk), np.asarray(p.ijk_end)
                corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)]
                                    for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
                dhw = space.index_to_model(corners)
                box = (dhw.min(axis=0), dhw.max(axis=0))
        return ModelPrompts(
            positive=space.index_to_model(pos) if pos else np.zeros((0, 3)),
            negative=space.index_to_model(neg) if neg else np.zeros((0, 3)),
            box=box,
            view_axis=space.axis_to_model(view_axis),
            order=tuple(p.kind for p in prompts if p.kind in POINT_KINDS),
        )

    def _report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, max(0.0, float(fraction))), message)
