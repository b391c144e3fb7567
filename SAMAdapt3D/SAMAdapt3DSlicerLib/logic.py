"""SAMAdapt3D's Logic and parameter node: dependencies, model loading, the worker thread, scene writes and
fine-tuning runs. Reads no widgets. SAMAdapt3D.py imports the Logic into the module's namespace, where Slicer
expects it; the Qt-free parts it drives live in core.py, scene_bridge.py and training.py of this package.
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
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer < 5.2
    parameterNodeWrapper = None

#: the module folder (SAMAdapt3D/), one above this package
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the library in this repository (SAMAdapt3DLib next to the module folder)
LIBRARY_DIR = os.path.normpath(os.path.join(MODULE_DIR, os.pardir, "SAMAdapt3DLib"))
TORCH_REQUIREMENT = ">=2.1"
DEVICES = ("auto", "cuda", "mps", "cpu")
POSITIVE_COLOR = (0.1, 0.85, 0.1)
NEGATIVE_COLOR = (0.95, 0.15, 0.1)
BOX_COLOR = (1.0, 0.85, 0.0)
DEBOUNCE_MS = 300
#: worker jobs on the whole volume, which read no prompts (so none is re-read after the model loads)
WHOLE_VOLUME_ACTIONS = ("classes", "prepare")


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
            from SAMAdapt3DSlicerLib import core

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
            from SAMAdapt3DSlicerLib import core

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
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

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
        """Start a run on the worker thread (returns True), or queue it if one is running (returns False).
        action: "sync" (prompts changed), "undo", "redo", "reset", "classes" (multi-class models) or "prepare"
        (load the model and precompute for this volume before the first click)."""
        if self.busy():
            if action != "prepare":  # a preparation never displaces a queued click
                self._pending = (p, action, viewSliceNode, segmentEditorNode)
            return False
        from SAMAdapt3DSlicerLib import core
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

        if action == "undo" and self._lastClassWrite is not None:
            self.undoClasses()
            return False
        segmenter = self.segmenter()
        volume = bridge.volume_from_node(p.inputVolume)
        if action in WHOLE_VOLUME_ACTIONS:  # no prompts to read
            job = dict(p=p, action=action, volume=volume, volumeKey=core.volume_key(p.inputVolume),
                       modelKey=self.modelKey(p), editorNode=None)
        else:
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
                if job["action"] not in WHOLE_VOLUME_ACTIONS:
                    self._events.put(("need_request", job))  # the request must be read on the main thread
                    return
            if job["action"] == "prepare":  # ahead of the first click: image set, slices embedded
                self._events.put(("prepared", job, segmenter.prepare(job["volume"], job["volumeKey"])))
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
            elif kind == "prepared":
                self._thread = None
                self._finish("unchanged", "Ready: place points or a box." if event[2] else "Ready.")
            elif kind == "error":
                self._thread = None
                status, message = self.describeError(event[2], event[3])
                if event[1].get("action") == "prepare":  # nobody asked for it: a status line, not a dialog
                    status, message = "unchanged", f"Not prepared ({message}); the first click will do it."
                self._finish(status, message)
        if not self.busy() and self._events.empty():
            self._pollTimer.stop()
            if self._pending is not None:
                pending, self._pending = self._pending, None
                self.run(*pending)

    def _apply(self, job, mask):
        from SAMAdapt3DSlicerLib import core

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
        from SAMAdapt3DSlicerLib import core

        p = job["p"]
        self.saveSegmentEditorUndoState(p.segmentation)
        write = core.write_classes(labels, names, p.inputVolume, p.segmentation)
        self._lastClassWrite = (write, p.inputVolume, p.segmentation)
        self._finish("ok", write.summary())
        return write

    def undoClasses(self):
        from SAMAdapt3DSlicerLib import core

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
        from SAMAdapt3DSlicerLib import training

        self.trainingCases.append(training.TrainingCase(volumeNode, segmentationNode, segmentID))
        segment = segmentationNode.GetSegmentation().GetSegment(segmentID)
        return f"{volumeNode.GetName()}: {segment.GetName() if segment else segmentID}"

    def clearTrainingCases(self):
        self.trainingCases = []

    def startFineTune(self, outputFolder, model="litemedsam-adapter", epochs=20, device="auto", samCheckpoint=None):
        """Export the cases and start `samadapt3d train` in a separate process; progress goes to fineTuneCallback."""
        import time

        from SAMAdapt3DSlicerLib import training

        if self._trainingJob is not None and self._trainingJob.running:
            raise RuntimeError("a fine-tuning run is already going")
        training.check_training_options(model, epochs, samCheckpoint)
        run = os.path.join(outputFolder or self.defaultTrainingFolder(), time.strftime("run-%Y%m%d-%H%M%S"))
        csvPath, target = training.export_training_set(self.trainingCases, os.path.join(run, "data"))
        command = training.training_command(csvPath, target, os.path.join(run, "model"), model=model, epochs=epochs,
                                            device=device, sam_checkpoint=samCheckpoint)
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
        from SAMAdapt3DSlicerLib import training

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
        from SAMAdapt3DSlicerLib import training

        if exitEvent.get("cancelled"):
            self._fineTune("cancelled", f"Stopped. Checkpoints and log are in {os.path.dirname(self._trainingOut)}.")
            return
        if exitEvent.get("returncode") != 0:
            self._fineTune("error", f"Training failed: {training.failure_detail(self._trainingEvents)}")
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
        from SAMAdapt3DSlicerLib import core

        segmenter = self.segmenter()
        segmenter.load_model(*self.modelKey(p))  # returns at once when this model is loaded
        request = segmenter.make_request(p.inputVolume, p.segmentation, p.segmentID, p.positivePoints,
                                         p.negativePoints, p.box, view_axis=viewAxis, action=action)
        mask = segmenter.compute(request)
        if mask is None:
            return None
        return core.write_result(mask, p.inputVolume, p.segmentation, p.segmentID,
                                 segmentEditorNode or self.segmentEditorNode())

    def segmentClassesNow(self, p):
        """Multi-class models: load if needed, segment every class in this thread, write one segment per class.
        Returns the ClassWrite (see core.py)."""
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

        segmenter = self.segmenter()
        segmenter.load_model(*self.modelKey(p))  # returns at once when this model is loaded
        labels, names = segmenter.compute_classes(bridge.volume_from_node(p.inputVolume))
        return self._applyClasses(dict(p=p), labels, names)
