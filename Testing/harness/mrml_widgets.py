"""Stand-ins for the qMRML widgets (Slicer's MRML-aware Qt widgets) on a real slicer-core scene.

They follow Slicer's contract that matters for the issue: a widget knows no scene until `setMRMLScene` is called
(by code, or through the .ui's `mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*)` connection), and
without a scene it lists nothing and cannot create anything.
"""
from __future__ import annotations

import numpy as np
import vtk
from PySide6 import QtWidgets
from PySide6.QtCore import Property, Signal

import slicer

from .pythonqt import register, wrap


@register
class qMRMLWidget(wrap(QtWidgets.QWidget)):
    _pythonqt_class_name = "qMRMLWidget"
    mrmlSceneChanged = Signal(object)
    _pythonqt_signal_aliases = {"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        if scene is self._scene:
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class _SceneObserving:
    """Observes node added / removed on the widget's scene and refreshes the item list."""

    def _observe_scene(self, scene) -> None:
        for tag in getattr(self, "_scene_tags", []):
            self._observed_scene.RemoveObserver(tag)
        self._scene_tags, self._observed_scene = [], scene
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent):
                self._scene_tags.append(scene.AddObserver(event, lambda *_: self._refresh()))


@register
class qMRMLNodeComboBox(_SceneObserving, wrap(QtWidgets.QComboBox)):
    """Lists the scene's nodes of `nodeTypes`; "Create new ..." (addNode) creates one of the first type."""

    _pythonqt_class_name = "qMRMLNodeComboBox"
    currentNodeChanged = Signal(object)
    currentNodeChangedBool = Signal(bool)
    currentNodeIDChanged = Signal(str)
    nodeAddedByUser = Signal(object)
    _pythonqt_signal_aliases = {"currentNodeChanged(vtkMRMLNode*)": "currentNodeChanged",
                                "currentNodeChanged(bool)": "currentNodeChangedBool",
                                "currentNodeIDChanged(QString)": "currentNodeIDChanged",
                                "nodeAddedByUser(vtkMRMLNode*)": "nodeAddedByUser"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._node_types: list = []
        self._flags = {"noneEnabled": False, "addEnabled": True, "removeEnabled": True, "renameEnabled": False,
                       "editEnabled": False, "showHidden": False, "showChildNodeTypes": True,
                       "selectNodeUponCreation": True}
        self._base_name = ""
        self._current_id = ""
        self._refreshing = False
        QtWidgets.QComboBox.currentIndexChanged.__get__(self).connect(self._on_index)

    # ---- scene ------------------------------------------------------------------------------
    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self._observe_scene(scene)
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def nodes(self) -> list:
        if self._scene is None:
            return []
        out = []
        for node_type in self._node_types:
            for index in range(self._scene.GetNumberOfNodesByClass(node_type)):
                node = self._scene.GetNthNodeByClass(index, node_type)
                if node.GetHideFromEditors() and not self._flags["showHidden"]:
                    continue
                if not self._flags["showChildNodeTypes"] and node.GetClassName() != node_type:
                    continue
                if node not in out:
                    out.append(node)
        return out

    def _refresh(self) -> None:
        self._refreshing = True
        try:
            self.clear()
            if self._flags["noneEnabled"]:
                QtWidgets.QComboBox.addItem(self, "None", "")
            for node in self.nodes():
                QtWidgets.QComboBox.addItem(self, node.GetName(), node.GetID())
            index = QtWidgets.QComboBox.findData(self, self._current_id) if self._current_id else -1
            if index < 0 and not self._flags["noneEnabled"] and QtWidgets.QComboBox.count(self):
                index = 0  # like Slicer: without "None" the first node is selected
            QtWidgets.QComboBox.setCurrentIndex(self, index)
        finally:
            self._refreshing = False
        self._on_index(QtWidgets.QComboBox.currentIndex(self))

    def _on_index(self, index: int) -> None:
        if self._refreshing:
            return
        node_id = QtWidgets.QComboBox.itemData(self, index) if index >= 0 else ""
        node_id = node_id or ""
        if node_id == self._current_id:
            return
        self._current_id = node_id
        node = self.currentNode()
        self.currentNodeChanged.emit(node)
        self.currentNodeChangedBool.emit(node is not None)
        self.currentNodeIDChanged.emit(node_id)

    # ---- selection --------------------------------------------------------------------------
    def currentNode(self):
        if self._scene is None or not self._current_id:
            return None
        return self._scene.GetNodeByID(self._current_id)

    def setCurrentNode(self, node) -> None:
        self.setCurrentNodeID(node.GetID() if node is not None else "")

    def setCurrentNodeID(self, node_id: str) -> None:
        index = QtWidgets.QComboBox.findData(self, node_id) if node_id else (0 if self._flags["noneEnabled"] else -1)
        if node_id and index < 0:
            return  # not a node this selector lists (Slicer ignores it as well)
        QtWidgets.QComboBox.setCurrentIndex(self, index)
        self._on_index(index)

    @property
    def currentNodeID(self) -> str:
        return self._current_id

    def addNode(self, node_type: str | None = None):
        """What "Create new ..." does; impossible without a scene (the defect the issue names)."""
        if self._scene is None or not self._flags["addEnabled"] or not self._node_types:
            return None
        node = self._scene.AddNewNodeByClass(node_type or self._node_types[0], self._base_name or "")
        self.nodeAddedByUser.emit(node)
        if self._flags["selectNodeUponCreation"]:
            self.setCurrentNode(node)
        return node

    # ---- properties set by the .ui ----------------------------------------------------------
    def _get_types(self) -> list:
        return list(self._node_types)

    def _set_types(self, value) -> None:
        self._node_types = [str(v) for v in value]
        self._refresh()

    def _get_base_name(self) -> str:
        return self._base_name

    def _set_base_name(self, value: str) -> None:
        self._base_name = value

    nodeTypes = Property("QStringList", _get_types, _set_types)
    baseName = Property(str, _get_base_name, _set_base_name)


def _flag_property(name: str):
    def fget(self) -> bool:
        return self._flags[name]

    def fset(self, value: bool) -> None:
        self._flags[name] = bool(value)
        if name in ("noneEnabled", "showHidden", "showChildNodeTypes"):
            self._refresh()

    return Property(bool, fget, fset)


for _flag in ("noneEnabled", "addEnabled", "removeEnabled", "renameEnabled", "editEnabled", "showHidden",
              "showChildNodeTypes", "selectNodeUponCreation"):
    setattr(qMRMLNodeComboBox, _flag, _flag_property(_flag))


@register
class qMRMLSegmentSelectorWidget(wrap(QtWidgets.QWidget)):
    """A segmentation selector plus a segment list; `currentSegmentChanged(QString)` with the segment id."""

    _pythonqt_class_name = "qMRMLSegmentSelectorWidget"
    currentNodeChanged = Signal(object)
    currentSegmentChanged = Signal(str)
    _pythonqt_signal_aliases = {"currentNodeChanged(vtkMRMLNode*)": "currentNodeChanged",
                                "currentSegmentChanged(QString)": "currentSegmentChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.nodeSelector = qMRMLNodeComboBox(self)
        self.nodeSelector.nodeTypes = ["vtkMRMLSegmentationNode"]
        self.segmentCombo = wrap(QtWidgets.QComboBox)(self)
        layout.addWidget(self.nodeSelector)
        layout.addWidget(self.segmentCombo)
        self._segmentation = None
        self._segment_tags: list = []
        self._segment_id = ""
        self._refreshing = False
        self.nodeSelector.currentNodeChanged.connect(self._on_node)
        QtWidgets.QComboBox.currentIndexChanged.__get__(self.segmentCombo).connect(self._on_segment_index)

    def setMRMLScene(self, scene) -> None:
        self.nodeSelector.setMRMLScene(scene)

    def mrmlScene(self):
        return self.nodeSelector.mrmlScene()

    def currentNode(self):
        return self.nodeSelector.currentNode()

    @property
    def currentNodeID(self) -> str:
        return self.nodeSelector.currentNodeID

    def setCurrentNode(self, node) -> None:
        self.nodeSelector.setCurrentNode(node)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.nodeSelector.setCurrentNodeID(node_id)

    def currentSegmentID(self) -> str:
        return self._segment_id

    def setCurrentSegmentID(self, segment_id: str) -> None:
        index = QtWidgets.QComboBox.findData(self.segmentCombo, segment_id)
        if index >= 0:
            QtWidgets.QComboBox.setCurrentIndex(self.segmentCombo, index)
            self._on_segment_index(index)

    def _on_node(self, node) -> None:
        if self._segmentation is not None:
            for tag in self._segment_tags:
                self._segmentation.RemoveObserver(tag)
        self._segment_tags, self._segmentation = [], node
        if node is not None:
            segmentation = node.GetSegmentation()
            for event in (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                          slicer.vtkSegmentation.SegmentModified):
                self._segment_tags.append(segmentation.AddObserver(event, lambda *_: self._refresh_segments()))
        self.currentNodeChanged.emit(node)
        self._refresh_segments()

    def _refresh_segments(self) -> None:
        self._refreshing = True
        try:
            self.segmentCombo.clear()
            node = self._segmentation
            if node is not None:
                segmentation = node.GetSegmentation()
                for index in range(segmentation.GetNumberOfSegments()):
                    segment_id = segmentation.GetNthSegmentID(index)
                    QtWidgets.QComboBox.addItem(self.segmentCombo, segmentation.GetSegment(segment_id).GetName(),
                                                segment_id)
            index = QtWidgets.QComboBox.findData(self.segmentCombo, self._segment_id)
            if index < 0 and QtWidgets.QComboBox.count(self.segmentCombo):
                index = 0
            QtWidgets.QComboBox.setCurrentIndex(self.segmentCombo, index)
        finally:
            self._refreshing = False
        self._on_segment_index(QtWidgets.QComboBox.currentIndex(self.segmentCombo))

    def _on_segment_index(self, index: int) -> None:
        if self._refreshing:
            return
        segment_id = (QtWidgets.QComboBox.itemData(self.segmentCombo, index) if index >= 0 else "") or ""
        if segment_id != self._segment_id:
            self._segment_id = segment_id
            self.currentSegmentChanged.emit(segment_id)

    # the .ui may set these; the stand-in shows both parts always
    def _flag(self):
        return True

    def _set_flag(self, value) -> None:
        pass

    noneEnabled = Property(bool, _flag, _set_flag)
    editEnabled = Property(bool, _flag, _set_flag)
    segmentationNodeSelectorVisible = Property(bool, _flag, _set_flag)


SLICE_AXES = {"Axial": ((-1, 0, 0), (0, 1, 0), (0, 0, 1)),
              "Sagittal": ((0, 0, 1), (-1, 0, 0), (0, 1, 0)),
              "Coronal": ((-1, 0, 0), (0, 0, 1), (0, 1, 0))}


class SliceViewWidget:
    """A slice view (qMRMLSliceWidget): a real vtkMRMLSliceNode gives the xy -> RAS mapping of the view, like
    Slicer's. `resize` sets the view size in pixels; the slice is fitted to a volume with `fit_to`."""

    def __init__(self, scene, name: str = "Red", orientation: str = "Axial", size=(256, 256)) -> None:
        node = slicer.vtkMRMLSliceNode()
        node.SetName(name)
        node.SetLayoutName(name)
        node.SetSingletonTag(name)
        self.slice_node = scene.AddNode(node)
        # slicer-core has no orientation presets: Slicer's own axes of each view (columns: slice x, y, normal)
        slice_to_ras = self.slice_node.GetSliceToRAS()
        for row, values in enumerate(SLICE_AXES[orientation]):
            for col, value in enumerate(values):
                slice_to_ras.SetElement(row, col, value)
        self.slice_node.UpdateMatrices()
        self.slice_node.SetDimensions(size[0], size[1], 1)
        self.size = size

    def className(self) -> str:
        return "qMRMLSliceWidget"

    def mrmlSliceNode(self):
        return self.slice_node

    def fit_to(self, volume_node, offset_ras: float | None = None) -> None:
        """Centre the view on the volume, field of view = its extent, slice through `offset_ras` (or the centre)."""
        bounds = [0.0] * 6
        volume_node.GetRASBounds(bounds)
        centre = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
        extent = max(bounds[1] - bounds[0], bounds[3] - bounds[2], bounds[5] - bounds[4])
        self.slice_node.SetFieldOfView(extent, extent * self.size[1] / self.size[0], 1.0)
        normal = np.array([self.slice_node.GetSliceToRAS().GetElement(r, 2) for r in range(3)])
        if offset_ras is not None:
            centre = centre - normal * (centre @ normal) + normal * offset_ras
        self.slice_node.SetSliceOrigin(0, 0, 0)
        self.slice_node.SetXYZOrigin(0, 0, 0)
        slice_to_ras = self.slice_node.GetSliceToRAS()
        for row in range(3):
            slice_to_ras.SetElement(row, 3, float(centre[row]))
        self.slice_node.UpdateMatrices()

    def xy_to_ras(self, x: float, y: float) -> np.ndarray:
        xy_to_ras = self.slice_node.GetXYToRAS()
        return np.array(xy_to_ras.MultiplyPoint((float(x), float(y), 0.0, 1.0))[:3])

    def ras_to_xy(self, ras) -> np.ndarray:
        inverse = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(self.slice_node.GetXYToRAS(), inverse)
        return np.array(inverse.MultiplyPoint((float(ras[0]), float(ras[1]), float(ras[2]), 1.0))[:2])


class ThreeDViewWidget:
    def __init__(self, scene, name: str = "1") -> None:
        self.view_node = scene.AddNewNodeByClass("vtkMRMLViewNode")
        self.view_node.SetName(f"View{name}")

    def className(self) -> str:
        return "qMRMLThreeDWidget"

    def mrmlViewNode(self):
        return self.view_node
