"""SAMAdapt3D: interactive, prompted 3D segmentation with adapter-augmented Segment Anything models.

Module (metadata), Widget (UI wiring only), Logic (orchestration: dependencies, model, worker thread, scene writes)
and Test (runs inside Slicer). Geometry and scene conversions live in SAMAdapt3DSceneBridge.py, the Qt-free
request -> session -> segment flow in SAMAdapt3DCore.py; both are tested headless with slicer-core (Testing/).
Nothing is installed at import time: torch and samadapt3d are imported only after the dependency check.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import traceback

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer < 5.2
    parameterNodeWrapper = None

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
#: the library in this repository (SAMAdapt3DLib next to the module folder)
LIBRARY_DIR = os.path.normpath(os.path.join(MODULE_DIR, os.pardir, "SAMAdapt3DLib"))
TORCH_REQUIREMENT = ">=2.1"
DEVICES = ("auto", "cuda", "mps", "cpu")
POSITIVE_COLOR = (0.1, 0.85, 0.1)
NEGATIVE_COLOR = (0.95, 0.15, 0.1)
BOX_COLOR = (1.0, 0.85, 0.0)
DEBOUNCE_MS = 300


#
# SAMAdapt3D
#
class SAMAdapt3D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAMAdapt3D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["SAMAdapt3D developers"]
        self.parent.helpText = (
            "Interactive 3D segmentation with prompted Segment Anything models (LiteMedSAM embedded, "
            "3DSAM-adapter checkpoints). Place positive (green) and negative (red) points or a 3D box; the selected "
            "segment updates after every change, respecting the Segment Editor's masking and overwrite settings. "
            "Undo / redo step through prompt changes. Multi-class models (SAMed, MA-SAM) take no clicks: 'Segment all "
            "classes' writes one segment per class, named after it. See docs/SLICER.md in the repository."
        )
        self.parent.acknowledgementText = (
            "Builds on Segment Anything (Meta AI), MedSAM / LiteMedSAM (Ma et al.) and 3DSAM-adapter (Gong et al.)."
        )


#
# Parameter node
#
if parameterNodeWrapper is not None:

    @parameterNodeWrapper
    class SAMAdapt3DParameterNode:
        inputVolume: slicer.vtkMRMLScalarVolumeNode
        segmentation: slicer.vtkMRMLSegmentationNode
        segmentID: str = ""
        positivePoints: slicer.vtkMRMLMarkupsFiducialNode
        negativePoints: slicer.vtkMRMLMarkupsFiducialNode
        box: slicer.vtkMRMLMarkupsROINode
        model: str = "litemedsam"
        device: str = "auto"
        samCheckpoint: str = ""  # SAM base file for adapter-only checkpoints (SAMed, MA-SAM, Med-SA)
        autoUpdate: bool = True

else:  # pragma: no cover - very old Slicer
    SAMAdapt3DParameterNode = None


#
# SAMAdapt3DWidget
#
class SAMAdapt3DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedPromptNodes = []
        self._updatingGUI = False
        self._shortcuts = []
        self._viewAxisHint = None

    # ---- setup -----------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMAdapt3D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentSelector.setMRMLScene(slicer.mrmlScene)

        self.logic = SAMAdapt3DLogic()
        self.logic.progressCallback = self.onProgress
        self.logic.finishedCallback = self.onFinished

        self.debounceTimer = qt.QTimer()
        self.debounceTimer.setSingleShot(True)
        self.debounceTimer.setInterval(DEBOUNCE_MS)
        self.debounceTimer.connect("timeout()", self.onUpdateRequested)

        for device in DEVICES:
            self.ui.deviceComboBox.addItem(device)
        self.populateModels()

        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.newSegmentButton.connect("clicked()", self.onNewSegment)
        self.ui.positiveButton.connect("toggled(bool)", lambda on: self.onPlaceToggled("positive", on))
        self.ui.negativeButton.connect("toggled(bool)", lambda on: self.onPlaceToggled("negative", on))
        self.ui.boxButton.connect("toggled(bool)", lambda on: self.onPlaceToggled("box", on))
        self.ui.clearButton.connect("clicked()", self.onClearPrompts)
        self.ui.undoButton.connect("clicked()", lambda: self.requestRun("undo"))
        self.ui.redoButton.connect("clicked()", lambda: self.requestRun("redo"))
        self.ui.runButton.connect("clicked()", lambda: self.requestRun("sync", force=True))
        self.ui.classesButton.connect("clicked()", self.onSegmentClasses)
        self.ui.cancelButton.connect("clicked()", self.onCancel)
        self.ui.autoUpdateCheckBox.connect("toggled(bool)", self.onAutoUpdateToggled)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.addModelButton.connect("clicked()", self.onAddModelFile)
        self.ui.samCheckpointPathLineEdit.connect("currentPathChanged(QString)", self.onSamCheckpointChanged)
        self.ui.dependenciesButton.connect("clicked()", lambda: self.ensureDependencies(force_report=True))
        self.setupFineTune()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interactionNode, interactionNode.InteractionModeChangedEvent, self.updatePlaceButtons)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeShortcuts()
        self.removeObservers()
        if self.logic:
            self.logic.shutdown()

    def enter(self):
        self.initializeParameterNode()
        self.installShortcuts()

    def exit(self):
        self.stopPlacing()
        self.removeShortcuts()
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        self.logic.resetSession()
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---- shortcuts ---------------------------------------------------------------------------------------
    def installShortcuts(self):
        self.removeShortcuts()
        keys = [("p", self.ui.positiveButton.toggle), ("n", self.ui.negativeButton.toggle),
                ("b", self.ui.boxButton.toggle), ("Ctrl+Alt+z", lambda: self.requestRun("undo")),
                ("Ctrl+Alt+y", lambda: self.requestRun("redo"))]
        for key, callback in keys:
            shortcut = qt.QShortcut(slicer.util.mainWindow())
            shortcut.setKey(qt.QKeySequence(key))
            shortcut.connect("activated()", callback)
            self._shortcuts.append(shortcut)

    def removeShortcuts(self):
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

    # ---- parameter node ---------------------------------------------------------------------------------
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if p is None:
            return
        if not p.samCheckpoint:
            p.samCheckpoint = self.logic.rememberedSamCheckpoint()
        if not p.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                p.inputVolume = first
        self.logic.ensurePromptNodes(p)
        self.observePromptNodes()

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            self.ui.segmentSelector.setCurrentNode(p.segmentation)
            if p.segmentation and p.segmentID:
                self.ui.segmentSelector.setCurrentSegmentID(p.segmentID)
            index = self.ui.modelComboBox.findData(p.model)
            if index >= 0:
                self.ui.modelComboBox.setCurrentIndex(index)
            self.ui.deviceComboBox.setCurrentIndex(max(0, self.ui.deviceComboBox.findText(p.device)))
            if self.ui.samCheckpointPathLineEdit.currentPath != p.samCheckpoint:
                self.ui.samCheckpointPathLineEdit.currentPath = p.samCheckpoint
            self.ui.autoUpdateCheckBox.checked = p.autoUpdate
            ready = bool(p.inputVolume and p.segmentation and p.segmentID)
            for button in (self.ui.positiveButton, self.ui.negativeButton, self.ui.boxButton, self.ui.runButton):
                button.enabled = ready
            self.ui.newSegmentButton.enabled = bool(p.segmentation)
            self.ui.classesButton.enabled = bool(p.inputVolume and p.segmentation)
            self.ui.undoButton.enabled = self.logic.canUndo()
            self.ui.redoButton.enabled = self.logic.canRedo()
            self.updateCpuWarning()
        finally:
            self._updatingGUI = False

    # ---- inputs ------------------------------------------------------------------------------------------
    def onSegmentationChanged(self, node):
        if self._updatingGUI or self._parameterNode is None:
            return
        self.ui.segmentSelector.setCurrentNode(node)
        if node is not None:
            node.CreateDefaultDisplayNodes()
            volumeNode = self._parameterNode.inputVolume
            if volumeNode and not node.GetSegmentation().GetNumberOfSegments():
                node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)

    def onSegmentChanged(self, segmentID):
        if self._updatingGUI or self._parameterNode is None:
            return
        self._parameterNode.segmentID = segmentID or ""

    def onNewSegment(self):
        p = self._parameterNode
        if p is None or not p.segmentation:
            return
        import SAMAdapt3DSceneBridge as bridge

        segmentID = bridge.add_segment(p.segmentation, "")
        p.segmentID = segmentID
        self.ui.segmentSelector.setCurrentSegmentID(segmentID)

    # ---- models ------------------------------------------------------------------------------------------
    def populateModels(self):
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("LiteMedSAM (embedded default)", "litemedsam")
        for path in self.logic.rememberedModelFiles():
            combo.addItem(os.path.basename(path), path)
            combo.setItemData(combo.count - 1, path, qt.Qt.ToolTipRole)
        combo.blockSignals(False)

    def onAddModelFile(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Add a model file", "",
            "Model weights (*.pth *.pt *.pth.tar *.tar *.ckpt *.safetensors);;All files (*)")
        if not path:
            return
        self.logic.rememberModelFile(path)
        self.populateModels()
        self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(path))

    def onModelChanged(self, index=None):
        if self._updatingGUI or self._parameterNode is None:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.model = self.ui.modelComboBox.currentData or "litemedsam"
            self._parameterNode.device = self.ui.deviceComboBox.currentText or "auto"
        self.updateCpuWarning()

    def onSamCheckpointChanged(self, path):
        if self._updatingGUI or self._parameterNode is None:
            return
        self._parameterNode.samCheckpoint = path or ""
        self.logic.rememberSamCheckpoint(path)

    def updateCpuWarning(self):
        p = self._parameterNode
        text = self.logic.cpuWarning(p.model, p.device) if p is not None else ""
        self.ui.cpuWarningLabel.text = text
        self.ui.cpuWarningLabel.visible = bool(text)

    # ---- prompts -----------------------------------------------------------------------------------------
    def observePromptNodes(self):
        for node in self._observedPromptNodes:
            self.removeObserver(node, vtk.vtkCommand.AnyEvent, self.onPromptNodeEvent)
        self._observedPromptNodes = []
        p = self._parameterNode
        if p is None:
            return
        events = (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
                  slicer.vtkMRMLMarkupsNode.PointRemovedEvent, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
        for node in (p.positivePoints, p.negativePoints, p.box):
            if node is None:
                continue
            for event in events:
                self.addObserver(node, event, self.onPromptNodeEvent)
            self._observedPromptNodes.append(node)

    def onPromptNodeEvent(self, caller, event):
        if self.logic.updatingPrompts:
            return
        if event == slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent:
            self._viewAxisHint = self.logic.cursorSliceNode()  # the view the click came from
        if self._parameterNode and self._parameterNode.autoUpdate:
            self.debounceTimer.start()

    def onPlaceToggled(self, kind, on):
        if self._updatingGUI:
            return
        p = self._parameterNode
        if p is None:
            return
        if on:
            if not self.ensureDependencies():
                self.stopPlacing()
                return
            self.logic.ensurePromptNodes(p)
            self.observePromptNodes()
            for other, button in (("positive", self.ui.positiveButton), ("negative", self.ui.negativeButton),
                                  ("box", self.ui.boxButton)):
                if other != kind:
                    button.blockSignals(True)
                    button.checked = False
                    button.blockSignals(False)
            node = {"positive": p.positivePoints, "negative": p.negativePoints, "box": p.box}[kind]
            self.logic.startPlacing(node, persistent=(kind != "box"))
        else:
            self.stopPlacing()

    def stopPlacing(self):
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetCurrentInteractionMode(interactionNode.ViewTransform)

    def updatePlaceButtons(self, caller=None, event=None):
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        placing = interactionNode.GetCurrentInteractionMode() == interactionNode.Place
        activeID = slicer.app.applicationLogic().GetSelectionNode().GetActivePlaceNodeID()
        p = self._parameterNode
        for button, node in ((self.ui.positiveButton, p.positivePoints if p else None),
                             (self.ui.negativeButton, p.negativePoints if p else None),
                             (self.ui.boxButton, p.box if p else None)):
            button.blockSignals(True)
            button.checked = bool(placing and node is not None and node.GetID() == activeID)
            button.blockSignals(False)

    def onClearPrompts(self):
        p = self._parameterNode
        if p is None:
            return
        self.logic.clearPromptNodes(p)
        self.requestRun("reset", force=True)

    def onAutoUpdateToggled(self, on):
        if self._parameterNode is not None and not self._updatingGUI:
            self._parameterNode.autoUpdate = on

    # ---- running -----------------------------------------------------------------------------------------
    def onUpdateRequested(self):
        self.requestRun("sync")

    def requestRun(self, action="sync", force=False):
        p = self._parameterNode
        if p is None or not (p.inputVolume and p.segmentation and p.segmentID):
            self.ui.statusLabel.text = "Select an input volume, a segmentation and a segment first."
            return
        if not self.ensureDependencies():
            return
        viewAxisNode, self._viewAxisHint = self._viewAxisHint, None
        try:
            started = self.logic.run(p, action=action, viewSliceNode=viewAxisNode, segmentEditorNode=None)
        except Exception as exc:  # a scene problem (e.g. non-linear transform): a message, never a crash
            self.ui.statusLabel.text = f"Cannot segment: {exc}"
            logging.error(traceback.format_exc())
            return
        if started:
            self.ui.cancelButton.enabled = True
            self.ui.progressBar.visible = True

    def onSegmentClasses(self):
        p = self._parameterNode
        if p is None or not (p.inputVolume and p.segmentation):
            self.ui.statusLabel.text = "Select an input volume and a segmentation first."
            return
        if not self.ensureDependencies():
            return
        if self.logic.run(p, action="classes"):
            self.ui.cancelButton.enabled = True
            self.ui.progressBar.visible = True

    def onCancel(self):
        self.logic.cancel()
        self.ui.statusLabel.text = "Cancelling…"

    def onProgress(self, fraction, message):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message

    def onFinished(self, status, message):
        """status: "ok" | "unchanged" | "cancelled" | "error"."""
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = message
        if status == "error":
            slicer.util.errorDisplay(message, windowTitle="SAMAdapt3D")
        self.updateGUIFromParameterNode()
        self.updateCpuWarning()

    # ---- fine-tuning -------------------------------------------------------------------------------------
    def setupFineTune(self):
        for name in ("litemedsam-adapter", "sam3d-adapter"):
            self.ui.trainModelComboBox.addItem(name)
        self.ui.trainOutputPathLineEdit.currentPath = self.logic.defaultTrainingFolder()
        self.ui.addCaseButton.connect("clicked()", self.onAddCase)
        self.ui.clearCasesButton.connect("clicked()", self.onClearCases)
        self.ui.fineTuneButton.connect("clicked()", self.onFineTune)
        self.ui.cancelFineTuneButton.connect("clicked()", self.logic.cancelFineTune)
        self.logic.fineTuneCallback = self.onFineTuneEvent

    def onAddCase(self):
        p = self._parameterNode
        if p is None or not (p.inputVolume and p.segmentation and p.segmentID):
            self.ui.fineTuneStatusLabel.text = "Select an input volume, a segmentation and a segment to add."
            return
        label = self.logic.addTrainingCase(p.inputVolume, p.segmentation, p.segmentID)
        self.ui.casesListWidget.addItem(label)

    def onClearCases(self):
        self.logic.clearTrainingCases()
        self.ui.casesListWidget.clear()

    def onFineTune(self):
        if not self.ensureDependencies():
            return
        p = self._parameterNode
        try:
            self.logic.startFineTune(self.ui.trainOutputPathLineEdit.currentPath, self.ui.trainModelComboBox.currentText,
                                     self.ui.epochsSpinBox.value, p.device if p is not None else "auto")
        except Exception as exc:  # bad cases or folder: a message, never a crash
            self.ui.fineTuneStatusLabel.text = f"Cannot fine-tune: {exc}"
            return
        self.ui.fineTuneButton.enabled = False
        self.ui.cancelFineTuneButton.enabled = True
        self.ui.fineTuneProgressBar.visible = True
        self.ui.fineTuneProgressBar.value = 0

    def onFineTuneEvent(self, status, message, fraction=None, modelPath=None):
        """status: "progress" | "ok" | "cancelled" | "error"."""
        self.ui.fineTuneStatusLabel.text = message
        if fraction is not None:
            self.ui.fineTuneProgressBar.value = int(100 * fraction)
        if status == "progress":
            return
        self.ui.fineTuneButton.enabled = True
        self.ui.cancelFineTuneButton.enabled = False
        self.ui.fineTuneProgressBar.visible = False
        if modelPath:
            self.populateModels()
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(modelPath))

    # ---- dependencies ------------------------------------------------------------------------------------
    def ensureDependencies(self, force_report=False):
        missing = self.logic.missingDependencies()
        if not missing and not force_report:
            return True
        if missing:
            lines = "\n".join(f"  • {item}" for item in self.logic.installPlan(missing))
            if not slicer.util.confirmOkCancelDisplay(
                    f"SAMAdapt3D needs these Python packages, which will be installed now:\n\n{lines}\n\n"
                    "This may take several minutes (PyTorch is large). Continue?", windowTitle="SAMAdapt3D"):
                return False
            progress = slicer.util.createProgressDialog(labelText="Installing SAMAdapt3D dependencies…", maximum=0)
            try:
                with slicer.util.WaitCursor():
                    self.logic.installDependencies(missing, lambda text: _set_label(progress, text))
            except Exception as exc:
                progress.close()
                slicer.util.errorDisplay(f"Installing dependencies failed: {exc}", detailedText=traceback.format_exc())
                return False
            progress.close()
        report = self.logic.dependencyReport()
        slicer.util.infoDisplay(report, windowTitle="SAMAdapt3D dependencies")
        self.populateModels()
        return not self.logic.missingDependencies()


def _set_label(progress, text):
    progress.labelText = text
    slicer.app.processEvents()


#
# SAMAdapt3DLogic
#
class SAMAdapt3DLogic(ScriptedLoadableModuleLogic):
    """Orchestrates dependencies, model loading, the worker thread and scene writes. Reads no widgets."""

    SETTINGS_MODEL_FILES = "SAMAdapt3D/ModelFiles"
    SETTINGS_SAM_CHECKPOINT = "SAMAdapt3D/SamCheckpoint"

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.progressCallback = None
        self.finishedCallback = None
        self.updatingPrompts = False
        self._segmenter = None
        self._thread = None
        self._events = queue.Queue()
        self._pending = None
        self._lastClassWrite = None  # (ClassWrite, volume node, segmentation node): undone by the next undo
        self.fineTuneCallback = None
        self.trainingCases = []
        self._trainingJob = None
        self._trainingOut = None
        self._trainingEvents = []
        self._trainingTimer = qt.QTimer()
        self._trainingTimer.setInterval(500)
        self._trainingTimer.connect("timeout()", self._pollTraining)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(50)
        self._pollTimer.connect("timeout()", self._poll)

    def getParameterNode(self):
        if SAMAdapt3DParameterNode is None:
            raise RuntimeError("SAMAdapt3D needs Slicer 5.2 or newer (parameterNodeWrapper)")
        return SAMAdapt3DParameterNode(super().getParameterNode())

    # ---- dependencies ------------------------------------------------------------------------------------
    @staticmethod
    def missingDependencies():
        missing = []
        if importlib.util.find_spec("torch") is None:
            missing.append("torch")
        if importlib.util.find_spec("samadapt3d") is None:
            missing.append("samadapt3d")
        return missing

    @staticmethod
    def installPlan(missing):
        plan = []
        if "torch" in missing:
            has_extension = importlib.util.find_spec("PyTorchUtils") is not None
            plan.append(f"PyTorch (torch{TORCH_REQUIREMENT}) "
                        + ("through the PyTorch extension (picks the CUDA build for your GPU)" if has_extension
                           else "from pip (install the PyTorch extension first for a GPU build)"))
        if "samadapt3d" in missing:
            plan.append(f"SAMAdapt3DLib (samadapt3d) from {LIBRARY_DIR}, with numpy, SimpleITK, safetensors")
        return plan

    @staticmethod
    def installDependencies(missing, status=None):
        status = status or (lambda text: None)
        if "torch" in missing:
            status("Installing PyTorch…")
            try:
                import PyTorchUtils

                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
                if torch is None:
                    raise RuntimeError("PyTorch was not installed")
            except ImportError:
                slicer.util.pip_install(f"torch{TORCH_REQUIREMENT}")
        if "samadapt3d" in missing:
            if not os.path.isfile(os.path.join(LIBRARY_DIR, "pyproject.toml")):
                raise RuntimeError(f"SAMAdapt3DLib not found at {LIBRARY_DIR}; install it with pip from a checkout "
                                   "of the SAMAdapt3D repository (pip install path/to/SAMAdapt3DLib)")
            status("Installing SAMAdapt3DLib…")
            slicer.util.pip_install(f'"{LIBRARY_DIR}"' if " " in LIBRARY_DIR else LIBRARY_DIR)
        importlib.invalidate_caches()

    @staticmethod
    def dependencyReport():
        lines = []
        try:
            import torch

            lines.append(f"PyTorch {torch.__version__}")
            lines.append(f"CUDA available: {torch.cuda.is_available()}"
                         + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
            mps = getattr(torch.backends, "mps", None)
            lines.append(f"Apple MPS available: {bool(mps is not None and mps.is_available())}")
        except Exception as exc:
            lines.append(f"PyTorch: not usable ({exc})")
        try:
            import samadapt3d
            from samadapt3d.models import builtin_model_names

            lines.append(f"samadapt3d {samadapt3d.__version__}; built-in models: {', '.join(builtin_model_names())}")
        except Exception as exc:
            lines.append(f"samadapt3d: not usable ({exc})")
        return "\n".join(lines)

    # ---- models ------------------------------------------------------------------------------------------
    def rememberedModelFiles(self):
        value = qt.QSettings().value(self.SETTINGS_MODEL_FILES) or []
        if isinstance(value, str):
            value = [value]
        return [path for path in value if os.path.exists(path)]

    def rememberedSamCheckpoint(self):
        path = qt.QSettings().value(self.SETTINGS_SAM_CHECKPOINT) or ""
        return path if path and os.path.isfile(path) else ""

    def rememberSamCheckpoint(self, path):
        qt.QSettings().setValue(self.SETTINGS_SAM_CHECKPOINT, path or "")

    def rememberModelFile(self, path):
        files = [f for f in self.rememberedModelFiles() if f != path] + [path]
        qt.QSettings().setValue(self.SETTINGS_MODEL_FILES, files)

    @staticmethod
    def resolvedDevice(device):
        if importlib.util.find_spec("torch") is None:
            return device
        try:
            from samadapt3d.device import resolve_device

            return str(resolve_device(device))
        except Exception:
            return device

    def cpuWarning(self, model, device):
        """A warning when a heavy model (anything but the embedded LiteMedSAM) would run on the CPU."""
        if not model or model == "litemedsam":
            return ""
        if self._segmenter is not None and self._segmenter.model is not None:
            import SAMAdapt3DCore as core

            if not core.is_heavy(self._segmenter.model):
                return ""
        if self.resolvedDevice(device).startswith("cpu"):
            return ("This model runs on the CPU: each update can take a minute or more. Use a CUDA GPU (device "
                    "'auto' or 'cuda') for interactive speed.")
        return ""

    @staticmethod
    def modelKey(p):
        """(model name or file, device, SAM base file or None): what Segmenter.load_model takes."""
        return (p.model, p.device, p.samCheckpoint or None)

    def segmenter(self):
        if self._segmenter is None:
            import SAMAdapt3DCore as core

            self._segmenter = core.Segmenter(progress=self._threadProgress)
        return self._segmenter

    def resetSession(self):
        if self._segmenter is not None and self._segmenter.model is not None:
            self._segmenter.set_model(self._segmenter.model, self._segmenter.model_key)

    def canUndo(self):
        if self._lastClassWrite is not None:
            return True
        s = self._segmenter
        return bool(s is not None and s.session is not None and s.session.can_undo)

    def canRedo(self):
        s = self._segmenter
        return bool(s is not None and s.session is not None and s.session.can_redo)

    # ---- prompt nodes ------------------------------------------------------------------------------------
    def ensurePromptNodes(self, p):
        with slicer.util.NodeModify(p.parameterNode):
            if not p.positivePoints:
                p.positivePoints = self._newPromptNode("vtkMRMLMarkupsFiducialNode", "SAMAdapt3D positive",
                                                       POSITIVE_COLOR)
            if not p.negativePoints:
                p.negativePoints = self._newPromptNode("vtkMRMLMarkupsFiducialNode", "SAMAdapt3D negative",
                                                       NEGATIVE_COLOR)
            if not p.box:
                p.box = self._newPromptNode("vtkMRMLMarkupsROINode", "SAMAdapt3D box", BOX_COLOR)

    @staticmethod
    def _newPromptNode(className, name, color):
        node = slicer.mrmlScene.AddNewNodeByClass(className, name)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        if hasattr(display, "SetActiveColor"):
            display.SetActiveColor(*color)
        if className == "vtkMRMLMarkupsFiducialNode":
            display.SetPointLabelsVisibility(False)
            display.SetGlyphScale(2.5)
        node.SetMarkupLabelFormat("+" if "positive" in name else "-" if "negative" in name else "box")
        return node

    @staticmethod
    def startPlacing(node, persistent=True):
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if node.IsA("vtkMRMLMarkupsROINode") and node.GetNumberOfControlPoints():
            node.RemoveAllControlPoints()  # one box: drawing a new one replaces it
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode.SetPlaceModePersistence(1 if persistent else 0)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def clearPromptNodes(self, p):
        self.updatingPrompts = True
        try:
            for node in (p.positivePoints, p.negativePoints, p.box):
                if node is not None:
                    node.RemoveAllControlPoints()
        finally:
            self.updatingPrompts = False

    def restorePromptNodes(self, p):
        """Rewrite the markups from the session's prompts (after undo / redo) without triggering a run."""
        pos, neg, box = self.segmenter().session_prompts_ras()
        self.updatingPrompts = True
        try:
            for node, points in ((p.positivePoints, pos), (p.negativePoints, neg)):
                if node is None:
                    continue
                with slicer.util.NodeModify(node):
                    node.RemoveAllControlPoints()
                    for ras in points:
                        node.AddControlPointWorld([float(v) for v in ras])
            if p.box is not None:
                p.box.RemoveAllControlPoints()
                if box is not None:
                    self._setBoxFromIndex(p.box, p.inputVolume, *box)
        finally:
            self.updatingPrompts = False

    @staticmethod
    def _setBoxFromIndex(roi, volumeNode, lo, hi):
        import numpy as np
        import SAMAdapt3DSceneBridge as bridge

        m = bridge.ijk_to_world_ras_matrix(volumeNode)
        corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        ras = (m[:3, :3] @ corners.T).T + m[:3, 3]
        roi.SetCenterWorld(*((ras.min(axis=0) + ras.max(axis=0)) / 2))
        roi.SetSizeWorld(*(ras.max(axis=0) - ras.min(axis=0)))

    @staticmethod
    def cursorSliceNode():
        """The slice view under the mouse (None for a 3D view): its normal gives the click's view axis."""
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is None:
            return None
        xyz = [0.0, 0.0, 0.0]
        return crosshair.GetCursorPositionXYZ(xyz)

    # ---- segment editor settings ------------------------------------------------------------------------
    @staticmethod
    def segmentEditorNode():
        """The Segment Editor's parameter node (masking / overwrite settings), if the editor was ever opened."""
        node = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if node is None:
            nodes = slicer.util.getNodesByClass("vtkMRMLSegmentEditorNode")
            node = nodes[0] if nodes else None
        return node

    @staticmethod
    def saveSegmentEditorUndoState(segmentationNode):
        """Let the Segment Editor's own undo (Ctrl+Z there) restore the segmentation before our write."""
        try:
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            if editor.segmentationNode() == segmentationNode:
                editor.saveStateForUndo()
        except Exception:  # the editor widget may not exist yet: our own undo still works
            pass

    # ---- running -----------------------------------------------------------------------------------------
    def busy(self):
        return self._thread is not None and self._thread.is_alive()

    def run(self, p, action="sync", viewSliceNode=None, segmentEditorNode=None):
        """Start a run on the worker thread (returns True), or queue it if one is running (returns False)."""
        if self.busy():
            self._pending = (p, action, viewSliceNode, segmentEditorNode)
            return False
        import SAMAdapt3DSceneBridge as bridge

        if action == "undo" and self._lastClassWrite is not None:
            self.undoClasses()
            return False
        segmenter = self.segmenter()
        volume = bridge.volume_from_node(p.inputVolume)
        if action == "classes":
            job = dict(p=p, action=action, volume=volume, modelKey=self.modelKey(p), editorNode=None)
            self._thread = threading.Thread(target=self._work, args=(job,), name="SAMAdapt3D-worker", daemon=True)
            self._thread.start()
            self._pollTimer.start()
            return True
        viewAxis = bridge.view_axis_from_slice_node(viewSliceNode, volume) if viewSliceNode is not None else None
        request = None
        if segmenter.session is not None:
            request = segmenter.make_request(p.inputVolume, p.segmentation, p.segmentID, p.positivePoints,
                                             p.negativePoints, p.box, view_axis=viewAxis, action=action)
        job = dict(p=p, action=action, request=request, modelKey=self.modelKey(p), viewAxis=viewAxis,
                   editorNode=segmentEditorNode or self.segmentEditorNode())
        self._thread = threading.Thread(target=self._work, args=(job,), name="SAMAdapt3D-worker", daemon=True)
        self._thread.start()
        self._pollTimer.start()
        return True

    def _work(self, job):
        """Worker thread: no scene access, no Qt. Results go through the queue."""
        try:
            segmenter = self.segmenter()
            model, device, samCheckpoint = job["modelKey"]
            if segmenter.model is None or segmenter.model_key != job["modelKey"]:
                segmenter.load_model(model, device=device, sam_checkpoint=samCheckpoint)
                if job["action"] != "classes":
                    self._events.put(("need_request", job))  # the request must be read on the main thread
                    return
            if job["action"] == "classes":
                labels, names = segmenter.compute_classes(job["volume"])
                self._events.put(("classes", job, labels, names))
                return
            mask = segmenter.compute(job["request"])
            self._events.put(("done", job, mask))
        except BaseException as exc:  # noqa: BLE001 - everything becomes a message
            self._events.put(("error", job, exc, traceback.format_exc()))

    def _threadProgress(self, fraction, message):
        self._events.put(("progress", fraction, message))

    def cancel(self):
        if self._segmenter is not None:
            self._segmenter.cancel()

    def shutdown(self):
        self.cancel()
        self.cancelFineTune()
        self._pollTimer.stop()

    def _poll(self):
        """Main thread: apply results, report progress."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            kind = event[0]
            if kind == "progress":
                if self.progressCallback:
                    self.progressCallback(event[1], event[2])
            elif kind == "need_request":
                job = event[1]
                self._thread = None
                self.run(job["p"], job["action"], None, job["editorNode"])
                return
            elif kind == "done":
                self._thread = None
                self._apply(event[1], event[2])
            elif kind == "classes":
                self._thread = None
                self._applyClasses(event[1], event[2], event[3])
            elif kind == "error":
                self._thread = None
                self._finish(*self.describeError(event[2], event[3]))
        if not self.busy() and self._events.empty():
            self._pollTimer.stop()
            if self._pending is not None:
                pending, self._pending = self._pending, None
                self.run(*pending)

    def _apply(self, job, mask):
        import SAMAdapt3DCore as core

        p, request = job["p"], job["request"]
        notes = list(request.messages) if request is not None else []
        if mask is None:
            self._finish("unchanged", "; ".join(notes) or "Up to date.")
            return
        self.saveSegmentEditorUndoState(p.segmentation)
        self._lastClassWrite = None  # prompt edits take over the undo button
        result = core.write_result(mask, p.inputVolume, p.segmentation, p.segmentID, job["editorNode"])
        if job["action"] in ("undo", "redo"):
            self.restorePromptNodes(p)
        text = f"Segment updated: {result.voxels} voxels"
        if result.blocked:
            text += f" ({result.blocked} voxels outside the editable area were left out)"
        if result.overwritten:
            text += f"; removed from {len(result.overwritten)} other segment(s) (overwrite setting)"
        self._finish("ok", "; ".join([text] + notes))

    def _applyClasses(self, job, labels, names):
        """Main thread: one segment per class, remembered for one undo."""
        import SAMAdapt3DCore as core

        p = job["p"]
        self.saveSegmentEditorUndoState(p.segmentation)
        write = core.write_classes(labels, names, p.inputVolume, p.segmentation)
        self._lastClassWrite = (write, p.inputVolume, p.segmentation)
        self._finish("ok", write.summary())
        return write

    def undoClasses(self):
        import SAMAdapt3DCore as core

        write, volumeNode, segmentationNode = self._lastClassWrite
        self._lastClassWrite = None
        core.undo_classes(write, volumeNode, segmentationNode)
        self._finish("ok", "Class segments restored to what they were before 'Segment all classes'.")

    def _finish(self, status, message):
        if self.finishedCallback:
            self.finishedCallback(status, message)
        else:
            logging.info(f"SAMAdapt3D: {message}")

    @staticmethod
    def describeError(exc, tb=""):
        """A message a user can act on; Slicer stays usable (the session is unchanged on failure)."""
        from samadapt3d.errors import CancelledError, SAMAdapt3DError

        if isinstance(exc, CancelledError):
            return "cancelled", "Cancelled; nothing was changed."
        text = str(exc)
        if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:
                pass
            return "error", ("The GPU ran out of memory. Nothing was changed. Close other GPU programs, use a "
                             "smaller model, or choose device 'cpu' (slower).")
        if isinstance(exc, SAMAdapt3DError):
            return "error", text
        logging.error(tb)
        return "error", f"Segmentation failed: {type(exc).__name__}: {text} (details in the Python console)"

    # ---- fine-tuning (a separate process) ----------------------------------------------------------------
    @staticmethod
    def defaultTrainingFolder():
        return os.path.join(os.path.expanduser("~"), "SAMAdapt3D-finetune")

    def addTrainingCase(self, volumeNode, segmentationNode, segmentID):
        import SAMAdapt3DTraining as training

        self.trainingCases.append(training.TrainingCase(volumeNode, segmentationNode, segmentID))
        segment = segmentationNode.GetSegmentation().GetSegment(segmentID)
        return f"{volumeNode.GetName()}: {segment.GetName() if segment else segmentID}"

    def clearTrainingCases(self):
        self.trainingCases = []

    def startFineTune(self, outputFolder, model="litemedsam-adapter", epochs=20, device="auto"):
        """Export the cases and start `samadapt3d train` in a separate process; progress goes to fineTuneCallback."""
        import time

        import SAMAdapt3DTraining as training

        if self._trainingJob is not None and self._trainingJob.running:
            raise RuntimeError("a fine-tuning run is already going")
        run = os.path.join(outputFolder or self.defaultTrainingFolder(), time.strftime("run-%Y%m%d-%H%M%S"))
        csvPath, target = training.export_training_set(self.trainingCases, os.path.join(run, "data"))
        command = training.training_command(csvPath, target, os.path.join(run, "model"), model=model, epochs=epochs,
                                            device=device)
        self._trainingOut = os.path.join(run, "model")
        self._trainingEvents = []
        self._trainingJob = training.TrainingJob(command, log_path=os.path.join(run, "training.log"))
        self._trainingJob.start()
        self._trainingTimer.start()
        self._fineTune("progress", f"Training '{target}' on {len(self.trainingCases)} case(s) ({model})…", 0.0)
        return self._trainingJob

    def cancelFineTune(self):
        if self._trainingJob is not None and self._trainingJob.running:
            self._fineTune("progress", "Stopping (saving a checkpoint)…")
            threading.Thread(target=self._trainingJob.cancel, daemon=True).start()

    def _pollTraining(self):
        import SAMAdapt3DTraining as training

        if self._trainingJob is None:
            self._trainingTimer.stop()
            return
        for event in self._trainingJob.events():
            self._trainingEvents.append(event)
            if event.get("event") == "exit":
                self._trainingTimer.stop()
                self._finishFineTune(event)
                return
            if event.get("event") == "log":
                continue
            fraction = None
            if "epoch" in event and "epochs" in event:
                fraction = float(event["epoch"]) / max(float(event["epochs"]), 1.0)
            self._fineTune("progress", training.describe_progress(event), fraction)

    def _finishFineTune(self, exitEvent):
        import SAMAdapt3DTraining as training

        if exitEvent.get("cancelled"):
            self._fineTune("cancelled", f"Stopped. Checkpoints and log are in {os.path.dirname(self._trainingOut)}.")
            return
        if exitEvent.get("returncode") != 0:
            lines = [e.get("text", "") for e in self._trainingEvents if e.get("event") in ("log", "error")] + \
                    [e.get("message", "") for e in self._trainingEvents if e.get("event") == "error"]
            detail = next((line for line in reversed(lines) if line), "see training.log")
            self._fineTune("error", f"Training failed: {detail}")
            return
        modelPath = training.find_trained_model(self._trainingOut, self._trainingEvents)
        if modelPath is None:
            self._fineTune("error", f"Training finished but wrote no model file in {self._trainingOut}.")
            return
        self.rememberModelFile(str(modelPath))
        self._fineTune("ok", f"Fine-tuned model saved: {modelPath}. It is now in the model list.", 1.0, str(modelPath))

    def _fineTune(self, status, message, fraction=None, modelPath=None):
        if self.fineTuneCallback:
            self.fineTuneCallback(status, message, fraction, modelPath)
        else:
            logging.info(f"SAMAdapt3D fine-tune: {message}")

    # ---- synchronous API (tests, scripting) -------------------------------------------------------------
    def segmentNow(self, p, action="sync", viewAxis=None, segmentEditorNode=None):
        """Load the model if needed, run in this thread and write the segment. Returns the WriteResult or None."""
        import SAMAdapt3DCore as core

        segmenter = self.segmenter()
        if segmenter.model is None or segmenter.model_key != self.modelKey(p):
            segmenter.load_model(*self.modelKey(p))
        request = segmenter.make_request(p.inputVolume, p.segmentation, p.segmentID, p.positivePoints,
                                         p.negativePoints, p.box, view_axis=viewAxis, action=action)
        mask = segmenter.compute(request)
        if mask is None:
            return None
        return core.write_result(mask, p.inputVolume, p.segmentation, p.segmentID,
                                 segmentEditorNode or self.segmentEditorNode())

    def segmentClassesNow(self, p):
        """Multi-class models: load if needed, segment every class in this thread, write one segment per class.
        Returns the ClassWrite (see SAMAdapt3DCore)."""
        import SAMAdapt3DSceneBridge as bridge

        segmenter = self.segmenter()
        if segmenter.model is None or segmenter.model_key != self.modelKey(p):
            segmenter.load_model(*self.modelKey(p))
        labels, names = segmenter.compute_classes(bridge.volume_from_node(p.inputVolume))
        return self._applyClasses(dict(p=p), labels, names)


#
# SAMAdapt3DTest
#
class SAMAdapt3DTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode: Reload and Test, or ctest -R py_SAMAdapt3D)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SceneBridge()
        self.setUp()
        self.test_EmbeddedModelOnCTChest()
        self.setUp()
        self.test_MultiClassModelWritesOneSegmentPerClass()

    def test_SceneBridge(self):
        """Volume geometry and a RAS click through the bridge agree with Slicer's IJKToRAS."""
        import numpy as np
        import SAMAdapt3DSceneBridge as bridge

        self.delayDisplay("Scene bridge")
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        slicer.util.updateVolumeFromArray(node, np.zeros((5, 6, 7), dtype=np.int16))
        node.SetSpacing(0.5, 0.75, 2.0)
        node.SetOrigin(10, -5, 3)
        volume = bridge.volume_from_node(node)
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        ras = m.MultiplyPoint([3, 2, 1, 1])[:3]
        np.testing.assert_allclose(volume.physical_to_index(ras, "ras"), [3, 2, 1], atol=1e-6)

    def test_EmbeddedModelOnCTChest(self):
        """CTChest with a 10 mm-radius ball of contrast (600 HU) inserted in the mediastinum, so the answer is
        known: one click at its centre must give a segment of about the ball's volume, centred on it, and a
        finished neighbouring segment stays untouched under the Segment Editor's "outside all segments" masking."""
        import numpy as np
        import SampleData
        import SAMAdapt3DSceneBridge as bridge

        logic = SAMAdapt3DLogic()
        missing = logic.missingDependencies()
        if missing:
            logic.installDependencies(missing)
        self.delayDisplay("Loading CTChest")
        volumeNode = SampleData.SampleDataLogic().downloadSample("CTChest")
        self.assertIsNotNone(volumeNode)
        array = slicer.util.arrayFromVolume(volumeNode)
        volume = bridge.volume_from_node(volumeNode)
        centre = np.array(volume.size_ijk) // 2  # (i, j, k)
        radiusMm = 10.0
        ijkToRas = bridge.ijk_to_world_ras_matrix(volumeNode)
        reach = np.ceil(radiusMm / volume.spacing).astype(int) + 1  # voxels per axis (i, j, k) around the centre
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, volume.size_ijk)
        k, j, i = np.mgrid[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        offsetsMm = (np.stack([i, j, k], axis=-1) - centre) @ ijkToRas[:3, :3].T
        ball = np.zeros(array.shape, bool)
        ball[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = np.linalg.norm(offsetsMm, axis=-1) <= radiusMm
        array[ball] = 600
        slicer.util.arrayFromVolumeModified(volumeNode)

        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentID = bridge.add_segment(segmentationNode, "ball")
        neighbourID = bridge.add_segment(segmentationNode, "finished")
        neighbour = np.zeros(array.shape, bool)
        neighbour[:, :, centre[0] + 4:] = True  # covers the ball's right part (i > centre + 4)
        bridge.write_segment_mask(segmentationNode, neighbourID, neighbour, volumeNode)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
        editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)

        p = logic.getParameterNode()
        p.inputVolume = volumeNode
        p.segmentation = segmentationNode
        p.segmentID = segmentID
        p.model = "litemedsam"
        p.device = "auto"
        logic.ensurePromptNodes(p)
        p.positivePoints.AddControlPoint(*(ijkToRas @ np.r_[centre, 1.0])[:3])

        self.delayDisplay("Running the embedded model")
        result = logic.segmentNow(p, viewAxis=2, segmentEditorNode=editorNode)
        self.assertIsNotNone(result)
        got = bridge.segment_mask(segmentationNode, segmentID, volumeNode)
        expected = ball & ~neighbour
        voxels = int(got.sum())
        self.assertGreater(voxels, 0.5 * expected.sum(), f"{voxels} voxels, expected about {expected.sum()}")
        self.assertLess(voxels, 2.0 * expected.sum(), f"{voxels} voxels, expected about {expected.sum()}")
        dice = 2.0 * (got & expected).sum() / (got.sum() + expected.sum())
        self.assertGreater(dice, 0.7, f"Dice {dice:.3f}")
        centroid = np.argwhere(got).mean(axis=0)[::-1]  # (i, j, k)
        distanceMm = np.linalg.norm(ijkToRas[:3, :3] @ (centroid - centre))
        self.assertLess(distanceMm, 0.5 * radiusMm, f"centroid {distanceMm:.1f} mm from the ball's centre")
        self.assertFalse((got & neighbour).any(), "the masked neighbour's voxels were written")
        self.assertTrue(np.array_equal(bridge.segment_mask(segmentationNode, neighbourID, volumeNode), neighbour))

        # a click outside the volume is ignored with a message and changes nothing
        p.positivePoints.AddControlPoint(*(ijkToRas @ np.r_[centre + [0, 0, 10 * volume.size_ijk[2]], 1.0])[:3])
        request = logic.segmenter().make_request(volumeNode, segmentationNode, segmentID, p.positivePoints,
                                                 p.negativePoints, p.box)
        self.assertTrue(any("outside the volume" in m for m in request.messages))
        self.assertIsNone(logic.segmenter().compute(request))

        # undo returns to the empty segment
        self.assertIsNotNone(logic.segmentNow(p, action="undo", segmentEditorNode=editorNode))
        self.assertEqual(int(bridge.segment_mask(segmentationNode, segmentID, volumeNode).sum()), 0)
        self.delayDisplay("Test passed")

    def test_MultiClassModelWritesOneSegmentPerClass(self):
        """A (randomly initialised, tiny) SAMed: 'Segment all classes' adds one segment per class present, named
        after the class; an existing segment of a class's name is reused; undo puts everything back."""
        import numpy as np
        import torch
        import SAMAdapt3DSceneBridge as bridge
        from samadapt3d.families.samed import SAMedModel

        logic = SAMAdapt3DLogic()
        torch.manual_seed(5)
        model = SAMedModel("vit_tiny", rank=4)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        rng = np.random.default_rng(0)
        slicer.util.updateVolumeFromArray(
            volumeNode, (rng.normal(0, 120, (3, 40, 36)) + np.linspace(-200, 300, 36)).astype(np.int16))
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        liverID = bridge.add_segment(segmentationNode, "liver")
        p = logic.getParameterNode()
        p.inputVolume = volumeNode
        p.segmentation = segmentationNode
        p.model = "tiny-samed"
        p.device = "cpu"
        logic.segmenter().set_model(model.eval(), logic.modelKey(p))
        write = logic.segmentClassesNow(p)
        names = [name for name, (_, voxels, _) in write.written.items() if voxels]
        self.assertGreaterEqual(len(names), 2)
        for name in names:
            self.assertIsNotNone(bridge.segment_id_by_name(segmentationNode, name))
        self.assertEqual(bridge.segment_id_by_name(segmentationNode, "liver"), liverID)
        self.assertTrue(logic.canUndo())
        logic.run(p, action="undo")
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
