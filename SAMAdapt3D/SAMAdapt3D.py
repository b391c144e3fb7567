"""SAMAdapt3D: interactive, prompted 3D segmentation with adapter-augmented Segment Anything models.

This file holds the Module (metadata) and the Widget (UI wiring only). Everything else is in the package
SAMAdapt3DSlicerLib (Slicer's module scanner takes every .py file beside this one for a module, so helpers live in a
package): the Logic (dependencies, model, worker thread, scene writes, fine-tuning) in logic.py and the self-test in
self_test.py, both imported here, where Slicer looks for them; geometry and scene conversions in scene_bridge.py, the
Qt-free request -> session -> segment flow in core.py, fine-tuning's export and child process in training.py; those
three are tested headless with slicer-core (Testing/).
Nothing is installed at import time: torch and samadapt3d are imported only after the dependency check.
"""
from __future__ import annotations

import logging
import os
import traceback

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from SAMAdapt3DSlicerLib.logic import DEBOUNCE_MS, DEVICES, SAMAdapt3DLogic
from SAMAdapt3DSlicerLib.self_test import SAMAdapt3DTest  # noqa: F401  (Slicer finds <Module>Test in this module)

__all__ = ["SAMAdapt3D", "SAMAdapt3DWidget", "SAMAdapt3DLogic", "SAMAdapt3DTest"]


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
        self._preparedKey = None

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
        self.prepareAhead()

    def prepareAhead(self):
        """Once volume and model are chosen, load the model and embed the slices in the background, so the first
        click only decodes. Never installs anything or asks: without dependencies it waits for the first click."""
        p = self._parameterNode
        if p is None or not p.inputVolume or self.logic.busy() or self.logic.missingDependencies():
            return
        key = (p.inputVolume.GetID(), self.logic.modelKey(p))
        if key == self._preparedKey:
            return
        self._preparedKey = key
        self.logic.run(p, action="prepare")

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
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

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
                                     self.ui.epochsSpinBox.value, p.device if p is not None else "auto",
                                     p.samCheckpoint if p is not None else None)
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
