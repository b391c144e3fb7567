"""The Segment Editor side of a scripted effect, on Slicer's REAL segment-editor logic from slicer-core.

- `ScriptedEffect` stands in for qSlicerSegmentEditorScriptedEffect (the C++ adaptor `self.scriptedEffect` of a
  Python effect): parameters on the segment editor node, the options frame, xy <-> RAS of a view, and the edits:
  `sourceVolumeImageData`, `defaultModifierLabelmap`, `saveStateForUndo`, `modifySelectedSegmentByLabelmap` go to
  slicer-core's vtkSlicerSegmentEditorLogic, the C++ logic the Segment Editor itself uses (Slicer >= 5.10), so
  masking (editable area, intensity range), overwrite of other segments and undo are Slicer's own.
- `SegmentEditorHost` stands in for the Segment Editor widget: editor node, effect selection, mouse events in
  views, Ctrl+Z.
- `AbstractScriptedSegmentEditorEffect` (the `SegmentEditorEffects` package) and the effect factory.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import vtk
from PySide6 import QtCore, QtGui, QtWidgets

import slicer

from .pythonqt import wrap

_LOGIC = slicer.vtkSlicerSegmentEditorLogic
_MODES = {0: _LOGIC.ModificationModeSet, 1: _LOGIC.ModificationModeAdd, 2: _LOGIC.ModificationModeRemove,
          3: _LOGIC.ModificationModeRemoveAll}
#: module names the effect loader put into sys.modules / slicer (taken out again when the harness closes)
LOADED_EFFECT_MODULES: set = set()


class AbstractEffectConstants:
    """slicer.qSlicerSegmentEditorAbstractEffect: the modification modes and confirm results."""

    ModificationModeSet, ModificationModeAdd, ModificationModeRemove, ModificationModeRemoveAll = 0, 1, 2, 3
    NotConfirmed, ConfirmedWithoutDialog, ConfirmedWithDialog = 0, 1, 2


class EffectFactory:
    _instance = None

    def __init__(self) -> None:
        self.effects: dict = {}

    @classmethod
    def instance(cls) -> "EffectFactory":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def registerEffect(self, effect) -> bool:
        if effect.name in self.effects:
            return False
        self.effects[effect.name] = effect
        return True

    def registeredEffects(self) -> list:
        return list(self.effects.values())


class ScriptedEffect(wrap(QtCore.QObject)):
    _pythonqt_class_name = "qSlicerSegmentEditorScriptedEffect"

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.name = ""
        self.perSegment = True
        self.requireSegments = True
        self.showEffectCursorInSliceView = True
        self.showEffectCursorInThreeDView = False
        self.editor: "SegmentEditorHost | None" = None
        self.renders = 0
        self._python = None
        self._options = wrap(QtWidgets.QFrame)()
        self._options.setLayout(wrap(QtWidgets.QVBoxLayout)())

    # ---- the Python side -------------------------------------------------------------------------------
    def setPythonSource(self, path: str) -> bool:
        """Slicer's rule (qSlicerSegmentEditorScriptedEffect::setPythonSource): the module is named after the
        file's folder, the class after the file (+ "Effect" unless it ends so); the class is taken from that module
        if it is imported already, else the file is loaded as that module (replacing what had the name)."""
        path = Path(path)
        module_name = path.parent.name
        class_name = path.stem if path.stem.endswith("Effect") else path.stem + "Effect"
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if cls is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            LOADED_EFFECT_MODULES.add(module_name)
            spec.loader.exec_module(module)
            cls = getattr(module, class_name, None)
        if cls is None:
            raise RuntimeError(f"Failed to load segment editor scripted effect: class {class_name} was not found in "
                               f"{path}")
        self._python = cls(self)
        setattr(slicer, module_name, self._python)  # Slicer sets slicer.<module name> to the effect
        LOADED_EFFECT_MODULES.add(module_name)
        return True

    def self(self):
        return self._python

    def clone(self):
        return self._python.clone()

    # ---- parameters (stored on the segment editor node, "<effect>.<name>", as Slicer does) ---------------
    def parameterSetNode(self):
        return self.editor.node if self.editor else None

    def _key(self, name: str) -> str:
        return f"{self.name}.{name}"

    def parameter(self, name: str) -> str:
        return self.editor.node.GetAttribute(self._key(name)) or ""

    def parameterDefined(self, name: str) -> bool:
        return self.editor.node.GetAttribute(self._key(name)) is not None

    def setParameter(self, name: str, value) -> None:
        self.editor.node.SetAttribute(self._key(name), str(value))

    def setParameterDefault(self, name: str, value) -> None:
        if not self.parameterDefined(name):
            self.setParameter(name, value)

    def integerParameter(self, name: str) -> int:
        return int(float(self.parameter(name) or 0))

    def doubleParameter(self, name: str) -> float:
        return float(self.parameter(name) or 0)

    def setCommonParameter(self, name: str, value) -> None:
        self.editor.node.SetAttribute(name, str(value))

    def commonParameter(self, name: str) -> str:
        return self.editor.node.GetAttribute(name) or ""

    # ---- options panel -----------------------------------------------------------------------------------
    def addOptionsWidget(self, widget) -> None:
        self._options.layout().addWidget(widget)

    def optionsFrame(self):
        return self._options

    # ---- edits, through Slicer's segment editor logic --------------------------------------------------
    def sourceVolumeImageData(self):
        logic = self.editor.logic
        logic.UpdateAlignedSourceVolume()
        return logic.GetAlignedSourceVolume()

    def defaultModifierLabelmap(self):
        logic = self.editor.logic
        logic.ResetModifierLabelmapToDefault()
        return logic.GetModifierLabelmap()

    def selectedSegmentLabelmap(self):
        logic = self.editor.logic
        logic.UpdateSelectedSegmentLabelmap()
        return logic.GetSelectedSegmentLabelmap()

    def saveStateForUndo(self) -> None:
        self.editor.logic.SaveStateForUndo()
        self.editor.undo_saves += 1

    def modifySelectedSegmentByLabelmap(self, labelmap, mode, *rest) -> None:
        bypass_masking = bool(rest[-1]) if rest and isinstance(rest[-1], bool) else False
        node = self.editor.node
        self.editor.modifications.append((int(mode), node.GetSelectedSegmentID()))
        self.editor.logic.ModifySegmentByLabelmap(node.GetSegmentationNode(), node.GetSelectedSegmentID(), labelmap,
                                                  _MODES[int(mode)], self.perSegment, bypass_masking)

    def confirmCurrentSegmentVisible(self) -> int:
        return AbstractEffectConstants.ConfirmedWithoutDialog

    # ---- views -------------------------------------------------------------------------------------------
    def xyToRas(self, xy, viewWidget):
        ras = viewWidget.xy_to_ras(xy.x(), xy.y())
        return QtGui.QVector3D(*ras)

    def rasToXy(self, ras, viewWidget):
        xy = viewWidget.ras_to_xy((ras.x(), ras.y(), ras.z()))
        return QtCore.QPoint(int(round(xy[0])), int(round(xy[1])))

    def viewNode(self, viewWidget):
        return viewWidget.mrmlSliceNode() if viewWidget.className() == "qMRMLSliceWidget" else viewWidget.mrmlViewNode()

    def forceRender(self, viewWidget=None) -> None:
        self.renders += 1

    def scheduleRender(self, viewWidget=None) -> None:
        self.renders += 1

    def selectEffect(self, name: str) -> None:
        if self.editor is not None:
            self.editor.activate(name or None)


class SegmentEditorHost:
    """The Segment Editor widget: one editor node, the effects cloned from the factory, the selected effect."""

    def __init__(self, scene) -> None:
        node = scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag("SegmentEditor")
            node = scene.AddNode(node)
        self.node = node
        self.logic = _LOGIC()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(node)
        self.history = slicer.vtkSegmentationHistory()
        self.logic.SetSegmentationHistory(self.history)
        self.effects: dict = {}
        self.active = None
        self.undo_saves = 0
        self.modifications: list = []
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self._interaction_tag = (interaction, interaction.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                                                      self._on_interaction_node))
        for registered in EffectFactory.instance().registeredEffects():
            clone = registered.clone()
            clone.editor = self
            clone.self().setupOptionsFrame()
            clone.self().setMRMLDefaults()
            self.effects[clone.name] = clone

    def _on_interaction_node(self, interaction, event=None) -> None:
        """As qSlicerSegmentEditorScriptedEffect: the effect's interactionNodeModified if it has one, else the C++
        default, which deselects the effect when a markups place mode starts."""
        if self.active is None:
            return
        handler = getattr(self.active.self(), "interactionNodeModified", None)
        if handler is not None:
            handler(interaction)
        elif interaction.GetCurrentInteractionMode() == interaction.Place:
            self.activate(None)

    def set_segmentation(self, segmentation_node) -> None:
        self.node.SetAndObserveSegmentationNode(segmentation_node)
        self.logic.SetSegmentationNode(segmentation_node)
        self.history.SetSegmentation(segmentation_node.GetSegmentation() if segmentation_node else None)

    def set_source_volume(self, volume_node) -> None:
        self.node.SetAndObserveSourceVolumeNode(volume_node)
        self.logic.SetSourceVolumeNode(volume_node)
        self.logic.UpdateReferenceGeometryImage()
        if self.active is not None:
            self.active.self().sourceVolumeNodeChanged()

    def select_segment(self, segment_id: str) -> None:
        self.node.SetSelectedSegmentID(segment_id)

    def activate(self, name: str | None):
        if self.active is not None:
            self.active.self().deactivate()
        self.active = self.effects[name] if name else None
        self.node.SetActiveEffectName(name or "")
        if self.active is not None:
            self.active.self().activate()
            self.active.self().updateGUIFromMRML()
        return self.active

    def interact(self, view, event_id: int, x: float, y: float, shift: bool = False, ctrl: bool = False) -> bool:
        """One mouse event in a view, as the editor forwards it to the active effect; returns `abort`."""
        interactor = vtk.vtkRenderWindowInteractor()
        interactor.SetEventPosition(int(round(x)), int(round(y)))
        interactor.SetShiftKey(int(shift))
        interactor.SetControlKey(int(ctrl))
        return bool(self.active.self().processInteractionEvents(interactor, event_id, view))

    def undo(self) -> None:
        self.logic.Undo()

    def redo(self) -> None:
        self.logic.Redo()

    def close(self) -> None:
        node, tag = self._interaction_tag
        node.RemoveObserver(tag)
        self.activate(None)
        for effect in self.effects.values():
            cleanup = getattr(effect.self(), "cleanup", None)
            if cleanup is not None:
                cleanup()
        self.effects.clear()


class AbstractScriptedSegmentEditorEffect:
    """The base class of Python effects (Slicer's SegmentEditorEffects package): the adaptor and defaults."""

    def __init__(self, scriptedEffect) -> None:
        self.scriptedEffect = scriptedEffect

    def register(self) -> None:
        EffectFactory.instance().registerEffect(self.scriptedEffect)

    def cleanup(self) -> None:
        pass

    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass

    def setupOptionsFrame(self) -> None:
        pass

    def setMRMLDefaults(self) -> None:
        pass

    def updateGUIFromMRML(self) -> None:
        pass

    def updateMRMLFromGUI(self) -> None:
        pass

    def sourceVolumeNodeChanged(self) -> None:
        pass

    def referenceGeometryChanged(self) -> None:
        pass

    def layoutChanged(self) -> None:
        pass

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget) -> bool:
        return False

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget) -> None:
        pass

    def xyToRas(self, xy, viewWidget) -> list:
        ras = self.scriptedEffect.xyToRas(QtCore.QPoint(int(xy[0]), int(xy[1])), viewWidget)
        return [ras.x(), ras.y(), ras.z()]

    def rasToXy(self, ras, viewWidget) -> list:
        xy = self.scriptedEffect.rasToXy(QtGui.QVector3D(*ras), viewWidget)
        return [xy.x(), xy.y()]


def build_modules() -> dict[str, types.ModuleType]:
    effects = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
    effects.qSlicerSegmentEditorScriptedEffect = ScriptedEffect
    effects.qSlicerSegmentEditorEffectFactory = EffectFactory
    effects.qSlicerSegmentEditorAbstractEffect = AbstractEffectConstants
    package = types.ModuleType("SegmentEditorEffects")
    package.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    package.__all__ = ["AbstractScriptedSegmentEditorEffect"]
    return {effects.__name__: effects, package.__name__: package}
