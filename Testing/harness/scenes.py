"""Small scenes for the harness tests: a piecewise-constant image whose objects are known exactly (the oracle is the
image itself, never the code under test), a segmentation, slice views, and reading segments back without leaving
nodes in the scene."""
from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

#: image [k, j, i] = (12, 24, 24), spacing 1 mm; a cube of BRIGHT and a slab of DIM on background 0
SHAPE_KJI = (12, 24, 24)
BRIGHT, DIM = 200, 100
CUBE = (slice(3, 9), slice(4, 10), slice(4, 10))  # [k, j, i]
SLAB = (slice(2, 10), slice(14, 20), slice(12, 22))


def toy_image() -> np.ndarray:
    image = np.zeros(SHAPE_KJI, dtype=np.int16)
    image[CUBE] = BRIGHT
    image[SLAB] = DIM
    return image


def add_volume(scene, array_kji: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), name="CT"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(array_kji.shape[2], array_kji.shape[1], array_kji.shape[0])
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array_kji.astype(np.int16).ravel()
    node.SetAndObserveImageData(image)
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)
    node.CreateDefaultDisplayNodes()
    return node


def add_segmentation(scene, volume_node, names=("structure",)):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    ids = [node.GetSegmentation().AddEmptySegment(name, name) for name in names]
    return node, ids


def segment_array(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment on the volume's grid [k, j, i] (bool); the temporary label map is removed again."""
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__read__")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        logic.SetMRMLScene(scene)
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, volume_node):
            raise RuntimeError(f"cannot export segment {segment_id}")
        image = labelmap.GetImageData()
        dims = image.GetDimensions()
        array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
        return array > 0
    finally:
        display = labelmap.GetDisplayNode()
        scene.RemoveNode(labelmap)
        if display is not None:
            scene.RemoveNode(display)


def set_segment(segmentation_node, segment_id: str, mask_kji: np.ndarray, volume_node) -> None:
    """Replace a segment with a mask on the volume's grid (test set-up, not through the editor)."""
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetDimensions(mask_kji.shape[2], mask_kji.shape[1], mask_kji.shape[0])
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    labelmap.SetImageToWorldMatrix(matrix)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())[:] = mask_kji.astype(np.uint8).ravel()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise RuntimeError(f"cannot set segment {segment_id}")


def voxel_to_ras(volume_node, kji) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    k, j, i = kji
    return np.array(matrix.MultiplyPoint((float(i), float(j), float(k), 1.0))[:3])
