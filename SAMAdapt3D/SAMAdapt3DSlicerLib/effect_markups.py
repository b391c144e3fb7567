"""The effect's MRML side, Qt-free: the prompt markups it shows (green / red points, a yellow ROI), the selected
segment and the segmentation's transform as arrays, and the image axis a slice view looks along."""
from __future__ import annotations

import numpy as np
import vtk

import slicer

from . import effect_prompts as prompts

POSITIVE_COLOR = (0.1, 0.85, 0.1)
NEGATIVE_COLOR = (0.95, 0.15, 0.1)
BOX_COLOR = (1.0, 0.85, 0.0)
#: a view within this cosine of an image axis counts as looking along it (else: oblique, no axis hint)
AXIS_COSINE = 0.99
_SPECS = (("positive", "vtkMRMLMarkupsFiducialNode", POSITIVE_COLOR, "+"),
          ("negative", "vtkMRMLMarkupsFiducialNode", NEGATIVE_COLOR, "-"),
          ("box", "vtkMRMLMarkupsROINode", BOX_COLOR, "box"))
#: what the user's edits of a prompt fire (never hovering: preview points send PointModifiedEvent only)
EDIT_EVENTS = (slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
               slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent)


def ensure_prompt_nodes(scene, nodes: dict) -> bool:
    """Create the prompt nodes missing from `nodes` (or no longer in the scene); True when any was created."""
    created = False
    for kind, class_name, color, label in _SPECS:
        node = nodes.get(kind)
        if node is not None and scene.IsNodePresent(node):
            continue
        node = scene.AddNewNodeByClass(class_name, f"SAMAdapt3D {kind}")
        node.SetSaveWithScene(False)
        node.SetHideFromEditors(True)
        node.SetMarkupLabelFormat(label)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(color)
        display.SetColor(color)
        if kind != "box":
            display.SetPointLabelsVisibility(False)
        nodes[kind] = node
        created = True
    return created


def remove_prompt_nodes(scene, nodes: dict) -> None:
    for node in nodes.values():
        if scene is not None and scene.IsNodePresent(node):
            scene.RemoveNode(node)
    nodes.clear()


def set_visible(nodes: dict, visible: bool) -> None:
    for node in nodes.values():
        display = node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(bool(visible))


def set_roi(roi, a, b) -> None:
    """An axis-aligned (RAS) ROI spanning corners a and b (flat along the slice normal for a slice box)."""
    roi.RemoveAllControlPoints()  # also resets the ROI's size: a new box never inherits a zero-size one
    roi.SetCenterWorld(*((np.asarray(a) + np.asarray(b)) / 2))
    roi.SetSize(*np.abs(np.asarray(b) - np.asarray(a)))


def segmentation_to_world(segmentation):
    """The segmentation's parent transform (4x4) or None; a non-linear one is refused (harden it first)."""
    transform = segmentation.GetParentTransformNode()
    if transform is None:
        return None
    if not transform.IsTransformToWorldLinear():
        raise ValueError("the segmentation is under a non-linear transform: harden it first")
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]


def segment_on_grid(segment_labelmap, source) -> np.ndarray:
    """The selected segment's label map on the source image's grid, [k, j, i] bool (empty if there is none)."""
    resampled = slicer.vtkOrientedImageData()
    if segment_labelmap is None or not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            segment_labelmap, source, resampled, False, False):  # on the source grid exactly
        return np.zeros(prompts.image_array(source).shape, dtype=bool)
    return prompts.image_array(resampled) > 0


def view_axis(image, slice_node) -> int | None:
    """The ijk axis of the image normal to the slice view, or None for an oblique view."""
    normal = prompts.slice_normal(slice_node)
    directions = prompts.image_ijk_to_ras(image)[:3, :3]
    directions = directions / np.linalg.norm(directions, axis=0)
    cosines = np.abs(directions.T @ (normal / np.linalg.norm(normal)))
    axis = int(np.argmax(cosines))
    return axis if cosines[axis] > AXIS_COSINE else None
