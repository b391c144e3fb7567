"""A harness that runs the real SAMAdapt3D module and Segment Editor effect code without Slicer's GUI.

`Slicer(scene, tmp)` installs, for the duration of a test: a PythonQt-compatible `qt` over PySide6 (offscreen),
`ctk` and qMRML widget stand-ins, `slicer.app` (with a real vtkMRMLApplicationLogic), `slicer.mrmlScene` (the
real slicer-core scene the test passes), `slicer.ScriptedLoadableModule`, `slicer.parameterNodeWrapper`,
non-blocking dialogs, and the scripted segment-editor-effect base over slicer-core's vtkSlicerSegmentEditorLogic.
`close()` takes all of it out again, so the plain slicer-core tests are unaffected.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import slicer

from . import ctk_widgets, mrml_widgets, parameter_node, pythonqt, segment_editor, slicer_gui

_SLICER_ATTRIBUTES = ("app", "mrmlScene", "modules", "qMRMLWidget", "qMRMLNodeComboBox",
                      "qMRMLSegmentSelectorWidget", "qSlicerSegmentEditorEffectFactory",
                      "qSlicerSegmentEditorAbstractEffect", "ScriptedLoadableModule", "parameterNodeWrapper")


class LoadedModule:
    """A scripted module as Slicer holds it: the module object and its widget, entered."""

    def __init__(self, python_module, module, widget, parent_widget) -> None:
        self.python_module, self.module, self.widget, self.parent_widget = python_module, module, widget, parent_widget

    def widgetRepresentation(self):
        return types.SimpleNamespace(self=lambda: self.widget)


class Slicer:
    def __init__(self, scene, tmp_path) -> None:
        self.scene = scene
        self.qapp = pythonqt.application()
        self._saved_modules = {name: sys.modules.get(name) for name in (
            "qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper",
            "qSlicerSegmentationsEditorEffectsPythonQt", "SegmentEditorEffects")}
        self._saved_attributes = {name: getattr(slicer, name, None) for name in _SLICER_ATTRIBUTES}
        sys.modules["qt"] = pythonqt.build_module()
        sys.modules["ctk"] = ctk_widgets.build_module()
        sys.modules["slicer.ScriptedLoadableModule"] = slicer_gui.build_scripted_loadable_module()
        sys.modules["slicer.parameterNodeWrapper"] = parameter_node.build_module()
        sys.modules.update(segment_editor.build_modules())
        self.app = slicer_gui.SlicerApp(scene, str(tmp_path / "slicer-settings.ini"))
        self.segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations_logic.SetMRMLScene(scene)
        slicer.app = self.app
        slicer.mrmlScene = scene
        slicer.modules = types.SimpleNamespace(
            segmentations=types.SimpleNamespace(logic=lambda: self.segmentations_logic))
        slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
        slicer.parameterNodeWrapper = sys.modules["slicer.parameterNodeWrapper"]
        slicer.qMRMLWidget = mrml_widgets.qMRMLWidget
        slicer.qMRMLNodeComboBox = mrml_widgets.qMRMLNodeComboBox
        slicer.qMRMLSegmentSelectorWidget = mrml_widgets.qMRMLSegmentSelectorWidget
        slicer.qSlicerSegmentEditorEffectFactory = segment_editor.EffectFactory
        slicer.qSlicerSegmentEditorAbstractEffect = segment_editor.AbstractEffectConstants
        segment_editor.EffectFactory._instance = None
        self.gui = slicer_gui.Gui()
        self._saved_util = self.gui.patch_util(slicer.util)
        self.loaded: dict[str, LoadedModule] = {}

    # ---- scripted modules ---------------------------------------------------------------------------
    def load_module(self, path, enter: bool = True) -> LoadedModule:
        """Import a scripted module file as Slicer does (module named after the file), create its widget, setup,
        enter. A module loaded before under that name is exited and cleaned up first (Reload)."""
        name = path.stem
        if name in self.loaded:
            self.unload_module(name)
        sys.modules.pop(name, None)
        spec = importlib.util.spec_from_file_location(name, path)
        python_module = importlib.util.module_from_spec(spec)
        sys.modules[name] = python_module
        spec.loader.exec_module(python_module)
        module = getattr(python_module, name)(slicer_gui.ModuleParent(str(path)))
        widget = None
        parent_widget = None
        widget_class = getattr(python_module, f"{name}Widget", None)
        if widget_class is not None and not module.parent.hidden:
            import qt

            parent_widget = slicer.qMRMLWidget()
            parent_widget.setLayout(qt.QVBoxLayout())
            parent_widget.setMRMLScene(self.scene)
            parent_widget.isEntered = False
            widget = widget_class(parent_widget)
            widget.setup()
        loaded = LoadedModule(python_module, module, widget, parent_widget)
        self.loaded[name] = loaded
        setattr(slicer.modules, name.lower(), loaded)
        if enter and widget is not None:
            parent_widget.isEntered = True
            widget.enter()
        return loaded

    def unload_module(self, name: str) -> None:
        loaded = self.loaded.pop(name)
        if loaded.widget is not None:
            if loaded.parent_widget.isEntered:
                loaded.widget.exit()
                loaded.parent_widget.isEntered = False
            loaded.widget.cleanup()
            loaded.parent_widget.deleteLater()
        delattr(slicer.modules, name.lower())
        sys.modules.pop(name, None)

    def start_up(self) -> None:
        """The application finished starting: what registers effects in SegmentEditorExtraEffects' pattern."""
        self.app.startupCompleted.emit()

    def segment_editor(self) -> segment_editor.SegmentEditorHost:
        return segment_editor.SegmentEditorHost(self.scene)

    def pump(self, seconds: float = 0.0) -> None:
        """Run the Qt event loop (timers, queued signals) for about `seconds`."""
        import time

        end = time.monotonic() + seconds
        while True:
            self.qapp.processEvents()
            if time.monotonic() >= end:
                return
            time.sleep(0.002)

    def close(self) -> None:
        for name in list(self.loaded):
            self.unload_module(name)
        self.pump()
        self.app.shutdown()
        for name, original in self._saved_util.items():
            if original is None:
                delattr(slicer.util, name)
            else:
                setattr(slicer.util, name, original)
        for name, value in self._saved_attributes.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        for name, module in self._saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        segment_editor.EffectFactory._instance = None
        for name in segment_editor.LOADED_EFFECT_MODULES:
            sys.modules.pop(name, None)
            if hasattr(slicer, name):
                delattr(slicer, name)
        segment_editor.LOADED_EFFECT_MODULES.clear()
        self.segmentations_logic.SetMRMLScene(None)
