"""The SAMAdapt3D Segment Editor effect: prompts in the views -> the model -> the selected segment.

Registered by SegmentEditorSAMAdapt3D.py once the application has started, through
SegmentEditorSAMAdapt3DLib/SegmentEditorEffect.py (Slicer's loader names the module after the folder and the class
after the file, so the source it is given cannot live in this package).

Mouse (slice views, while the effect is active):
  click            a point of the current polarity (Positive / Negative buttons, T toggles; positive at start)
  Ctrl+click       a point of the other polarity
  drag             a box on that slice (replaces the box)
Points and the box are markups (green / red points, a yellow ROI): move them or delete them like any markup and the
segment follows. "3D box" places the ROI as a 3D box (draw it, then drag its handles in any view).
While a click runs, its mask so far is shown in a scratch preview node (effect_preview.py), not in the segment.
Every result is written with saveStateForUndo() + modifySelectedSegmentByLabelmap(Set): the editor's masking,
intensity range and overwrite settings apply, and Ctrl+Z undoes it. When the segment changes outside the effect
(Ctrl+Z, another effect), the prompts are cleared and the next prompt refines the segment as it is then.
"""
from __future__ import annotations

import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from SAMAdapt3DSlicerLib import effect_markups as markups
from SAMAdapt3DSlicerLib import effect_preview
from SAMAdapt3DSlicerLib import effect_prompts as prompts
from SAMAdapt3DSlicerLib import effect_session
from SAMAdapt3DSlicerLib.effect_runner import PROMPT_KINDS, Job, PromptRunner

EFFECT_NAME = "SAMAdapt3D"
POLL_MS = 50
#: a press this close (pixels) to a prompt point is left to the markups widget (to move the point)
POINT_GRAB_PX = 8
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ICON_PATH = os.path.join(MODULE_DIR, "Resources", "Icons", "SegmentEditorSAMAdapt3D.png")
#: what Slicer's loader is given: it names the module after the folder and the class after the file
EFFECT_SOURCE = os.path.join(MODULE_DIR, "SegmentEditorSAMAdapt3DLib", "SegmentEditorEffect.py")


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = EFFECT_NAME
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.runner = None
        self._runnerChoice = None
        self.preview = effect_preview.SegmentPreview()
        self.generation = 0
        self.nodes = {}  # "positive" | "negative" | "box" -> markups node
        self._node_tags = []
        self._segment_tag = None
        self._observed_segmentation = None
        self._updating = False  # our own changes to prompt nodes and the segment
        self._press = None  # (view, xy, ras) of a left press that may become a click or a drag
        self._context = None  # (source volume id, segmentation id, segment id) the session holds
        self._shortcuts = []
        self._knownMask = None  # the selected segment as the effect last saw or wrote it
        self._checkPending = False
        self.lastStatus = ""
        self.timer = None
        self._active = False  # selected in the editor (the poll timer stops once deselected and idle)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        cloned = effects.qSlicerSegmentEditorScriptedEffect(None)
        cloned.setPythonSource(EFFECT_SOURCE.replace("\\", "/"))
        return cloned

    def icon(self):
        return qt.QIcon(ICON_PATH) if os.path.exists(ICON_PATH) else qt.QIcon()

    def helpText(self):
        return ("<html>Segment a structure from prompts with a Segment Anything model (SAMAdapt3D).<p>"
                "<b>Click</b> in a slice view: a point of the selected polarity (<b>T</b> toggles); "
                "<b>Ctrl+click</b>: the other polarity; <b>drag</b>: a box on that slice; <b>3D box</b>: a 3D ROI. "
                "Move or delete prompts like markups. Masking, overwrite and Ctrl+Z are the Segment Editor's. "
                "Models, device and server are set in the SAMAdapt3D module.</html>")

    def createCursor(self, widget):
        return qt.QCursor(qt.Qt.CrossCursor)

    # ---- options panel ---------------------------------------------------------------------------
    def setupOptionsFrame(self):
        self.positiveButton = qt.QPushButton("Positive")
        self.positiveButton.toolTip = "Clicks add points on the structure (green). T toggles."
        self.negativeButton = qt.QPushButton("Negative")
        self.negativeButton.toolTip = "Clicks add points on what must be left out (red). T toggles."
        for button in (self.positiveButton, self.negativeButton):
            button.checkable = True
        self.polarityGroup = qt.QButtonGroup()
        self.polarityGroup.exclusive = True
        self.polarityGroup.addButton(self.positiveButton)
        self.polarityGroup.addButton(self.negativeButton)
        polarity = qt.QHBoxLayout()
        polarity.addWidget(self.positiveButton)
        polarity.addWidget(self.negativeButton)
        row = qt.QWidget()
        row.setLayout(polarity)
        self.scriptedEffect.addOptionsWidget(row)

        self.boxButton = qt.QPushButton("3D box")
        self.boxButton.toolTip = "Draw a 3D box (ROI) in any view; drag its handles to adjust it."
        self.clearButton = qt.QPushButton("Clear prompts")
        self.clearButton.toolTip = "Remove all points and the box; the segment returns to what it was before them."
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.toolTip = "Stop the running update; nothing is changed."
        buttons = qt.QHBoxLayout()
        for button in (self.boxButton, self.clearButton, self.cancelButton):
            buttons.addWidget(button)
        row = qt.QWidget()
        row.setLayout(buttons)
        self.scriptedEffect.addOptionsWidget(row)

        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        # a closed scene takes the prompt nodes and the session's image with it (node ids are reused after a close)
        self._scene_tag = slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

        self.positiveButton.connect("toggled(bool)", self.onPolarityToggled)
        self.boxButton.connect("clicked()", self.onPlaceBox)
        self.clearButton.connect("clicked()", self.onClearPrompts)
        self.cancelButton.connect("clicked()", self.onCancel)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Polarity", "positive")
        self.scriptedEffect.setParameterDefault("Model", "")  # "": the SAMAdapt3D module's choice
        self.scriptedEffect.setParameterDefault("Device", "")

    def updateGUIFromMRML(self):
        positive = self.scriptedEffect.parameter("Polarity") != "negative"
        self.positiveButton.blockSignals(True)
        self.positiveButton.checked = positive
        self.negativeButton.checked = not positive
        self.positiveButton.blockSignals(False)
        self.cancelButton.enabled = bool(self.runner and self.runner.busy)

    def onPolarityToggled(self, positive):
        self.scriptedEffect.setParameter("Polarity", "positive" if positive else "negative")

    def togglePolarity(self):
        if not self.positiveButton.enabled:
            return
        positive = self.scriptedEffect.parameter("Polarity") != "negative"
        self.scriptedEffect.setParameter("Polarity", "negative" if positive else "positive")
        self.updateGUIFromMRML()

    def setStatus(self, text):
        self.lastStatus = text
        self.statusLabel.text = text

    # ---- life cycle ------------------------------------------------------------------------------
    def activate(self):
        self._active = True
        self.ensurePromptNodes()
        self.setPromptsVisible(True)
        self.observeSegmentation()
        if self.timer is None:
            self.timer = qt.QTimer()
            self.timer.setInterval(POLL_MS)
            self.timer.connect("timeout()", self.poll)
        self.timer.start()
        self.installShortcuts()
        self.syncContext()

    def deactivate(self):
        self._active = False
        self._press = None
        self.removeShortcuts()
        self.setPromptsVisible(False)
        self.stopPlacing()

    def cleanup(self):
        """The editor or the scene goes away: stop the worker, timers, observers; remove our prompt nodes."""
        self.removeShortcuts()
        if self.timer is not None:
            self.timer.stop()
        if self.runner is not None:
            self.runner.shutdown()
            self.runner = None
        self.observeSegmentation(None)
        self.removePromptNodes()
        self.preview.clear()
        self._context = None
        if getattr(self, "_scene_tag", None) is not None:
            slicer.mrmlScene.RemoveObserver(self._scene_tag)
            self._scene_tag = None

    def onSceneStartClose(self, caller=None, event=None):
        if self.runner is not None:
            self.runner.cancel()
        self.preview.clear()
        self._press = None
        self._context = None
        self.generation += 1  # results still on their way belong to the closed scene
        self.observeSegmentation(None)
        for node, tag in self._node_tags:
            node.RemoveObserver(tag)
        self._node_tags = []
        self.nodes = {}

    def sourceVolumeNodeChanged(self):
        self.syncContext()

    def referenceGeometryChanged(self):
        self._context = None
        self.syncContext()

    def installShortcuts(self):
        self.removeShortcuts()
        shortcut = qt.QShortcut(slicer.util.mainWindow())
        shortcut.setKey(qt.QKeySequence("t"))
        shortcut.connect("activated()", self.togglePolarity)
        self._shortcuts.append(shortcut)

    def removeShortcuts(self):
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

    # ---- the session's context (volume, segment) ---------------------------------------------------
    def editorNodes(self):
        node = self.scriptedEffect.parameterSetNode()
        if node is None:
            return None, None, ""
        return node.GetSourceVolumeNode(), node.GetSegmentationNode(), node.GetSelectedSegmentID() or ""

    def syncContext(self):
        """(Re)start the session on the editor's source image and the selected segment as the seed, when they
        changed. Returns False (with a status message) when there is nothing to work on."""
        volume, segmentation, segment_id = self.editorNodes()
        if volume is None or segmentation is None or not segment_id:
            self.setStatus("Select a source volume, a segmentation and a segment in the Segment Editor.")
            return False
        # a changed server (module settings, module reload) takes the old session with it: new context, new runner
        context = (volume.GetID(), segmentation.GetID(), segment_id, self.modelChoice(),
                   effect_session.server_epoch())
        if context == self._context:
            return True
        if self._context is not None:
            self.clearPromptNodes()
        self._context = context
        self.observeSegmentation(segmentation)
        image = self.scriptedEffect.sourceVolumeImageData()
        if image is None:
            self.setStatus("The source volume has no image data.")
            return False
        self.generation += 1
        self._knownMask = self.currentSegmentMask()
        self.ensureRunner().submit(Job("image", self.generation, volume=prompts.volume_from_image(
            image, markups.segmentation_to_world(segmentation)), seed=self._knownMask))
        self.setStatus("Preparing the model…")
        return True

    def modelChoice(self):
        """(model, device): the effect's own parameters if set, else what the SAMAdapt3D module selected."""
        model, device = effect_session.model_choice()
        return (self.scriptedEffect.parameter("Model") or model, self.scriptedEffect.parameter("Device") or device)

    def ensureRunner(self):
        """The worker for the current model; a new model gets a new session (the old one is shut down)."""
        choice = (*self.modelChoice(), effect_session.server_epoch())
        if self.runner is not None and self._runnerChoice != choice:
            self.runner.shutdown()
            self.runner = None
        if self.runner is None:
            model, device, _ = choice
            self.runner = PromptRunner(lambda: effect_session.open_session(model, device))
            self._runnerChoice = choice
        return self.runner

    def currentSegmentMask(self):
        """The selected segment on the source image's grid, [k, j, i] bool."""
        return markups.segment_on_grid(self.scriptedEffect.selectedSegmentLabelmap(),
                                       self.scriptedEffect.sourceVolumeImageData())

    def observeSegmentation(self, segmentation=None):
        if self._observed_segmentation is not None:
            for tag in self._segment_tag or ():
                self._observed_segmentation.GetSegmentation().RemoveObserver(tag)
        self._observed_segmentation, self._segment_tag = segmentation, None
        if segmentation is not None:
            # Slicer's undo restores segments with SegmentModified only; edits fire SourceRepresentationModified
            self._segment_tag = [segmentation.GetSegmentation().AddObserver(event, self.onSegmentationEvent)
                                 for event in (slicer.vtkSegmentation.SegmentModified,
                                               slicer.vtkSegmentation.SourceRepresentationModified)]

    def onSegmentationEvent(self, caller=None, event=None):
        if self._updating or self._context is None or self.runner is None or self._checkPending:
            return
        self._checkPending = True  # one check for the burst of events of one edit
        qt.QTimer.singleShot(0, self.checkSegmentChangedOutside)

    def checkSegmentChangedOutside(self):
        self._checkPending = False
        if self._context is None or self.runner is None:
            return
        mask = self.currentSegmentMask()
        if self._knownMask is not None and mask.shape == self._knownMask.shape and (mask == self._knownMask).all():
            return  # e.g. a rename or a colour change
        # Ctrl+Z or another effect changed the segment: its prompts no longer describe it
        self._knownMask = mask
        self.clearPromptNodes()
        self.runner.submit(Job("reseed", self.generation, seed=mask))

    # ---- prompt nodes ------------------------------------------------------------------------------
    def ensurePromptNodes(self):
        if markups.ensure_prompt_nodes(slicer.mrmlScene, self.nodes):
            self.observePromptNodes()

    def observePromptNodes(self):
        for node, tag in self._node_tags:
            node.RemoveObserver(tag)
        self._node_tags = []
        events = markups.EDIT_EVENTS
        for node in self.nodes.values():
            for event in events:
                self._node_tags.append((node, node.AddObserver(event, self.onPromptNodeEdited)))

    def removePromptNodes(self):
        for node, tag in self._node_tags:
            node.RemoveObserver(tag)
        self._node_tags = []
        markups.remove_prompt_nodes(slicer.mrmlScene, self.nodes)

    def setPromptsVisible(self, visible):
        markups.set_visible(self.nodes, visible)

    def clearPromptNodes(self):
        self._updating = True
        try:
            for node in self.nodes.values():
                node.RemoveAllControlPoints()
        finally:
            self._updating = False

    def currentPrompts(self):
        return prompts.collect_prompts(self.nodes.get("positive"), self.nodes.get("negative"), self.nodes.get("box"))

    def onPromptNodeEdited(self, caller, event):
        """The user moved (end of the drag), deleted or placed a prompt through the markups: restate them all."""
        if self._updating or self.placingUnsizedBox(caller) or not self.syncContext():
            return
        self.submitPromptJob(Job("rebuild", self.generation, prompts=self.currentPrompts()))

    def placingUnsizedBox(self, node):
        """Our ROI is being placed and has no size yet (its first corner, or a preview point leaving the view):
        nothing changed that a run could show."""
        box = self.nodes.get("box")
        if node is None or box is None or node is not box or prompts.roi_corners_ras(box) is not None:
            return False
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        active = slicer.app.applicationLogic().GetSelectionNode().GetActivePlaceNodeID()
        return interaction.GetCurrentInteractionMode() == interaction.Place and active == box.GetID()

    def onPlaceBox(self):
        """Place the ROI interactively (Slicer's place mode for ROIs: click-drag in any view)."""
        if not self.syncContext():
            return
        self.ensurePromptNodes()
        # a fresh ROI node: after RemoveAllControlPoints an ROI keeps its old (possibly zero) size, and a box placed
        # into it comes out zero-sized
        self._updating = True
        try:
            slicer.mrmlScene.RemoveNode(self.nodes.pop("box"))
        finally:
            self._updating = False
        self.ensurePromptNodes()
        box = self.nodes["box"]
        selection = slicer.app.applicationLogic().GetSelectionNode()
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        selection.SetReferenceActivePlaceNodeClassName(box.GetClassName())
        selection.SetActivePlaceNodeID(box.GetID())
        interaction.SetPlaceModePersistence(0)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def interactionNodeModified(self, interactionNode):
        """Placing our own box keeps the effect active (Slicer's default deselects an effect in place mode);
        placing any other markup deselects it, as for every effect, so clicks go to that markup."""
        if interactionNode.GetCurrentInteractionMode() != interactionNode.Place:
            return
        box = self.nodes.get("box")
        active = slicer.app.applicationLogic().GetSelectionNode().GetActivePlaceNodeID()
        if box is None or active != box.GetID():
            self.scriptedEffect.selectEffect("")

    def stopPlacing(self):
        """End the place mode of our box (never another markup's the user is placing)."""
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        box = self.nodes.get("box")
        active = slicer.app.applicationLogic().GetSelectionNode().GetActivePlaceNodeID()
        if (interaction is not None and interaction.GetCurrentInteractionMode() == interaction.Place
                and box is not None and active == box.GetID()):
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    def onClearPrompts(self):
        self.clearPromptNodes()
        if self.syncContext():
            self.submitPromptJob(Job("rebuild", self.generation, prompts=self.currentPrompts()))

    def onCancel(self):
        if self.runner is not None:
            self.runner.cancel()
        self.setStatus("Cancelled.")

    # ---- views -------------------------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False  # the 3D view: rotate as usual; the 3D box is placed with "3D box"
        xy = callerInteractor.GetEventPosition()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            if callerInteractor.GetShiftKey() or self.nearPromptPoint(xy, viewWidget):
                return False  # Shift: Slicer's crosshair; near a point: let the markups widget move it
            self._press = (viewWidget, xy, self.xyToRas(xy, viewWidget), bool(callerInteractor.GetControlKey()))
            return True
        if self._press is None or self._press[0] is not viewWidget:
            return False
        if eventId == vtk.vtkCommand.MouseMoveEvent:
            if prompts.is_drag(self._press[1], xy):
                self.showSliceBox(self._press[2], self.xyToRas(xy, viewWidget), viewWidget)
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            view, press_xy, press_ras, ctrl = self._press
            self._press = None
            if prompts.is_drag(press_xy, xy):
                self.onSliceBox(press_ras, self.xyToRas(xy, viewWidget), viewWidget)
            else:
                self.onClick(press_ras, viewWidget, ctrl)
            return True
        return False

    def nearPromptPoint(self, xy, viewWidget):
        for kind in ("positive", "negative"):
            for ras in prompts.defined_points_ras(self.nodes.get(kind)):
                other = self.rasToXy(list(ras), viewWidget)
                if abs(other[0] - xy[0]) <= POINT_GRAB_PX and abs(other[1] - xy[1]) <= POINT_GRAB_PX:
                    return True
        return False

    def onClick(self, ras, viewWidget, ctrl):
        if not self.syncContext():
            return
        positive = (self.scriptedEffect.parameter("Polarity") != "negative") != ctrl
        node = self.nodes["positive" if positive else "negative"]
        self._updating = True
        try:
            node.AddControlPoint(vtk.vtkVector3d(*ras))
        finally:
            self._updating = False
        axis = self.viewAxis(viewWidget)
        self.submitPromptJob(Job("point", self.generation, prompts=self.currentPrompts(), point=tuple(ras),
                                 positive=positive, view_axis=axis))

    def viewAxis(self, viewWidget):
        return markups.view_axis(self.scriptedEffect.sourceVolumeImageData(), viewWidget.mrmlSliceNode())

    def showSliceBox(self, ras_a, ras_b, viewWidget):
        a, b = prompts.slice_box_corners(ras_a, ras_b, prompts.slice_normal(viewWidget.mrmlSliceNode()))
        self.ensurePromptNodes()
        self._updating = True
        try:
            markups.set_roi(self.nodes["box"], a, b)
        finally:
            self._updating = False
        self.scriptedEffect.scheduleRender(viewWidget)

    def onSliceBox(self, ras_a, ras_b, viewWidget):
        if not self.syncContext():
            return
        self.showSliceBox(ras_a, ras_b, viewWidget)
        a, b = prompts.slice_box_corners(ras_a, ras_b, prompts.slice_normal(viewWidget.mrmlSliceNode()))
        self.submitPromptJob(Job("box", self.generation, prompts=self.currentPrompts(), box=(tuple(a), tuple(b))))

    # ---- jobs and results --------------------------------------------------------------------------
    def submitPromptJob(self, job):
        self.ensureRunner().submit(job)
        self.setStatus("Segmenting…")
        self.cancelButton.enabled = True

    def poll(self):
        if self.runner is None:
            return
        for outcome in self.runner.poll():
            self.onOutcome(outcome)
        self.cancelButton.enabled = self.runner.busy
        if not self._active and not self.runner.busy and self.timer is not None:
            self.timer.stop()  # a result still on its way when deselected was written above; nothing more comes

    def onOutcome(self, outcome):
        job = outcome.job
        if outcome.preview:
            self.onPreview(outcome)
            return
        self.preview.clear()  # the job is over: its result (or nothing, on a cancel or an error) replaces it
        if job.generation != self.generation:
            return
        if outcome.error:
            if outcome.server_lost:
                # the next prompt opens a new session (a new local server if needed) on the segment as it is now
                effect_session.server_changed()
                self.setStatus(f"SAMAdapt3D: {outcome.error} The next prompt starts a new server session; the "
                               "segment is kept as it is.")
                return
            self.setStatus(f"SAMAdapt3D: {outcome.error}")
            return
        if outcome.cancelled:
            self.setStatus("Cancelled; nothing was changed.")
            return
        if job.kind not in PROMPT_KINDS:
            self.setStatus("Ready: click in a slice view.")
            return
        if job.number != self.runner.last_number:
            return  # a newer prompt is on its way; its result will include this one
        self.writeMask(outcome.mask)
        self.setStatus(f"Updated in {outcome.seconds:.1f} s.")

    def onPreview(self, outcome):
        """The running click's mask so far, shown in the preview node (never written to the segment)."""
        job = outcome.job
        if job.generation != self.generation or job.number != self.runner.last_number:
            return  # a newer prompt is on its way
        _, segmentation, segment_id = self.editorNodes()
        source = self.scriptedEffect.sourceVolumeImageData()
        segment = None if segmentation is None else segmentation.GetSegmentation().GetSegment(segment_id)
        if source is None or segment is None:
            return
        try:
            self.preview.show(outcome.mask, source, segmentation, segment.GetColor())
        except (RuntimeError, ValueError) as exc:  # a preview that cannot be shown is not worth stopping the run for
            self.setStatus(f"Segmenting… (no preview: {exc})")
            return
        self.setStatus(f"Segmenting… preview after {outcome.seconds:.1f} s ({int(outcome.mask.sum())} voxels so far)")

    def writeMask(self, mask):
        """The only write: Slicer's undo state, then the selected segment set from the mask (masking and
        overwrite as the editor's settings say)."""
        source = self.scriptedEffect.sourceVolumeImageData()
        labelmap = prompts.labelmap_like(source, mask)
        self._updating = True
        try:
            self.scriptedEffect.saveStateForUndo()
            self.scriptedEffect.modifySelectedSegmentByLabelmap(
                labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
            self._knownMask = self.currentSegmentMask()  # as masking and overwrite left it
        finally:
            self._updating = False
