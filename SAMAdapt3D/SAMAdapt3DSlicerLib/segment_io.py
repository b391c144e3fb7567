"""Segments <-> numpy without damaging anything: every segment is read and written on ITS OWN grid.

A segmentation's segments live on labelmap layers whose grid (the segmentation's reference geometry, or the layer's
own when it was imported on another one) may be finer, coarser or oblique relative to the volume the model sees.
Slicer's SetBinaryLabelmapToSegment resamples the whole shared layer onto the modifier's grid when the grids differ
(vtkSegmentationModifier, MODE_MERGE_MASK), and a replace copies the modifier's grid into the segment. So a modifier
on the volume's grid would resample other segments (a 1-voxel sheet on a finer grid vanishes). Here the modifier is
always built on the edited segment's own lattice, and only the voxels the model changed (as seen on the volume grid)
change there; the other segments are compared voxel for voxel on their own lattices before and after.

No scene node is created (the old export through a temporary labelmap node leaked display and colour nodes): reads
go through vtkOrientedImageData and vtkOrientedImageDataResample only. MRML / VTK only, no qt, no slicer.app.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from samadapt3d.errors import InputError

_Resample = slicer.vtkOrientedImageDataResample
#: tolerance when deciding two lattices are the same (matrix entries, mm)
LATTICE_TOLERANCE = 1e-4
#: voxels of margin when the volume's footprint is mapped onto a segment's lattice (nearest-neighbour rounding)
FOOTPRINT_MARGIN = 1


# ---- oriented images ----------------------------------------------------------------------------------------------
def _matrix(image) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _is_empty_extent(extent) -> bool:
    return extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]


def _voxels(image) -> np.ndarray:
    """The scalars of an image as an array [k, j, i] over its extent (a view)."""
    ext = image.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    if _is_empty_extent(ext) or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return np.zeros((0, 0, 0), np.uint8)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def _new_lattice_image(matrix: np.ndarray, extent, array: np.ndarray | None = None):
    """An unsigned-char vtkOrientedImageData on a lattice (ImageToWorld matrix, extent), zeros or `array`."""
    image = slicer.vtkOrientedImageData()
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(matrix[r, c]))
    image.SetExtent(*[int(v) for v in extent])
    image.SetImageToWorldMatrix(m)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    view = _voxels(image)
    view[:] = 0 if array is None else np.asarray(array, dtype=np.uint8).reshape(view.shape)
    return image


def _same_lattice(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two ImageToWorld matrices describe one lattice (same axes and spacing, origins a whole voxel apart)."""
    if not np.allclose(a[:3, :3], b[:3, :3], atol=LATTICE_TOLERANCE):
        return False
    offset = np.linalg.solve(a[:3, :3], b[:3, 3] - a[:3, 3])
    return bool(np.allclose(offset, np.round(offset), atol=LATTICE_TOLERANCE))


def _resample(image, matrix: np.ndarray, extent) -> np.ndarray:
    """Nearest-neighbour samples of `image` (any lattice) at the voxels of (matrix, extent), as uint8 [k, j, i]."""
    reference = _new_lattice_image(matrix, extent)
    if _is_empty_extent(image.GetExtent()):
        return _voxels(reference).copy()
    out = slicer.vtkOrientedImageData()
    _Resample.ResampleOrientedImageToReferenceOrientedImage(image, reference, out, False, False)
    return _voxels(out).astype(np.uint8, copy=True).reshape(_voxels(reference).shape)


def _index_offset(from_matrix: np.ndarray, to_matrix: np.ndarray) -> np.ndarray:
    """Whole-voxel offset (i, j, k) of index 0 of `from_matrix` in the lattice of `to_matrix` (same lattice)."""
    return np.round(np.linalg.solve(to_matrix[:3, :3], from_matrix[:3, 3] - to_matrix[:3, 3])).astype(int)


def _copy_into(target_ext, target: np.ndarray, source_ext, source: np.ndarray, offset) -> None:
    """target[...] = source on their overlap; extents in each image's own index, offset = source index 0 in target."""
    lo = [max(target_ext[2 * a], source_ext[2 * a] + offset[a]) for a in range(3)]
    hi = [min(target_ext[2 * a + 1], source_ext[2 * a + 1] + offset[a]) for a in range(3)]
    if any(lo[a] > hi[a] for a in range(3)):
        return
    t = tuple(slice(lo[a] - target_ext[2 * a], hi[a] - target_ext[2 * a] + 1) for a in (2, 1, 0))
    s = tuple(slice(lo[a] - offset[a] - source_ext[2 * a], hi[a] - offset[a] - source_ext[2 * a] + 1) for a in (2, 1, 0))
    target[t] = source[s]


# ---- lattices --------------------------------------------------------------------------------------------------------
@dataclass
class Lattice:
    """A grid to read / write one segment on: ImageToWorld matrix (segmentation coordinates) and extent."""
    matrix: np.ndarray
    extent: tuple

    @property
    def shape(self) -> tuple:
        e = self.extent
        return (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)


def volume_image(volume_node, segmentation_node):
    """The volume's voxels and geometry in the segmentation's coordinates (through linear parent transforms)."""
    return slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        volume_node, segmentation_node.GetParentTransformNode())


def _layer(segmentation_node, segment_id):
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segment {segment_id!r} not found in '{segmentation_node.GetName()}'")
    return segment, segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)


def reference_geometry(segmentation_node):
    """The segmentation's reference geometry (vtkOrientedImageData without voxels), None when it has none."""
    text = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not text:
        return None
    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, image, False):
        return None
    return image


def _footprint(volume, matrix: np.ndarray) -> list:
    """The extent on `matrix`'s lattice that covers the volume's voxels (their boxes, plus a margin)."""
    ext = volume.GetExtent()
    corners = np.array([[ext[0] + i * (ext[1] - ext[0] + 1), ext[2] + j * (ext[3] - ext[2] + 1),
                         ext[4] + k * (ext[5] - ext[4] + 1), 1.0] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    corners[:, :3] -= 0.5  # voxel boxes: from index - 0.5 to index + 0.5
    ijk = (np.linalg.inv(matrix) @ _matrix(volume) @ corners.T).T[:, :3]
    lo = np.floor(ijk.min(axis=0)).astype(int) - FOOTPRINT_MARGIN
    hi = np.ceil(ijk.max(axis=0)).astype(int) + FOOTPRINT_MARGIN
    return [int(v) for a in range(3) for v in (lo[a], hi[a])]


def segment_lattice(segmentation_node, segment_id, cover) -> Lattice:
    """The grid segment `segment_id` lives on: its layer's when it has voxels, else the reference geometry (the
    volume's when there is none); its extent covers `cover` (an oriented image: the volume, or the box that changes)
    and the segment's own voxels, so a replace on it keeps every voxel of the segment outside `cover`."""
    _, layer = _layer(segmentation_node, segment_id)
    own = _own_extent(segmentation_node, segment_id)
    reference = reference_geometry(segmentation_node)
    if own is not None:
        matrix = _matrix(layer)
    elif reference is not None:
        matrix = _matrix(reference)
    else:
        matrix = _matrix(cover)
    extent = _footprint(cover, matrix)
    if reference is not None and _same_lattice(matrix, _matrix(reference)):
        # like the Segment Editor: edits stay inside the reference geometry's box
        offset = _index_offset(_matrix(reference), matrix)
        rext = reference.GetExtent()
        for a in range(3):
            extent[2 * a] = max(extent[2 * a], rext[2 * a] + offset[a])
            extent[2 * a + 1] = min(extent[2 * a + 1], rext[2 * a + 1] + offset[a])
    if own is not None:
        for a in range(3):
            extent[2 * a], extent[2 * a + 1] = min(extent[2 * a], own[2 * a]), max(extent[2 * a + 1], own[2 * a + 1])
    return Lattice(matrix, tuple(extent))


def _own_extent(segmentation_node, segment_id):
    """The bounding box (extent, in its layer's index) of the segment's own voxels; None when it has none. A shared
    layer's extent covers all its segments, so the box is found from the segment's label value."""
    image = _binary(segmentation_node, segment_id)
    voxels = _voxels(image)
    if not voxels.any():
        return None
    ext = image.GetExtent()
    out = []
    for axis, a in ((2, 0), (1, 1), (0, 2)):  # numpy axis of i, j, k
        used = np.flatnonzero(voxels.any(axis=tuple(x for x in range(3) if x != axis)))
        out += [ext[2 * a] + int(used[0]), ext[2 * a] + int(used[-1])]
    return out


def _cover(volume, changed: np.ndarray):
    """The box of the volume's voxels where `changed` (bool [k, j, i]) is set, as a geometry-only oriented image."""
    image = slicer.vtkOrientedImageData()
    where = [np.flatnonzero(changed.any(axis=tuple(x for x in range(3) if x != axis))) for axis in (2, 1, 0)]
    ext = volume.GetExtent()
    image.SetExtent(*[int(v) for a in range(3) for v in (ext[2 * a] + where[a][0], ext[2 * a] + where[a][-1])])
    m = vtk.vtkMatrix4x4()
    volume.GetImageToWorldMatrix(m)
    image.SetImageToWorldMatrix(m)
    return image


# ---- reading ---------------------------------------------------------------------------------------------------------
def _binary(segmentation_node, segment_id):
    """The segment alone as a 0/1 image on its layer's lattice (its label value picked out of a shared layer)."""
    _layer(segmentation_node, segment_id)
    image = slicer.vtkOrientedImageData()
    if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image):
        raise InputError(f"segment {segment_id!r} of '{segmentation_node.GetName()}' has no binary labelmap")
    return image


def read_on(segmentation_node, segment_id, lattice: Lattice) -> np.ndarray:
    """Segment `segment_id` as bool [k, j, i] on `lattice` (exact copy on its own lattice, nearest otherwise)."""
    image = _binary(segmentation_node, segment_id)
    out = np.zeros(lattice.shape, bool)
    if _is_empty_extent(image.GetExtent()):
        return out
    if _same_lattice(_matrix(image), lattice.matrix):
        _copy_into(lattice.extent, out, image.GetExtent(), _voxels(image) != 0,
                   _index_offset(_matrix(image), lattice.matrix))
        return out
    return _resample(image, lattice.matrix, lattice.extent) != 0


def read_on_volume(segmentation_node, segment_id, volume) -> np.ndarray:
    """Segment `segment_id` as bool [k, j, i] on the volume's voxels (`volume` from `volume_image`)."""
    return read_on(segmentation_node, segment_id, Lattice(_matrix(volume), tuple(volume.GetExtent())))


def to_lattice(array: np.ndarray, volume, lattice: Lattice) -> np.ndarray:
    """A bool array [k, j, i] on the volume's voxels, sampled (nearest) at the voxels of `lattice`."""
    source = _new_lattice_image(_matrix(volume), volume.GetExtent(), array)
    if _same_lattice(_matrix(volume), lattice.matrix):
        out = np.zeros(lattice.shape, bool)
        _copy_into(lattice.extent, out, volume.GetExtent(), np.asarray(array, bool),
                   _index_offset(_matrix(volume), lattice.matrix))
        return out
    return _resample(source, lattice.matrix, lattice.extent) != 0


# ---- own-grid snapshots: "unchanged" means voxel for voxel on the segment's own grid -------------------------------
@dataclass
class OwnGrid:
    """A segment's voxels on its own lattice, cropped to their bounding box (a canonical form: two segments hold the
    same voxels on the same lattice exactly when their OwnGrids are equal)."""
    axes: np.ndarray  # 3x3 ImageToWorld
    corner: np.ndarray  # world position of the bounding box's first voxel
    voxels: np.ndarray  # bool [k, j, i], cropped

    def same_as(self, other: "OwnGrid") -> bool:
        if not self.voxels.any() and not other.voxels.any():
            return True
        return (self.voxels.shape == other.voxels.shape and np.array_equal(self.voxels, other.voxels)
                and np.allclose(self.axes, other.axes, atol=LATTICE_TOLERANCE)
                and np.allclose(self.corner, other.corner, atol=LATTICE_TOLERANCE))

    @property
    def count(self) -> int:
        return int(self.voxels.sum())


def own_grid(segmentation_node, segment_id) -> OwnGrid:
    image = _binary(segmentation_node, segment_id)
    matrix = _matrix(image)
    voxels = _voxels(image) != 0
    if not voxels.any():
        return OwnGrid(matrix[:3, :3], np.zeros(3), np.zeros((0, 0, 0), bool))
    where = np.argwhere(voxels)
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    ext = image.GetExtent()
    first = np.array([lo[2] + ext[0], lo[1] + ext[2], lo[0] + ext[4], 1.0])
    return OwnGrid(matrix[:3, :3], (matrix @ first)[:3], voxels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy())


# ---- writing ---------------------------------------------------------------------------------------------------------
def write_on(segmentation_node, segment_id, array: np.ndarray, lattice: Lattice) -> None:
    """Replace segment `segment_id` by `array` (bool on `lattice`, which must cover all its current voxels)."""
    image = _new_lattice_image(lattice.matrix, lattice.extent, array)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        image.GetExtent(), False, [])
    if not ok:
        raise InputError(f"cannot write segment {segment_id!r} of '{segmentation_node.GetName()}'")


def editable_on(segmentation_node, segment_id, lattice: Lattice, volume, mask_mode, mask_segment_id="",
                intensity_range=None) -> np.ndarray:
    """Where the Segment Editor lets `segment_id` change, bool on `lattice` (Slicer's GenerateEditMask)."""
    reference = _new_lattice_image(lattice.matrix, lattice.extent)
    mask_image = slicer.vtkOrientedImageData()
    args = [mask_image, int(mask_mode), reference, segment_id or "", mask_segment_id or ""]
    if intensity_range is not None:
        args += [volume, [float(intensity_range[0]), float(intensity_range[1])]]
    if not segmentation_node.GenerateEditMask(*args):
        raise InputError("cannot compute the editable area from the masking settings")
    forbidden = np.zeros(lattice.shape, bool)
    if not _is_empty_extent(mask_image.GetExtent()) and mask_image.GetPointData().GetScalars() is not None:
        _copy_into(lattice.extent, forbidden, mask_image.GetExtent(), _voxels(mask_image) != 0, (0, 0, 0))
    return ~forbidden


@dataclass
class SegmentChange:
    """What one safe write did, counted on the edited segment's own grid."""
    voxels: int  # voxels of the segment after the write
    changed: int  # voxels of the segment that changed
    blocked: int  # voxels the model wanted but the masking settings did not allow
    overwritten: dict = field(default_factory=dict)  # other segment id -> voxels removed from it


def apply_mask(segmentation_node, segment_id, mask: np.ndarray, volume, mask_mode, mask_segment_id="",
               overwrite_ids=(), intensity_range=None) -> SegmentChange:
    """Set `segment_id` to the model's `mask` (bool [k, j, i] on the volume) on the segment's own grid: only where
    the mask differs from the segment as the volume grid sees it, and only where the masking settings allow. The
    segments in `overwrite_ids` lose the added voxels (on their own grids); every other segment is verified
    unchanged voxel for voxel on its own grid."""
    mask = np.asarray(mask, bool)
    others = [sid for sid in segmentation_node.GetSegmentation().GetSegmentIDs() if sid != segment_id]
    old_seen = read_on_volume(segmentation_node, segment_id, volume)
    changed_seen = mask != old_seen
    if not changed_seen.any():  # nothing the volume grid can see changes: the segment stays as it is
        own = _own_extent(segmentation_node, segment_id)
        count = 0 if own is None else own_grid(segmentation_node, segment_id).count
        return SegmentChange(count, 0, 0)
    before = {sid: own_grid(segmentation_node, sid) for sid in others}
    # work only around what changes (and the segment itself): a segmentation grid finer than the volume is large
    lattice = segment_lattice(segmentation_node, segment_id, _cover(volume, changed_seen))
    differs = to_lattice(changed_seen, volume, lattice)
    wanted = to_lattice(mask, volume, lattice)
    old = read_on(segmentation_node, segment_id, lattice)
    allowed = editable_on(segmentation_node, segment_id, lattice, volume, mask_mode, mask_segment_id, intensity_range)
    new = np.where(differs & allowed, wanted, old)
    added = new & ~old
    change = SegmentChange(int(new.sum()), int((new != old).sum()), int((differs & wanted & ~allowed & ~old).sum()))
    was_modifying = segmentation_node.StartModify()
    try:
        if change.changed:
            write_on(segmentation_node, segment_id, new, lattice)
        added_image = _new_lattice_image(lattice.matrix, lattice.extent, added)
        for sid in overwrite_ids:
            if sid == segment_id or not added.any():
                continue
            own = segment_lattice(segmentation_node, sid, added_image)
            current = read_on(segmentation_node, sid, own)
            lost = current & (_resample(added_image, own.matrix, own.extent) != 0)
            if lost.any():
                write_on(segmentation_node, sid, current & ~lost, own)
                change.overwritten[sid] = int(lost.sum())
        damaged = [sid for sid in others if sid not in change.overwritten
                   and not own_grid(segmentation_node, sid).same_as(before[sid])]
    finally:
        segmentation_node.EndModify(was_modifying)
    if damaged:  # a bug here, never the user's problem: say so loudly rather than keep a damaged segmentation
        raise InputError(f"internal error: writing {segment_id!r} changed segment(s) {damaged}; use Ctrl+Z")
    return change


def restore_own_grid(segmentation_node, segment_id, snapshot: OwnGrid) -> None:
    """Put a segment back to an `own_grid` snapshot, exactly, on the snapshot's lattice."""
    if not snapshot.voxels.any():
        segmentation_node.GetSegmentation().ClearSegment(segment_id)
        return
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = snapshot.axes, snapshot.corner
    k, j, i = snapshot.voxels.shape
    extent = [0, i - 1, 0, j - 1, 0, k - 1]
    current = _binary(segmentation_node, segment_id)
    if not _is_empty_extent(current.GetExtent()) and _same_lattice(_matrix(current), matrix):
        offset = _index_offset(_matrix(current), matrix)  # the replace must cover today's voxels too
        cext = current.GetExtent()
        for a in range(3):
            extent[2 * a] = min(extent[2 * a], cext[2 * a] + offset[a])
            extent[2 * a + 1] = max(extent[2 * a + 1], cext[2 * a + 1] + offset[a])
    lattice = Lattice(matrix, tuple(extent))
    array = np.zeros(lattice.shape, bool)
    _copy_into(lattice.extent, array, (0, i - 1, 0, j - 1, 0, k - 1), snapshot.voxels, (0, 0, 0))
    write_on(segmentation_node, segment_id, array, lattice)
