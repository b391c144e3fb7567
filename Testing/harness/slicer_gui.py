"""Stand-ins for Slicer's GUI side (slicer.app, the main window, ScriptedLoadableModule*, the dialogs of
slicer.util) around a REAL slicer-core MRML scene and application logic.

Dialogs never block: they are recorded in `Gui.messages` and answered from `Gui.answers` (default: OK / Yes).
"""
from __future__ import annotations

import os
import types
import xml.etree.ElementTree as ET

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Signal

import slicer

from .pythonqt import wrap


class SlicerApp(wrap(QtCore.QObject)):
    """slicer.app: the application logic (interaction / selection nodes), settings, processEvents, startup."""

    _pythonqt_class_name = "qSlicerApplication"
    startupCompleted = Signal()

    def __init__(self, scene, settings_path: str) -> None:
        super().__init__()
        self._scene = scene
        self._app_logic = slicer.vtkMRMLApplicationLogic()
        self._app_logic.SetMRMLScene(scene)
        self._settings = QtCore.QSettings(settings_path, QtCore.QSettings.IniFormat)
        self._main_window = wrap(QtWidgets.QMainWindow)()
        self._main_window.setObjectName("qSlicerMainWindow")
        self.commandOptions = lambda: types.SimpleNamespace(noMainWindow=False, testingEnabled=True)

    def applicationLogic(self):
        return self._app_logic

    def mrmlScene(self):
        return self._scene

    def settings(self):
        return self._settings

    def processEvents(self, *args) -> None:
        QtWidgets.QApplication.processEvents(*args)

    def topLevelWidgets(self) -> list:
        return [self._main_window]

    @property
    def temporaryPath(self) -> str:
        return os.path.dirname(self._settings.fileName())

    def layoutManager(self):
        return None

    def shutdown(self) -> None:
        self._app_logic.SetMRMLScene(None)
        self._main_window.deleteLater()


class Gui:
    """What the user sees besides the panel: dialogs (recorded) and the answers the test gives them."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.answers: dict[str, bool] = {}

    def _record(self, kind: str, text: str, *args, **kwargs) -> bool:
        self.messages.append((kind, str(text)))
        return self.answers.get(kind, True)

    def patch_util(self, util) -> dict:
        """Replace slicer.util's dialogs; returns the originals for `restore`."""
        names = {
            "errorDisplay": lambda text, *a, **k: self._record("error", text),
            "warningDisplay": lambda text, *a, **k: self._record("warning", text),
            "infoDisplay": lambda text, *a, **k: self._record("info", text),
            "confirmOkCancelDisplay": lambda text, *a, **k: self._record("confirm", text),
            "confirmYesNoDisplay": lambda text, *a, **k: self._record("confirm", text),
            "delayDisplay": lambda text, *a, **k: self._record("delay", text),
            "showStatusMessage": lambda text, *a, **k: self._record("status", text),
            "createProgressDialog": lambda *a, **k: wrap(QtWidgets.QProgressDialog)(),
            "pip_install": self._refuse_pip,
            "mainWindow": lambda: slicer.app.topLevelWidgets()[0],
            "loadUI": load_ui,
        }
        originals = {name: getattr(util, name, None) for name in names}
        for name, value in names.items():
            setattr(util, name, value)
        return originals

    @staticmethod
    def _refuse_pip(*args, **kwargs):
        raise RuntimeError("the test harness installs nothing (slicer.util.pip_install was called)")


def load_ui(path: str):
    """slicer.util.loadUI, plus what PythonQt's Qt Designer plugins do: make the .ui's signal/slot connections,
    including Slicer's mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*)."""
    import qt

    if not os.path.exists(path):
        raise RuntimeError(f"Could not load UI file: file not found {path}")
    tree = ET.parse(path)
    root = tree.getroot()
    connections = root.find("connections")
    if connections is not None:
        root.remove(connections)  # QUiLoader cannot connect to Python slots; done below
    data = QtCore.QByteArray(ET.tostring(root, encoding="utf-8"))
    buffer = QtCore.QBuffer(data)
    buffer.open(QtCore.QIODevice.ReadOnly)
    loader = qt.QUiLoader()
    widget = loader.load(buffer)
    if widget is None:
        raise RuntimeError(f"Could not load UI file: {path}: {loader.errorString()}")
    if loader.missing:
        raise RuntimeError(f"{path} uses {', '.join(sorted(set(loader.missing)))}, which the test harness has no "
                           "stand-in for: add one to Testing/harness")
    for connection in [] if connections is None else connections.findall("connection"):
        sender = _find(widget, connection.findtext("sender"))
        receiver = _find(widget, connection.findtext("receiver"))
        slot_name = connection.findtext("slot").split("(")[0]
        sender.connect(connection.findtext("signal"), getattr(receiver, slot_name))
    return widget


def _find(root, name: str):
    if QtCore.QObject.objectName(root) == name:
        return root
    found = root.findChild(QtCore.QObject, name)
    if found is None:
        raise RuntimeError(f"the .ui connects {name!r}, which it does not define")
    return found


# ---- slicer.ScriptedLoadableModule ------------------------------------------------------------------------
class ModuleParent:
    """What Slicer hands a scripted module (qSlicerScriptedLoadableModule): metadata fields."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.title = ""
        self.categories: list = []
        self.dependencies: list = []
        self.contributors: list = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.hidden = False
        self.widgetRepresentation = None


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = self.moduleName

    def resourcePath(self, filename: str) -> str:
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def getDefaultModuleDocumentationLink(self, docPage: str = "") -> str:
        return ""


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        import qt

        if parent is None:
            parent = slicer.qMRMLWidget()
            parent.setLayout(qt.QVBoxLayout())
            parent.setMRMLScene(slicer.mrmlScene)
        self.parent = parent
        self.layout = parent.layout()
        self.moduleName = self.__module__
        self.developerMode = False

    def resourcePath(self, filename: str) -> str:
        module = __import__(self.__module__)
        return os.path.join(os.path.dirname(module.__file__), "Resources", filename)

    def setup(self) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = self.__class__.__name__.removesuffix("Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest:
    def setUp(self) -> None:
        slicer.mrmlScene.Clear(0)

    def delayDisplay(self, message, msec=1000) -> None:
        pass


def build_scripted_loadable_module() -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module
