"""SAMAdapt3D: the setup module of the SAMAdapt3D extension.

Interactive clicking is the Segment Editor effect (SegmentEditorSAMAdapt3D.py, code in SAMAdapt3DSlicerLib/effect*.py);
this module holds what does not belong in an effect: the model (embedded LiteMedSAM, files, published downloads),
the device, the local or remote inference server, the server's dependencies, "Segment all classes" and fine-tuning.

This file holds the Module (metadata) and the Widget (UI wiring only); the Logic is in SAMAdapt3DSlicerLib/logic.py
and the self-test in self_test.py, both imported here, where Slicer looks for them. Nothing is installed or
downloaded at import time, and Slicer's process never imports torch.
"""
from __future__ import annotations

import os

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from SAMAdapt3DSlicerLib.logic import DEFAULT_MODEL, DEVICES, SAMAdapt3DLogic, installSavedServer
from SAMAdapt3DSlicerLib.self_test import SAMAdapt3DTest  # noqa: F401  (Slicer finds <Module>Test in this module)

__all__ = ["SAMAdapt3D", "SAMAdapt3DWidget", "SAMAdapt3DLogic", "SAMAdapt3DTest"]
EFFECT_NAME = "SAMAdapt3D"


class SAMAdapt3D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAMAdapt3D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["SAMAdapt3D developers"]
        self.parent.helpText = (
            "Setup for SAMAdapt3D, interactive 3D segmentation with prompted Segment Anything models. Clicks and "
            "boxes are in the Segment Editor's SAMAdapt3D effect; here: model files and downloads, device, local or "
            "remote server, dependencies, 'Segment all classes' for multi-class models, and fine-tuning. See "
            "docs/SLICER.md in the repository."
        )
        self.parent.acknowledgementText = (
            "Builds on Segment Anything (Meta AI), MedSAM / LiteMedSAM (Ma et al.) and 3DSAM-adapter (Gong et al.)."
        )
        # the saved server settings apply to the effect even if this panel is never opened
        slicer.app.connect("startupCompleted()", installSavedServer)


class SAMAdapt3DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False

    # ---- setup / teardown -----------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMAdapt3D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)  # the .ui passes it on to every MRML widget (its connections)

        self.logic = SAMAdapt3DLogic()
        self.logic.classesCallback = self.onClassesEvent
        self.logic.downloadCallback = self.onDownloadEvent
        self.logic.installCallback = self.onInstallEvent
        self.logic.serverCallback = self.onServerEvent
        self.logic.fineTuneCallback = self.onFineTuneEvent

        for device in DEVICES:
            self.ui.deviceComboBox.addItem(device)
        self.populateModels()
        self.populateCatalogue()
        self.loadServerSettings()

        self.ui.openEditorButton.connect("clicked()", self.onOpenEditor)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.addModelButton.connect("clicked()", self.onAddModelFile)
        self.ui.samCheckpointPathLineEdit.connect("currentPathChanged(QString)", self.onSamCheckpointChanged)
        self.ui.downloadButton.connect("clicked()", self.onDownload)
        self.ui.cancelDownloadButton.connect("clicked()", self.logic.cancelDownload)
        self.ui.openPageButton.connect("clicked()", self.onOpenPage)
        self.ui.localServerRadioButton.connect("toggled(bool)", self.onServerSettingsChanged)
        self.ui.serverPythonPathLineEdit.connect("currentPathChanged(QString)", self.onServerSettingsChanged)
        self.ui.serverUrlLineEdit.connect("editingFinished()", self.onServerSettingsChanged)
        self.ui.serverTokenLineEdit.connect("editingFinished()", self.onServerSettingsChanged)
        self.ui.checkServerButton.connect("clicked()", self.onCheckServer)
        self.ui.checkDependenciesButton.connect("clicked()", self.onCheckDependencies)
        self.ui.installDependenciesButton.connect("clicked()", self.onInstallDependencies)
        self.ui.cancelInstallButton.connect("clicked()", self.logic.cancelInstall)
        self.ui.classesButton.connect("clicked()", self.onSegmentClasses)
        self.ui.undoClassesButton.connect("clicked()", self.onUndoClasses)
        self.ui.cancelClassesButton.connect("clicked()", self.logic.cancelClasses)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.trainSegmentSelector.setCurrentNode)
        self.setupFineTune()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        """Module reload or exit: observers, the parameter node GUI link, timers, threads and the server go."""
        self.setParameterNode(None)
        self.removeObservers()
        if self.logic:
            self.logic.shutdown()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        self.logic.onSceneClose()
        self.ui.casesListWidget.clear()
        self.ui.undoClassesButton.enabled = False

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---- parameter node -------------------------------------------------------------------------------------
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.samCheckpoint:
            p.samCheckpoint = self.logic.setting("SamCheckpoint")
        if not p.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                p.inputVolume = first

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
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
            index = self.ui.modelComboBox.findData(p.model)
            self.ui.modelComboBox.setCurrentIndex(max(index, 0))
            self.ui.deviceComboBox.setCurrentIndex(max(0, self.ui.deviceComboBox.findText(p.device)))
            if self.ui.samCheckpointPathLineEdit.currentPath != p.samCheckpoint:
                self.ui.samCheckpointPathLineEdit.currentPath = p.samCheckpoint
            self.ui.trainSegmentSelector.setCurrentNode(p.segmentation)
            busy = self.logic.busy("classes")
            self.ui.classesButton.enabled = bool(p.inputVolume and p.segmentation) and not busy
            self.ui.undoClassesButton.enabled = self.logic.canUndoClasses() and not busy
        finally:
            self._updatingGUI = False

    # ---- interactive segmentation lives in the Segment Editor -------------------------------------------------
    def onOpenEditor(self):
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        p = self._parameterNode
        if p is not None and p.segmentation:
            editor.setSegmentationNode(p.segmentation)
        if p is not None and p.inputVolume:
            editor.setSourceVolumeNode(p.inputVolume)
        editor.setActiveEffectByName(EFFECT_NAME)

    # ---- models -------------------------------------------------------------------------------------------
    def populateModels(self):
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("LiteMedSAM (embedded default)", DEFAULT_MODEL)
        for path in self.logic.rememberedModelFiles():
            combo.addItem(os.path.basename(path), path)
            combo.setItemData(combo.count - 1, path, qt.Qt.ToolTipRole)
        combo.blockSignals(False)

    def onAddModelFile(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Add a model file", self.logic.modelsFolder(),
            "Model weights (*.pth *.pt *.pth.tar *.tar *.ckpt *.safetensors);;All files (*)")
        if path:
            self.addModelFile(path)

    def addModelFile(self, path):
        self.logic.rememberModelFile(path)
        self.populateModels()
        self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(path))

    def onModelChanged(self, index=None):
        if self._updatingGUI or self._parameterNode is None:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.model = self.ui.modelComboBox.currentData or DEFAULT_MODEL
            self._parameterNode.device = self.ui.deviceComboBox.currentText or "auto"
        self.logic.chooseModel(self._parameterNode.model, self._parameterNode.device)
        self.applyServerSettings()  # the device is the server's

    def onSamCheckpointChanged(self, path):
        if self._updatingGUI or self._parameterNode is None:
            return
        self._parameterNode.samCheckpoint = path or ""
        self.logic.setSetting("SamCheckpoint", path or "")

    # ---- downloads ---------------------------------------------------------------------------------------
    def populateCatalogue(self):
        from SAMAdapt3DSlicerLib import downloads

        self.ui.catalogueListWidget.clear()
        for entry in downloads.CATALOGUE:
            size = f"~{entry.size_mb:,.0f} MB" if entry.size_mb else "size not published"
            how = "download" if entry.downloadable else "browser download"
            item = qt.QListWidgetItem(f"{entry.title} — {size}, {how}")
            item.setData(qt.Qt.UserRole, entry.key)
            item.setToolTip(f"{entry.page}\nLicence: {entry.licence}\n{entry.note}")
            self.ui.catalogueListWidget.addItem(item)

    def selectedCatalogueEntry(self):
        from SAMAdapt3DSlicerLib import downloads

        item = self.ui.catalogueListWidget.currentItem()
        return downloads.catalogue_entry(item.data(qt.Qt.UserRole)) if item is not None else None

    def onOpenPage(self):
        entry = self.selectedCatalogueEntry()
        if entry is not None:
            qt.QDesktopServices.openUrl(qt.QUrl(entry.page))

    def onDownload(self):
        from SAMAdapt3DSlicerLib import downloads

        entry = self.selectedCatalogueEntry()
        if entry is None:
            self.ui.downloadStatusLabel.text = "Select a file in the list first."
            return
        if not entry.downloadable:
            self.ui.downloadStatusLabel.text = f"{entry.note}. Source: {entry.page}"
            return
        folder = self.logic.modelsFolder()
        if not slicer.util.confirmOkCancelDisplay(downloads.consent_text(entry, folder), windowTitle="SAMAdapt3D"):
            return
        try:
            self.logic.download(entry, folder)
        except RuntimeError as exc:
            self.ui.downloadStatusLabel.text = str(exc)
            return
        self.ui.downloadButton.enabled = False
        self.ui.cancelDownloadButton.enabled = True
        self.ui.downloadProgressBar.visible = True

    def onDownloadEvent(self, status, message, fraction=None):
        self.ui.downloadStatusLabel.text = message
        _progress(self.ui.downloadProgressBar, fraction)
        if status == "progress":
            return
        self.ui.downloadButton.enabled = True
        self.ui.cancelDownloadButton.enabled = False
        self.ui.downloadProgressBar.visible = False
        if status == "ok" and self.logic.lastDownload is not None:
            entry, path = self.logic.lastDownload
            if entry.kind == "sam-base":
                self.ui.samCheckpointPathLineEdit.currentPath = path
            else:
                self.addModelFile(path)

    # ---- device and server -------------------------------------------------------------------------------
    def loadServerSettings(self):
        from SAMAdapt3DSlicerLib import server_control

        settings = self.logic.serverSettings()
        self.ui.localServerRadioButton.checked = settings.mode == server_control.LOCAL
        self.ui.remoteServerRadioButton.checked = settings.mode == server_control.REMOTE
        self.ui.serverPythonPathLineEdit.currentPath = settings.python
        self.ui.serverUrlLineEdit.text = settings.url
        self.ui.serverTokenLineEdit.text = settings.token
        self.applyServerSettings()

    def currentServerSettings(self):
        from SAMAdapt3DSlicerLib import server_control

        mode = server_control.LOCAL if self.ui.localServerRadioButton.checked else server_control.REMOTE
        device = self._parameterNode.device if self._parameterNode is not None else "auto"
        return server_control.ServerSettings(mode, self.ui.serverPythonPathLineEdit.currentPath,
                                             self.ui.serverUrlLineEdit.text, self.ui.serverTokenLineEdit.text, device)

    def applyServerSettings(self):
        settings = self.currentServerSettings()
        local = settings.mode == "local"
        for widget in (self.ui.serverPythonPathLineEdit, self.ui.serverPythonLabel):
            widget.enabled = local
        for widget in (self.ui.serverUrlLineEdit, self.ui.serverTokenLineEdit, self.ui.serverUrlLabel,
                       self.ui.serverTokenLabel):
            widget.enabled = not local
        problem = self.logic.applyServerSettings(settings)
        self.ui.serverStatusLabel.text = problem
        return problem

    def onServerSettingsChanged(self, *args):
        if not self._updatingGUI:
            self.applyServerSettings()

    def onCheckServer(self):
        if self.applyServerSettings():
            return
        try:
            self.logic.checkServer()
        except RuntimeError as exc:
            self.ui.serverStatusLabel.text = str(exc)

    def onServerEvent(self, status, message, fraction=None):
        self.ui.serverStatusLabel.text = message

    # ---- dependencies ------------------------------------------------------------------------------------
    def onCheckDependencies(self):
        self.applyServerSettings()
        self.ui.dependenciesStatusLabel.text = f"Checking {self.logic.serverPython()}…"
        try:
            self.logic.checkDependencies()
        except RuntimeError as exc:
            self.ui.dependenciesStatusLabel.text = str(exc)

    def onInstallDependencies(self):
        if self.logic.environment is None:
            self.ui.dependenciesStatusLabel.text = "Press Check first: it finds what the server's Python lacks."
            return
        try:
            steps = self.logic.installPlan(self.ui.torchIndexLineEdit.text.strip())
        except (RuntimeError, FileNotFoundError) as exc:
            self.ui.dependenciesStatusLabel.text = str(exc)
            return
        if not steps:
            self.ui.dependenciesStatusLabel.text = "Nothing is missing."
            return
        lines = "\n".join(f"  • {s.title}" for s in steps)
        if not slicer.util.confirmOkCancelDisplay(
                f"Install into {self.logic.serverPython()}:\n\n{lines}\n\nSlicer stays usable meanwhile; Cancel stops "
                "the installation.", windowTitle="SAMAdapt3D"):
            return
        self.logic.installDependencies(steps)
        self.ui.installDependenciesButton.enabled = False
        self.ui.cancelInstallButton.enabled = True
        self.ui.installProgressBar.visible = True

    def onInstallEvent(self, status, message, fraction=None):
        self.ui.dependenciesStatusLabel.text = message
        _progress(self.ui.installProgressBar, fraction)
        if status != "progress":
            self.ui.installDependenciesButton.enabled = True
            self.ui.cancelInstallButton.enabled = False
            self.ui.installProgressBar.visible = False

    # ---- segment all classes -----------------------------------------------------------------------------
    def onSegmentClasses(self):
        try:
            self.logic.segmentClasses(self._parameterNode)
        except Exception as exc:  # a scene or settings problem: a message, never a crash
            self.ui.classesStatusLabel.text = f"Cannot segment: {exc}"
            return
        self.ui.cancelClassesButton.enabled = True
        self.ui.classesProgressBar.visible = True
        self.updateGUIFromParameterNode()

    def onClassesEvent(self, status, message, fraction=None):
        self.ui.classesStatusLabel.text = message
        _progress(self.ui.classesProgressBar, fraction)
        if status == "progress":
            return
        self.ui.cancelClassesButton.enabled = False
        self.ui.classesProgressBar.visible = False
        self.updateGUIFromParameterNode()

    def onUndoClasses(self):
        if self.logic.canUndoClasses():
            self.ui.classesStatusLabel.text = self.logic.undoClasses()
        self.updateGUIFromParameterNode()

    # ---- fine-tuning -------------------------------------------------------------------------------------
    def setupFineTune(self):
        for name in ("litemedsam-adapter", "sam3d-adapter"):
            self.ui.trainModelComboBox.addItem(name)
        self.ui.trainOutputPathLineEdit.currentPath = self.logic.defaultTrainingFolder()
        self.ui.addCaseButton.connect("clicked()", self.onAddCase)
        self.ui.clearCasesButton.connect("clicked()", self.onClearCases)
        self.ui.fineTuneButton.connect("clicked()", self.onFineTune)
        self.ui.cancelFineTuneButton.connect("clicked()", self.logic.cancelFineTune)

    def onAddCase(self):
        p = self._parameterNode
        segmentID = self.ui.trainSegmentSelector.currentSegmentID()
        if p is None or not (p.inputVolume and p.segmentation and segmentID):
            self.ui.fineTuneStatusLabel.text = "Select an input volume, a segmentation and a segment to add."
            return
        self.ui.casesListWidget.addItem(self.logic.addTrainingCase(p.inputVolume, p.segmentation, segmentID))

    def onClearCases(self):
        self.logic.clearTrainingCases()
        self.ui.casesListWidget.clear()

    def onFineTune(self):
        p = self._parameterNode
        try:
            self.logic.startFineTune(self.ui.trainOutputPathLineEdit.currentPath, self.ui.trainModelComboBox.currentText,
                                     self.ui.epochsSpinBox.value, p.device if p is not None else "auto",
                                     (p.samCheckpoint or None) if p is not None else None)
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
        _progress(self.ui.fineTuneProgressBar, fraction)
        if status == "progress":
            return
        self.ui.fineTuneButton.enabled = True
        self.ui.cancelFineTuneButton.enabled = False
        self.ui.fineTuneProgressBar.visible = False
        if modelPath:
            self.addModelFile(modelPath)


def _progress(bar, fraction):
    """A fraction shows as a percentage; None as a busy bar."""
    if fraction is None:
        bar.maximum = 0
    else:
        bar.maximum = 100
        bar.value = int(100 * fraction)
