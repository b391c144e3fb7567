"""A running click's mask so far, shown in a scratch segmentation node while the model works (a first click on a
300-slice CT walks slice by slice for minutes on a CPU; the part around the click is ready in seconds).

The preview never touches the user's segmentation: no undo state, no overwrite of other segments, nothing to put
back on a cancel. Slicer's own Grow from seeds and Fill between slices show their previews the same way. The node is
hidden from node selectors and never saved with the scene. Only what slicer-core also provides is used, so it is
tested against a real MRML scene (Testing/test_effect_preview.py).
"""
from __future__ import annotations

import numpy as np
import slicer

from . import scene_bridge
from .effect_prompts import labelmap_like

PREVIEW_NODE_NAME = "SAMAdapt3D preview"
PREVIEW_SEGMENT_NAME = "preview"
#: the preview's fill is fainter than a segment's, so it reads as "not yet written"
PREVIEW_OPACITY = 0.4


class SegmentPreview:
    """One scratch segmentation node, created on the first `show` in `scene` (default: the application's scene
    at that time) and removed by `clear`."""

    def __init__(self, scene=None) -> None:
        self._scene = scene
        self.node = None
        self._segment_id = ""

    @property
    def showing(self) -> bool:
        return self.node is not None

    def show(self, mask: np.ndarray, source_image, segmentation_node, color=(1.0, 1.0, 0.0)) -> None:
        """Show `mask` (bool [k, j, i] on `source_image`, the editor's source image in the segmentation's
        coordinates) over `segmentation_node`, in the segment's colour."""
        if self.node is None or self.node.GetScene() is None:
            self._create(source_image, segmentation_node, color)
        labelmap = labelmap_like(source_image, mask)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.SetBinaryLabelmapToSegment(labelmap, self.node, self._segment_id, logic.MODE_REPLACE,
                                                labelmap.GetExtent(), False, []):
            raise RuntimeError("cannot show the preview")  # a scene error: the effect reports it and goes on

    def clear(self) -> None:
        node, self.node, self._segment_id = self.node, None, ""
        scene = None if node is None else node.GetScene()
        if scene is None:
            return
        displays = [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]
        scene.RemoveNode(node)
        for display in displays:  # the scene keeps a removed node's display nodes
            if display is not None and display.GetScene() is not None:
                scene.RemoveNode(display)

    def _create(self, source_image, segmentation_node, color) -> None:
        scene = self._scene if self._scene is not None else slicer.mrmlScene
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", PREVIEW_NODE_NAME)
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        node.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(source_image))
        node.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())  # the mask is in its frame
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetOpacity(PREVIEW_OPACITY)
        self._segment_id = scene_bridge.add_segment(node, PREVIEW_SEGMENT_NAME, tuple(float(c) for c in color))
        self.node = node
