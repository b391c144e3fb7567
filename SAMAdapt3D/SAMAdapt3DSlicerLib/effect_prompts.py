"""The Segment Editor effect's Qt-free parts: the editor's images <-> samadapt3d volumes and masks, prompt markups
-> prompts, mouse gestures -> points and boxes. MRML / VTK / numpy only (tested headless on slicer-core).

Geometry: the effect works on the editor's `sourceVolumeImageData()` (the source volume resampled to the
segmentation's reference geometry, as Threshold and every other effect does) and writes on the grid of
`defaultModifierLabelmap()` (the same reference geometry), so the mask lands voxel for voxel and Slicer's own
masking / overwrite / undo apply unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

#: a mouse move farther than this (pixels) from the press turns a click into a box drag
DRAG_THRESHOLD_PX = 5
#: RAS -> LPS (and back): Slicer's world is RAS, ITK's (and samadapt3d's Volume) LPS
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _matrix_to_np(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def image_ijk_to_ras(image) -> np.ndarray:
    """4x4 IJK -> RAS of a vtkOrientedImageData, with IJK counted from the extent's first voxel."""
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijk_to_ras = _matrix_to_np(matrix)
    extent = image.GetExtent()
    start = np.array([extent[0], extent[2], extent[4], 1.0])
    ijk_to_ras[:, 3] = ijk_to_ras @ start
    return ijk_to_ras


def image_array(image) -> np.ndarray:
    """The voxels of a vtkImageData as [k, j, i] (a view)."""
    extent = image.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def volume_from_image(image, transform_to_world: np.ndarray | None = None):
    """samadapt3d Volume (world geometry, LPS) of a vtkOrientedImageData; `transform_to_world` is the
    segmentation's parent transform (4x4, linear) if it has one."""
    from samadapt3d.volume import Volume  # the library is installed by the module's dependency step

    ijk_to_ras = image_ijk_to_ras(image)
    if transform_to_world is not None:
        ijk_to_ras = np.asarray(transform_to_world, dtype=np.float64) @ ijk_to_ras
    ijk_to_lps = RAS_TO_LPS @ ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(ijk_to_lps, axis=0)
    direction = ijk_to_lps / spacing
    origin = RAS_TO_LPS @ ijk_to_ras[:3, 3]
    return Volume(np.array(image_array(image), copy=True), spacing=spacing, origin=origin, direction=direction)


def labelmap_like(reference, mask_kji: np.ndarray):
    """A vtkOrientedImageData on `reference`'s grid (geometry and extent) holding `mask_kji` as 0 / 1."""
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetExtent(reference.GetExtent())
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    labelmap.SetImageToWorldMatrix(matrix)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    target = image_array(labelmap)
    if target.shape != mask_kji.shape:
        raise ValueError(f"mask shape {mask_kji.shape} does not match the editor's grid {target.shape} [k, j, i]")
    target[:] = np.asarray(mask_kji, dtype=bool)
    labelmap.Modified()
    return labelmap


def is_drag(press_xy, xy) -> bool:
    return float(np.hypot(xy[0] - press_xy[0], xy[1] - press_xy[1])) > DRAG_THRESHOLD_PX


def slice_box_corners(ras_a, ras_b, slice_normal) -> tuple[np.ndarray, np.ndarray]:
    """The two corners of a box dragged on a slice: the drag's rectangle, flat along the view normal (the
    session's box may be one voxel thick along one axis: "a box on that slice")."""
    a, b = np.asarray(ras_a, dtype=np.float64), np.asarray(ras_b, dtype=np.float64)
    normal = np.asarray(slice_normal, dtype=np.float64)
    normal = normal / np.linalg.norm(normal)
    b = b - normal * ((b - a) @ normal)  # both corners on the press's slice
    return a, b


def slice_normal(slice_node) -> np.ndarray:
    slice_to_ras = slice_node.GetSliceToRAS()
    return np.array([slice_to_ras.GetElement(r, 2) for r in range(3)])


def defined_points_ras(markups_node) -> list[np.ndarray]:
    """World positions of the control points the user placed (not the one being previewed under the mouse)."""
    if markups_node is None:
        return []
    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, position)
        points.append(np.array(position))
    return points


def roi_corners_ras(roi_node) -> tuple[np.ndarray, np.ndarray] | None:
    """A 3D ROI's world bounding box corners, or None while it is not placed."""
    if roi_node is None or not roi_node.GetNumberOfControlPoints():
        return None
    if roi_node.GetNthControlPointPositionStatus(0) != roi_node.PositionDefined:
        return None
    size = roi_node.GetSize()
    if min(size) < 0 or max(size) <= 0:
        return None
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    return np.array(bounds[0::2]), np.array(bounds[1::2])


@dataclass
class PromptSet:
    """The prompts shown in the views, in world RAS: what the next rebuild sends to the session."""

    positive: list = field(default_factory=list)
    negative: list = field(default_factory=list)
    box: tuple | None = None

    @property
    def empty(self) -> bool:
        return not self.positive and not self.negative and self.box is None


def collect_prompts(positive_node, negative_node, box_node) -> PromptSet:
    """Points from the two point lists, the box from the ROI (flat when dragged on a slice, 3D when placed or
    adjusted as a 3D ROI)."""
    return PromptSet(defined_points_ras(positive_node), defined_points_ras(negative_node), roi_corners_ras(box_node))
