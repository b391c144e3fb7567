"""MRML scene <-> samadapt3d: volumes, prompts, masks and segments.

This file imports only MRML / VTK classes (through `slicer` and `vtk`), never qt, ctk, slicer.app or the GUI
parts of slicer.util, so that CI tests it headless against a real MRML scene from the PyPI package `slicer-core`
(`Testing/test_scene_bridge.py`). The Slicer module (SAMAdapt3D.py) uses it for every conversion: the widget holds
no geometry.

Geometry: samadapt3d.volume.Volume is THE definition of IJK / LPS / RAS (array [k, j, i], index (i, j, k)).
`volume_from_node` builds it from the node's IJKToRAS matrix composed with its (linear) parent transforms, so the
Volume's RAS is Slicer's *world* RAS, the space of markups' `...World` positions. All RAS <-> IJK conversions then
go through the Volume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from samadapt3d.errors import InputError
from samadapt3d.volume import LPS_TO_RAS, Volume

from SAMAdapt3DSlicerLib import segment_io


def check_slicer_module() -> None:
    """Fail clearly when `import slicer` found something other than Slicer (or slicer-core)."""
    if not hasattr(slicer, "vtkMRMLScene") or not hasattr(slicer, "vtkSlicerSegmentationsModuleLogic"):
        where = getattr(slicer, "__file__", "?")
        raise ImportError(
            f"`import slicer` gave {where}, which has no MRML classes: this is not 3D Slicer nor the PyPI package "
            "slicer-core. The unrelated PyPI package `slicer` (pulled in e.g. by shap) shadows it; run "
            "`pip uninstall slicer && pip install --force-reinstall slicer-core`."
        )


check_slicer_module()

# Segment Editor masking modes (vtkMRMLSegmentationNode.EditAllowed*) and overwrite modes (vtkMRMLSegmentEditorNode)
MASK_EVERYWHERE = slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
MASK_INSIDE_ALL = slicer.vtkMRMLSegmentationNode.EditAllowedInsideAllSegments
MASK_INSIDE_VISIBLE = slicer.vtkMRMLSegmentationNode.EditAllowedInsideVisibleSegments
MASK_OUTSIDE_ALL = slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments
MASK_OUTSIDE_VISIBLE = slicer.vtkMRMLSegmentationNode.EditAllowedOutsideVisibleSegments
MASK_INSIDE_SEGMENT = slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment
OVERWRITE_ALL = slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments
OVERWRITE_VISIBLE = slicer.vtkMRMLSegmentEditorNode.OverwriteVisibleSegments
OVERWRITE_NONE = slicer.vtkMRMLSegmentEditorNode.OverwriteNone


# ---- matrices ---------------------------------------------------------------------------------------------------
def _np_from_vtk_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _vtk_matrix_from_np(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def node_to_world_matrix(node) -> np.ndarray:
    """4x4 node -> world (RAS) matrix of a transformable node; an error for non-linear parent transforms."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"'{node.GetName()}' is under a non-linear transform ('{parent.GetName()}'); harden the transform first "
            "(Data module: right-click the transform, 'Harden transform')"
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return _np_from_vtk_matrix(matrix)


def ijk_to_world_ras_matrix(volume_node) -> np.ndarray:
    """The volume's IJK -> world RAS matrix: IJKToRAS composed with the parent transforms."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return node_to_world_matrix(volume_node) @ _np_from_vtk_matrix(matrix)


# ---- volumes -----------------------------------------------------------------------------------------------------
def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing (i, j, k), origin LPS, direction LPS columns) of an IJK -> RAS matrix."""
    ijk_to_lps = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64)[:3, :]  # diag(-1,-1,1) is its own inverse
    spacing = np.linalg.norm(ijk_to_lps[:, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"the volume's IJK to RAS matrix is degenerate: {np.asarray(ijk_to_ras).tolist()}")
    return spacing, ijk_to_lps[:, 3].copy(), ijk_to_lps[:, :3] / spacing[None, :]


def volume_from_node(volume_node, copy: bool = True) -> Volume:
    """A samadapt3d Volume of a scalar volume node: voxels [k, j, i] and world geometry (LPS)."""
    if volume_node is None:
        raise InputError("no input volume is selected")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume '{volume_node.GetName()}' has no voxels")
    scalars = image.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"volume '{volume_node.GetName()}' has {scalars.GetNumberOfComponents()} components per voxel "
            "(e.g. a colour image); convert it to a scalar volume first"
        )
    dims = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])
    if copy:
        array = array.copy()
    spacing, origin, direction = geometry_from_ijk_to_ras(ijk_to_world_ras_matrix(volume_node))
    return Volume(array, spacing=spacing, origin=origin, direction=direction)


def volume_to_node(volume: Volume, scene, name: str = "Volume", labelmap: bool = False, array=None):
    """Add a scalar (or labelmap) volume node with the Volume's voxels and geometry (used by tests and demos)."""
    data = np.ascontiguousarray(volume.array if array is None else array)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    k, j, i = data.shape
    image.SetDimensions(i, j, k)
    vtk_array = numpy_support.numpy_to_vtk(data.reshape(-1), deep=True)
    image.GetPointData().SetScalars(vtk_array)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_vtk_matrix_from_np(volume.ijk_to_ras_matrix()))
    return node


# ---- prompts -----------------------------------------------------------------------------------------------------
@dataclass
class PointPrompt:
    ras: np.ndarray  # world RAS
    ijk: np.ndarray  # continuous (i, j, k) in the volume
    positive: bool
    inside: bool
    label: str = ""


@dataclass
class BoxPrompt:
    ijk_min: np.ndarray  # corners (i, j, k) clipped to the volume (continuous)
    ijk_max: np.ndarray
    inside: bool  # False when the box does not overlap the volume at all
    clipped: bool = False  # True when part of the box was outside and was cut off


@dataclass
class Prompts:
    points: list = field(default_factory=list)
    box: BoxPrompt | None = None
    #: messages about prompts that were ignored (outside the volume, ...)
    ignored: list = field(default_factory=list)

    @property
    def usable_points(self) -> list:
        return [p for p in self.points if p.inside]

    def key(self) -> tuple:
        """Hashable summary of the usable prompts, to skip re-running an unchanged request."""
        pts = tuple((tuple(np.round(p.ijk, 3)), p.positive) for p in self.usable_points)
        box = None
        if self.box is not None and self.box.inside:
            box = (tuple(np.round(self.box.ijk_min, 3)), tuple(np.round(self.box.ijk_max, 3)))
        return pts, box


def _is_defined(markups_node, index: int) -> bool:
    return markups_node.GetNthControlPointPositionStatus(index) == slicer.vtkMRMLMarkupsNode.PositionDefined


def points_from_markups(markups_node, volume: Volume, positive: bool) -> list[PointPrompt]:
    """The defined control points of a markups node as point prompts (world RAS -> volume IJK)."""
    out = []
    if markups_node is None:
        return out
    position = [0.0, 0.0, 0.0]
    for index in range(markups_node.GetNumberOfControlPoints()):
        if not _is_defined(markups_node, index):
            continue  # being placed (preview) or skipped
        markups_node.GetNthControlPointPositionWorld(index, position)
        ras = np.array(position, dtype=np.float64)
        ijk = volume.physical_to_index(ras, "ras")
        inside = bool(volume.contains_index(ijk)[0])
        out.append(PointPrompt(ras, ijk, positive, inside, markups_node.GetNthControlPointLabel(index)))
    return out


def box_from_roi(roi_node, volume: Volume) -> BoxPrompt | None:
    """An ROI node as an index-space box: the IJK bounding box of its 8 world corners, clipped to the volume."""
    if roi_node is None or roi_node.GetNumberOfControlPoints() < 1 or not _is_defined(roi_node, 0):
        return None
    size = np.array(roi_node.GetSize(), dtype=np.float64)
    object_to_world = _np_from_vtk_matrix(roi_node.GetObjectToWorldMatrix())
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    corners_object = np.c_[signs * size / 2.0, np.ones(8)]
    corners_ras = (object_to_world @ corners_object.T).T[:, :3]
    corners_ijk = volume.physical_to_index(corners_ras, "ras")
    lo, hi = corners_ijk.min(axis=0), corners_ijk.max(axis=0)
    limit = np.asarray(volume.size_ijk, dtype=np.float64) - 1.0
    inside = bool(np.all(hi >= -0.5) and np.all(lo <= limit + 0.5))
    clo, chi = np.clip(lo, 0.0, limit), np.clip(hi, 0.0, limit)
    clipped = bool(np.any(clo != lo) or np.any(chi != hi))
    return BoxPrompt(clo, chi, inside, clipped)


def collect_prompts(volume: Volume, positive_node=None, negative_node=None, roi_node=None) -> Prompts:
    """All prompts of the scene's prompt nodes; those outside the volume are listed in `ignored`, not used."""
    prompts = Prompts()
    for node, positive in ((positive_node, True), (negative_node, False)):
        for point in points_from_markups(node, volume, positive):
            prompts.points.append(point)
            if not point.inside:
                kind = "positive" if positive else "negative"
                r, a, s = point.ras
                prompts.ignored.append(
                    f"{kind} point {point.label or ''} at RAS ({r:.1f}, {a:.1f}, {s:.1f}) is outside the volume; ignored"
                )
    box = box_from_roi(roi_node, volume)
    if box is not None:
        prompts.box = box
        if not box.inside:
            prompts.ignored.append("the box does not overlap the volume; ignored")
        elif box.clipped:
            prompts.ignored.append("the box reaches outside the volume; cut to the volume")
    return prompts


def view_axis_from_normal(normal_ras, volume: Volume) -> int | None:
    """The IJK axis (0 = i, 1 = j, 2 = k) closest to a view normal in RAS; None if no normal."""
    if normal_ras is None:
        return None
    normal = np.asarray(normal_ras, dtype=np.float64).reshape(3)
    norm = np.linalg.norm(normal)
    if norm == 0 or not np.isfinite(norm):
        return None
    axes = volume.ijk_to_ras_matrix()[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0)[None, :]
    return int(np.argmax(np.abs(axes.T @ (normal / norm))))


def view_axis_from_slice_node(slice_node, volume: Volume) -> int | None:
    """The IJK axis normal to a slice view (vtkMRMLSliceNode), None for anything else (e.g. a 3D view)."""
    if slice_node is None or not slice_node.IsA("vtkMRMLSliceNode"):
        return None
    slice_to_ras = _np_from_vtk_matrix(slice_node.GetSliceToRAS())
    return view_axis_from_normal(slice_to_ras[:3, 2], volume)


# ---- segments ----------------------------------------------------------------------------------------------------
# Reads and writes go through segment_io, which works on each segment's own grid and adds no scene node.
def ensure_reference_geometry(segmentation_node, volume_node) -> None:
    """Give a segmentation without a geometry the volume's (as the Segment Editor does on first edit)."""
    geometry = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    if not geometry:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)


def add_segment(segmentation_node, name: str, color=None) -> str:
    """A new empty segment; returns its ID. Call SetMRMLScene on a segmentations logic before (see tests)."""
    segmentation = segmentation_node.GetSegmentation()
    if color is None:
        return segmentation.AddEmptySegment("", name)
    return segmentation.AddEmptySegment("", name, list(color))


def segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """A segment as a bool array [k, j, i] on the volume's voxels (nearest sample of its own grid)."""
    if not segment_id or segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"segment {segment_id!r} not found in '{segmentation_node.GetName()}'")
    return segment_io.read_on_volume(segmentation_node, segment_id, segment_io.volume_image(volume_node, segmentation_node))


def editable_mask(
    segmentation_node, volume_node, segment_id: str, mask_mode=MASK_EVERYWHERE, mask_segment_id: str = "",
    intensity_range=None,
) -> np.ndarray:
    """Where the Segment Editor would let segment `segment_id` change (bool [k, j, i] on the volume's voxels), from
    Slicer's own vtkMRMLSegmentationNode.GenerateEditMask (mask mode, visible segments, intensity range)."""
    volume = segment_io.volume_image(volume_node, segmentation_node)
    lattice = segment_io.Lattice(segment_io._matrix(volume), tuple(volume.GetExtent()))
    return segment_io.editable_on(segmentation_node, segment_id, lattice, volume, mask_mode, mask_segment_id,
                                  intensity_range)


def visible_segment_ids(segmentation_node) -> list[str]:
    display = segmentation_node.GetDisplayNode()
    ids = list(segmentation_node.GetSegmentation().GetSegmentIDs())
    if display is None:
        return ids
    if not display.GetVisibility():
        return []
    return [sid for sid in ids if display.GetSegmentVisibility(sid)]


@dataclass
class WriteResult:
    segment_id: str
    voxels: int  # voxels in the segment after the write (on its own grid)
    changed: int  # voxels of the segment that changed
    blocked: int  # voxels the model wanted but the masking settings did not allow
    overwritten: dict = field(default_factory=dict)  # other segment id -> voxels removed from it


#: a float mask is a probability: set where it is above one half (as the session thresholds)
MASK_THRESHOLD = 0.5


def _as_bool_mask(mask) -> np.ndarray:
    """bool as is; integers: non-zero; floats: > MASK_THRESHOLD, NaN / Inf refused (astype(bool) would set them)."""
    array = np.asarray(mask)
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"the mask has {bad} non-finite values (NaN or Inf): refusing to write it")
        return array > MASK_THRESHOLD
    if array.dtype.kind in "iu":
        return array != 0
    raise InputError(f"a mask must be bool, integer or float, got {array.dtype}")


def write_segment_mask(
    segmentation_node, segment_id: str, mask: np.ndarray, volume_node, mask_mode=MASK_EVERYWHERE,
    mask_segment_id: str = "", overwrite_mode=OVERWRITE_NONE, intensity_range=None,
) -> WriteResult:
    """Set segment `segment_id` to `mask` (bool [k, j, i] on the volume's voxels), the Segment Editor's way:
    only inside the editable area (mask mode / intensity range) does the segment change, outside it keeps its voxels;
    other segments lose the new voxels only if the overwrite mode allows (all / visible), otherwise they are
    untouched (overlap allowed, as Segment Editor's "allow overlap"). Works on each segment's own grid, so a
    segmentation finer, coarser or oblique relative to the volume keeps every other segment voxel for voxel."""
    mask = _as_bool_mask(mask)
    _check_on_volume(mask, volume_node, "mask")
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is None:
        raise InputError(f"segment {segment_id!r} not found in '{segmentation_node.GetName()}'")
    ensure_reference_geometry(segmentation_node, volume_node)
    if overwrite_mode == OVERWRITE_ALL:
        targets = [sid for sid in segmentation.GetSegmentIDs() if sid != segment_id]
    elif overwrite_mode == OVERWRITE_VISIBLE:
        targets = [sid for sid in visible_segment_ids(segmentation_node) if sid != segment_id]
    else:
        targets = []
    volume = segment_io.volume_image(volume_node, segmentation_node)
    change = segment_io.apply_mask(segmentation_node, segment_id, mask, volume, mask_mode, mask_segment_id, targets,
                                   intensity_range)
    return WriteResult(segment_id, change.voxels, change.changed, change.blocked, change.overwritten)


def _check_on_volume(array: np.ndarray, volume_node, what: str) -> None:
    """An array [k, j, i] meant for the volume's voxels must have their shape."""
    dims = volume_node.GetImageData().GetDimensions()
    if array.shape != (dims[2], dims[1], dims[0]):
        raise InputError(f"{what} shape {array.shape} does not match the volume's {dims[::-1]} [k, j, i]")


# ---- multi-class models: one segment per class -----------------------------------------------------------------
def segment_id_by_name(segmentation_node, name: str) -> str | None:
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    return segment_id or None


def snapshot_segments(segmentation_node, volume_node, segment_ids) -> dict:
    """{segment id: OwnGrid} of existing segments (their voxels on their own grids), to restore them exactly."""
    return {sid: segment_io.own_grid(segmentation_node, sid) for sid in segment_ids}


def write_class_segments(segmentation_node, volume_node, labels: np.ndarray, names, colors=None) -> dict:
    """A label map [k, j, i] (0 = background, n = names[n - 1]) as one segment per class, matched by name: an
    existing segment of that name gets the class's voxels (replacing its own where the volume grid sees a change),
    a missing one is created unless the class is empty. Other segments are untouched, voxel for voxel on their
    own grids (they may overlap). Returns {name: (segment id, voxels, created)}."""
    labels = np.asarray(labels)
    _check_on_volume(labels, volume_node, "label map")
    if labels.max(initial=0) > len(names) or labels.min(initial=0) < 0:
        raise InputError(f"label values run from {labels.min()} to {labels.max()} but there are {len(names)} class names")
    ensure_reference_geometry(segmentation_node, volume_node)
    volume = segment_io.volume_image(volume_node, segmentation_node)
    written = {}
    was_modifying = segmentation_node.StartModify()
    try:
        for n, name in enumerate(names):
            mask = labels == n + 1
            segment_id = segment_id_by_name(segmentation_node, name)
            created = segment_id is None
            if created and not mask.any():
                continue
            if created:
                segment_id = add_segment(segmentation_node, name, None if colors is None else colors[n])
            change = segment_io.apply_mask(segmentation_node, segment_id, mask, volume, MASK_EVERYWHERE)
            written[name] = (segment_id, change.voxels, created)
    finally:
        segmentation_node.EndModify(was_modifying)
    return written


def restore_segments(segmentation_node, volume_node, snapshot: dict, created_ids=()) -> None:
    """Undo `write_class_segments`: put back the snapshot's voxels (on their own grids) and remove the segments it
    created."""
    was_modifying = segmentation_node.StartModify()
    try:
        for sid in created_ids:
            if segmentation_node.GetSegmentation().GetSegment(sid) is not None:
                segmentation_node.GetSegmentation().RemoveSegment(sid)
        for sid, own in snapshot.items():
            if segmentation_node.GetSegmentation().GetSegment(sid) is not None:
                segment_io.restore_own_grid(segmentation_node, sid, own)
    finally:
        segmentation_node.EndModify(was_modifying)
