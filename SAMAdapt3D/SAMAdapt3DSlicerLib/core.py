"""The module's engine room, without Qt: scene -> request (main thread), request -> mask (worker thread),
mask -> segment (main thread). logic.py adds the worker thread and the GUI around it; tests drive this
class directly against a slicer-core scene.

The scene's markups are the truth for prompts: every change (placed, moved, deleted) is turned into the list of
prompts the session should have; when that list is the session's plus one point, the point is added (incremental, the
session keeps its encoder cache); otherwise the session is re-run with the whole list. Undo / redo go through the
session and the markups are rewritten from the session's prompts so that what is shown is what was used.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from SAMAdapt3DSlicerLib import scene_bridge as bridge

#: models the module offers without a file (the library's embedded default first)
DEFAULT_MODEL = "litemedsam"
#: model families that are slow without a GPU (the widget warns when they run on CPU)
HEAVY_FAMILIES = ("sam3d_adapter", "3dsam-adapter", "ma_sam", "ma-sam", "med_sa", "med-sa", "samed")


@dataclass
class Request:
    """What one run needs, read from the scene on the main thread."""
    volume: object  # samadapt3d Volume
    volume_key: tuple
    prompts: bridge.Prompts
    view_axis: int | None = None
    seed: np.ndarray | None = None  # only when (re)starting on a segment
    action: str = "sync"  # "sync" | "undo" | "redo" | "reset"
    target: tuple = ()  # (segmentation node ID, segment ID)
    messages: list = field(default_factory=list)


def volume_key(volume_node) -> tuple:
    """Changes when the volume node, its voxels or its geometry change."""
    image = volume_node.GetImageData()
    return (volume_node.GetID(), image.GetMTime() if image is not None else 0,
            tuple(np.round(bridge.ijk_to_world_ras_matrix(volume_node).reshape(-1), 6)))


def is_multi_class(model) -> bool:
    return bool(getattr(model, "class_names", None))


def is_heavy(model) -> bool:
    family = str(getattr(model, "family", "")).lower()
    return any(name in family for name in HEAVY_FAMILIES)


class Segmenter:
    """One model, one session, one target segment at a time."""

    def __init__(self, progress=None):
        self.progress = progress
        self.model = None
        self.model_key = None
        self.session = None
        self.volume_key = None
        self.target = None  # (segmentation node ID, segment ID) the session is working on
        self.lock = threading.Lock()
        self._cancel_event = threading.Event()  # for multi-class runs (sessions have their own)

    # ---- model (worker thread) ----------------------------------------------------------------------------
    def load_model(self, name_or_path: str, device: str = "auto", sam_checkpoint: str | None = None):
        import samadapt3d

        key = (str(name_or_path), device, sam_checkpoint)
        if self.model is not None and self.model_key == key:
            return self.model
        self._report(0.0, f"loading model {name_or_path} on {device}")
        model = samadapt3d.load_model(name_or_path, sam_checkpoint=sam_checkpoint, device=device)
        self.set_model(model, key)
        self._report(1.0, "model ready")
        return model

    def set_model(self, model, key=None) -> None:
        """Use an already built model (a new session: prompts and undo history start afresh). A multi-class model
        (SAMed, MA-SAM) has no session: it segments every class at once (`compute_classes`)."""
        from samadapt3d.session import InteractiveSession

        with self.lock:
            self.model, self.model_key = model, key
            self.session = None if is_multi_class(model) else InteractiveSession(model, progress=self.progress)
            self.volume_key = None
            self.target = None
            self._cancel_event = threading.Event()

    def cancel(self) -> None:
        session = self.session
        if session is not None:
            session.cancel()
        self._cancel_event.set()

    # ---- scene -> request (main thread) -------------------------------------------------------------------
    def make_request(self, volume_node, segmentation_node, segment_id, positive_node=None, negative_node=None,
                     roi_node=None, view_axis=None, action="sync") -> Request:
        volume = bridge.volume_from_node(volume_node)
        prompts = bridge.collect_prompts(volume, positive_node, negative_node, roi_node)
        target = (segmentation_node.GetID(), segment_id)
        request = Request(volume, volume_key(volume_node), prompts, view_axis, action=action, target=target)
        request.messages.extend(prompts.ignored)
        if self.needs_restart(request):
            # refining an existing segment: the session starts from its current voxels
            seed = bridge.segment_mask(segmentation_node, segment_id, volume_node)
            request.seed = seed if seed.any() else None
        return request

    def needs_restart(self, request: Request) -> bool:
        return self.volume_key != request.volume_key or self.target != request.target

    # ---- request -> mask (worker thread) ------------------------------------------------------------------
    def compute(self, request: Request) -> np.ndarray | None:
        """Run the session; returns the new mask, or None when nothing changed. Raises samadapt3d errors."""
        if self.session is None:
            if self.model is not None and is_multi_class(self.model):
                from samadapt3d.errors import SAMAdapt3DError

                raise SAMAdapt3DError(
                    f"the {self.model.family} model segments fixed classes ({', '.join(self.model.class_names)}) "
                    "without clicks: use 'Segment all classes'")
            raise RuntimeError("no model loaded")
        with self.lock:
            session = self.session
            if self.needs_restart(request):
                if not self._use_volume(request.volume, request.volume_key):
                    session.reset()
                if request.seed is not None:
                    session.set_seed_mask(request.seed)
                self.target = request.target
            if request.action == "undo":
                return session.undo() if session.can_undo else None
            if request.action == "redo":
                return session.redo() if session.can_redo else None
            if request.action == "reset":  # clear prompts: back to the segment as it was before them
                seed = session.seed_mask
                return session.set_seed_mask(seed) if seed is not None else session.reset()
            return self._sync(session, request)

    @staticmethod
    def _wanted(request: Request) -> list:
        wanted = [("positive" if p.positive else "negative", tuple(float(v) for v in p.ijk), None)
                  for p in request.prompts.usable_points]
        box = request.prompts.box
        if box is not None and box.inside:
            wanted.append(("box", tuple(float(v) for v in box.ijk_min), tuple(float(v) for v in box.ijk_max)))
        return wanted

    def _sync(self, session, request: Request):
        wanted = self._wanted(request)
        current = [(p.kind, tuple(p.ijk), None if p.ijk_end is None else tuple(p.ijk_end)) for p in session.prompts]
        if _same(current, wanted):
            return None
        points_now = [w for w in current if w[0] != "box"]
        points_wanted = [w for w in wanted if w[0] != "box"]
        box_now = [w for w in current if w[0] == "box"]
        box_wanted = [w for w in wanted if w[0] == "box"]
        if _same(box_now, box_wanted) and len(points_wanted) == len(points_now) + 1 and \
                _same(points_now, points_wanted[: len(points_now)]):
            kind, ijk, _ = points_wanted[-1]
            return session.add_point(ijk, positive=(kind == "positive"), space="ijk", view_axis=request.view_axis)
        if _same(points_now, points_wanted) and box_wanted:
            _, lo, hi = box_wanted[0]
            return session.set_box(lo, hi, space="ijk")
        if _same(points_now, points_wanted) and not box_wanted:
            return session.clear_box()
        if not wanted:
            return session.set_seed_mask(session.seed_mask) if session.seed_mask is not None else session.reset()
        # a moved or deleted prompt: re-run with the whole list, keeping the seed (refinement)
        positive = [w[1] for w in points_wanted if w[0] == "positive"]
        negative = [w[1] for w in points_wanted if w[0] == "negative"]
        box = (box_wanted[0][1], box_wanted[0][2]) if box_wanted else None
        return session.segment(positive, negative, box, space="ijk", seed=session.seed_mask)

    def prepare(self, volume, key) -> int:
        """Worker thread, before any click on this volume: give the session the image and let it precompute
        (a slice model embeds every slice). Returns the units of work done; 0 when there is nothing to prepare
        (multi-class models, crop models) or it was done already. The next click on this volume reuses it."""
        if self.session is None:
            return 0
        with self.lock:
            self._use_volume(volume, key)
            return self.session.prepare()

    def _use_volume(self, volume, key) -> bool:
        """Give the session this volume unless it has it already (same key); True when it was new. Call under
        self.lock. A new volume drops the target segment (its session state went with the old image)."""
        if self.volume_key == key:
            return False
        self.volume_key = None  # stays None if set_image fails, so the next request retries
        self.session.set_image(volume)
        self.volume_key, self.target = key, None
        return True

    def compute_classes(self, volume):
        """Worker thread: a multi-class model's label map [k, j, i] on the volume's grid and its class names."""
        from samadapt3d.automatic import segment_all_classes

        if self.model is None:
            raise RuntimeError("no model loaded")
        self._cancel_event = threading.Event()
        return segment_all_classes(self.model, volume, progress=self.progress, cancel=self._cancel_event)

    # ---- mask -> scene (main thread) ----------------------------------------------------------------------
    def session_prompts_ras(self):
        """The session's prompts as world RAS, to rewrite the markups after undo / redo:
        (positive points, negative points, box corners or None)."""
        session = self.session
        if session is None or session.volume is None:
            return [], [], None
        volume = session.volume
        pos = [volume.index_to_physical(p.ijk, "ras") for p in session.prompts if p.kind == "positive"]
        neg = [volume.index_to_physical(p.ijk, "ras") for p in session.prompts if p.kind == "negative"]
        box = None
        for p in session.prompts:
            if p.kind == "box":
                box = (np.asarray(p.ijk, float), np.asarray(p.ijk_end, float))
        return pos, neg, box

    def _report(self, fraction, message):
        if self.progress is not None:
            self.progress(fraction, message)


def _same(a, b, tol: float = 1e-3) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x[0] != y[0] or not np.allclose(x[1], y[1], atol=tol):
            return False
        if (x[2] is None) != (y[2] is None) or (x[2] is not None and not np.allclose(x[2], y[2], atol=tol)):
            return False
    return True


def write_result(mask, volume_node, segmentation_node, segment_id, editor_settings=None):
    """Write a mask to the segment with the Segment Editor's masking / overwrite settings (a dict with
    mask_mode, mask_segment_id, overwrite_mode, intensity_range, or a vtkMRMLSegmentEditorNode)."""
    settings = dict(mask_mode=bridge.MASK_EVERYWHERE, mask_segment_id="", overwrite_mode=bridge.OVERWRITE_NONE,
                    intensity_range=None)
    if editor_settings is not None and hasattr(editor_settings, "GetMaskMode"):
        node = editor_settings
        settings.update(mask_mode=node.GetMaskMode(), mask_segment_id=node.GetMaskSegmentID() or "",
                        overwrite_mode=node.GetOverwriteMode())
        if node.GetSourceVolumeIntensityMask():
            settings["intensity_range"] = tuple(node.GetSourceVolumeIntensityMaskRange())
    elif editor_settings:
        settings.update(editor_settings)
    return bridge.write_segment_mask(segmentation_node, segment_id, mask, volume_node, **settings)


@dataclass
class ClassWrite:
    """What `write_classes` did, enough to undo it."""
    written: dict  # class name -> (segment id, voxels, created)
    snapshot: dict  # segment id -> mask before the write (segments that existed)

    @property
    def created(self) -> list:
        return [sid for sid, _, created in self.written.values() if created]

    def summary(self) -> str:
        found = [f"{name} ({voxels})" for name, (_, voxels, _) in self.written.items() if voxels]
        empty = [name for name, (_, voxels, _) in self.written.items() if not voxels]
        text = f"{len(found)} class segment(s): " + ", ".join(found) if found else "No class found in this volume."
        return text + (f"; emptied: {', '.join(empty)}" if empty else "")


def write_classes(labels, names, volume_node, segmentation_node) -> ClassWrite:
    """One segment per class name (created or replaced by name), remembering the old voxels for `undo_classes`."""
    from samadapt3d.automatic import class_colour

    existing = [sid for sid in (bridge.segment_id_by_name(segmentation_node, n) for n in names) if sid]
    snapshot = bridge.snapshot_segments(segmentation_node, volume_node, existing)
    colors = [class_colour(n) for n in range(len(names))]
    written = bridge.write_class_segments(segmentation_node, volume_node, labels, names, colors)
    return ClassWrite(written, snapshot)


def undo_classes(write: ClassWrite, volume_node, segmentation_node) -> None:
    bridge.restore_segments(segmentation_node, volume_node, write.snapshot, write.created)
