"""SAMAdapt3D's Logic and parameter node: models, downloads, device and server, dependencies, "Segment all
classes" and fine-tuning. Reads no widgets. SAMAdapt3D.py imports the Logic into the module's namespace, where
Slicer expects it. Everything that may take time runs on a worker thread or in a child process; results come back
through one queue that a QTimer drains on the main thread (the only place the scene is touched). Slicer's process
never imports torch: models run in the server (server_control), whose Python gets the dependencies.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback

import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from SAMAdapt3DSlicerLib import dependencies, downloads, server_control
from SAMAdapt3DSlicerLib.effect_session import DEFAULT_MODEL  # one name on the Slicer side (no torch here)

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer < 5.2
    parameterNodeWrapper = None

#: the module folder (SAMAdapt3D/), one above this package
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = ("auto", "cuda", "mps", "cpu")
#: how often the main thread looks at worker results (ms)
POLL_MS = 100

if parameterNodeWrapper is not None:

    @parameterNodeWrapper
    class SAMAdapt3DParameterNode:
        inputVolume: slicer.vtkMRMLScalarVolumeNode
        segmentation: slicer.vtkMRMLSegmentationNode
        model: str = DEFAULT_MODEL
        device: str = "auto"
        samCheckpoint: str = ""  # SAM base file for adapter-only checkpoints (SAMed, MA-SAM, Med-SA)

else:  # pragma: no cover - very old Slicer
    SAMAdapt3DParameterNode = None


def slicer_python() -> str:
    """Slicer's PythonSlicer (inside Slicer, sys.executable is the application itself)."""
    from SAMAdapt3DSlicerLib import effect_session

    return effect_session.slicer_python()


def savedServerSettings(device="auto"):
    settings = slicer.app.settings()

    def value(key, default=""):
        found = settings.value(SAMAdapt3DLogic.SETTINGS + key)
        return default if found is None else found

    return server_control.ServerSettings(value("ServerMode", server_control.LOCAL), value("ServerPython"),
                                         value("ServerUrl"), value("ServerToken"), device)


def installSavedServer():
    """At start-up (before the module's panel is ever opened): the effect's sessions go to the saved server."""
    from SAMAdapt3DSlicerLib import effect_session

    control = server_control.shared(slicer_python())
    control.configure(savedServerSettings(control.settings.device))
    effect_session.set_session_opener(control.session_opener)
    settings = slicer.app.settings()
    saved = [settings.value(SAMAdapt3DLogic.SETTINGS + key) for key in ("Model", "Device")]
    effect_session.set_model_choice(saved[0] or DEFAULT_MODEL, saved[1] or "auto")


class SAMAdapt3DLogic(ScriptedLoadableModuleLogic):
    """Callbacks (set by the widget) get (status, message, fraction) with status in
    "progress" | "ok" | "cancelled" | "error"; `classesCallback`, `downloadCallback`, `installCallback`,
    `serverCallback`, `fineTuneCallback` (the last also gets the trained model's path)."""

    SETTINGS = "SAMAdapt3D/"

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.libraryDir = dependencies.put_library_on_path(MODULE_DIR)  # the torch-free client, shipped with us
        self.server = server_control.shared(slicer_python())
        self.classesCallback = self.downloadCallback = self.installCallback = None
        self.serverCallback = self.fineTuneCallback = None
        self.environment = None  # dependencies.Environment of the server's Python, once probed
        self._events = queue.Queue()
        self._workers = {}  # kind -> thread
        self._classesCancel = None
        self._downloadCancel = None
        self.lastDownload = None  # (catalogue entry, path) of the last finished download
        self._installJob = None
        self._lastClassWrite = None  # (ClassWrite, volume node, segmentation node): undone by undoClasses
        self.trainingCases = []
        self._trainingJob = None
        self._trainingOut = None
        self._trainingEvents = []
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._poll)

    def getParameterNode(self):
        if SAMAdapt3DParameterNode is None:
            raise RuntimeError("SAMAdapt3D needs Slicer 5.2 or newer (parameterNodeWrapper)")
        return SAMAdapt3DParameterNode(super().getParameterNode())

    # ---- settings (application settings, not the scene) ----------------------------------------------------
    def setting(self, key, default=""):
        value = slicer.app.settings().value(self.SETTINGS + key)
        return default if value is None else value

    def setSetting(self, key, value):
        slicer.app.settings().setValue(self.SETTINGS + key, value)

    def chooseModel(self, model, device="auto"):
        """The effect's next session uses this model and device; remembered for the next start of Slicer."""
        from SAMAdapt3DSlicerLib import effect_session

        model, device = model or DEFAULT_MODEL, device or "auto"
        self.setSetting("Model", model)
        self.setSetting("Device", device)
        effect_session.set_model_choice(model, device)

    def modelsFolder(self):
        return self.setting("ModelsFolder") or os.path.join(os.path.expanduser("~"), "SAMAdapt3D-models")

    def rememberedModelFiles(self):
        value = self.setting("ModelFiles", [])
        value = [value] if isinstance(value, str) else list(value or [])
        return [path for path in value if path and os.path.exists(path)]

    def rememberModelFile(self, path):
        self.setSetting("ModelFiles", [f for f in self.rememberedModelFiles() if f != path] + [path])

    def serverSettings(self, device="auto"):
        return savedServerSettings(device)

    def applyServerSettings(self, settings):
        """Remember the settings and make the Segment Editor effect open its sessions on this server."""
        from SAMAdapt3DSlicerLib import effect_session

        for key, value in (("ServerMode", settings.mode), ("ServerPython", settings.python),
                           ("ServerUrl", settings.url), ("ServerToken", settings.token)):
            self.setSetting(key, value)
        if self.server.configure(settings):
            effect_session.server_changed()
        effect_session.set_session_opener(self.server.session_opener)
        return settings.problem()

    # ---- worker threads -----------------------------------------------------------------------------------
    def busy(self, kind):
        thread = self._workers.get(kind)
        return thread is not None and thread.is_alive()

    def _start(self, kind, target, *args):
        if self.busy(kind):
            raise RuntimeError(f"a {kind} job is already running")

        def run():
            try:
                target(*args)
            except BaseException as exc:  # noqa: BLE001 - every failure becomes a message
                self._events.put((kind, "error", self.describeError(exc, traceback.format_exc()), None, None))

        thread = threading.Thread(target=run, name=f"SAMAdapt3D-{kind}", daemon=True)
        self._workers[kind] = thread
        thread.start()
        self._timer.start()

    def _post(self, kind, status, message, fraction=None, payload=None):
        self._events.put((kind, status, message, fraction, payload))

    def _poll(self):
        """Main thread: deliver worker events; apply class results to the scene."""
        while True:
            try:
                kind, status, message, fraction, payload = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "classes" and status == "ok":
                status, message = self._applyClasses(*payload)
            callback = {"classes": self.classesCallback, "download": self.downloadCallback,
                        "install": self.installCallback, "server": self.serverCallback}.get(kind)
            if callback is not None:
                callback(status, message, fraction)
            else:
                logging.info(f"SAMAdapt3D {kind}: {message}")
        if self._installJob is not None:
            self._pollInstall()
        if self._trainingJob is not None:
            self._pollTraining()
        idle = not any(t.is_alive() for t in self._workers.values()) and self._events.empty()
        if idle and self._installJob is None and not (self._trainingJob is not None and self._trainingJob.running):
            self._timer.stop()

    @staticmethod
    def describeError(exc, tb=""):
        """A message a user can act on (the scene is unchanged when a job fails)."""
        text = str(exc) or type(exc).__name__
        if "out of memory" in text.lower():
            return ("The server ran out of memory; nothing was changed. Use a smaller model, another device, or "
                    "close other GPU programs.")
        if type(exc).__module__.startswith(("samadapt3d", "SAMAdapt3DSlicerLib")) or isinstance(exc, (OSError,
                                                                                                     RuntimeError)):
            return text
        logging.error(tb)
        return f"{type(exc).__name__}: {text} (details in the Python console)"

    # ---- server ---------------------------------------------------------------------------------------------
    def checkServer(self):
        """Start or reach the server on a worker thread; the result goes to serverCallback."""
        self._post("server", "progress", "Connecting to the server… (a local one starts in a few seconds)")
        self._start("server", lambda: self._post("server", "ok", self.server.describe()))

    # ---- dependencies ---------------------------------------------------------------------------------------
    def serverPython(self):
        return self.server.settings.python or self.server.default_python

    def checkDependencies(self):
        """Probe the server's Python on a worker thread (installCallback gets the report)."""
        python = self.serverPython()

        def probe():
            self.environment = dependencies.probe(python)
            self._post("install", "ok" if self.environment.ready else "missing", self.environment.describe())

        self._start("probe", probe)

    def installPlan(self, torchIndexUrl=""):
        missing = self.environment.missing() if self.environment is not None else ["torch", "samadapt3d", "weights"]
        if "python" in missing:
            raise RuntimeError(f"cannot run the server's Python {self.serverPython()}: {self.environment.error}")
        return dependencies.install_plan(self.serverPython(), missing, self.libraryDir, torchIndexUrl)

    def installDependencies(self, steps):
        """Run the install steps as child processes (non-blocking; Cancel stops the running one)."""
        if self._installJob is not None and self._installJob.running:
            raise RuntimeError("an installation is already running")
        self._installJob = dependencies.InstallJob(steps).start()
        self._timer.start()

    def cancelInstall(self):
        if self._installJob is not None:
            self._installJob.cancel()

    def _pollInstall(self):
        for event in self._installJob.events():
            status = {"done": "ok", "failed": "error", "cancelled": "cancelled"}.get(event.kind, "progress")
            if self.installCallback is not None:
                self.installCallback(status, event.text, event.fraction)
            if status != "progress":
                self._installJob = None
                if status == "ok":
                    self.checkDependencies()
                return

    # ---- downloads ------------------------------------------------------------------------------------------
    def download(self, entry, folder=None):
        """Download a catalogue entry (the widget asked for consent) on a worker thread."""
        folder = folder or self.modelsFolder()
        self._downloadCancel = threading.Event()
        cancel = self._downloadCancel

        def progress(done, total):
            fraction = done / total if total else None
            self._post("download", "progress", f"{entry.filename}: {done / 1e6:,.0f} MB"
                       + (f" of {total / 1e6:,.0f} MB" if total else ""), fraction)

        def run():
            try:
                result = downloads.download_entry(entry, folder, progress, cancel)
            except downloads.DownloadCancelled as exc:
                self._post("download", "cancelled", str(exc))
                return
            self.lastDownload = (entry, result.path)
            self._post("download", "ok", f"Saved {result.path} (sha256 {result.sha256}, {result.checked}).", 1.0)

        self._start("download", run)

    def cancelDownload(self):
        if self._downloadCancel is not None:
            self._downloadCancel.set()

    # ---- segment all classes --------------------------------------------------------------------------------
    def segmentClasses(self, p):
        """Multi-class model on the server (worker thread); the label map is written on the main thread."""
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

        if not (p.inputVolume and p.segmentation):
            raise RuntimeError("select an input volume and a segmentation first")
        volume = bridge.volume_from_node(p.inputVolume)
        volumeNode, segmentationNode = p.inputVolume, p.segmentation
        model, device, samCheckpoint = p.model or DEFAULT_MODEL, p.device or "auto", p.samCheckpoint or None
        self._classesCancel = threading.Event()
        cancel = self._classesCancel

        def run():
            self._post("classes", "progress", f"Loading {os.path.basename(model)} on the server…", 0.1)
            client = self.server.client()
            modelId = client.load_model(model, device=device, sam_checkpoint=samCheckpoint)
            self._post("classes", "progress", "Segmenting every class…", 0.3)
            labels, names = client.auto(modelId, volume)
            if cancel.is_set():
                self._post("classes", "cancelled", "Cancelled; nothing was changed.")
                return
            self._post("classes", "ok", "", 1.0, (labels, names, volumeNode, segmentationNode))

        self._start("classes", run)

    def cancelClasses(self):
        if self._classesCancel is not None:
            self._classesCancel.set()

    def _applyClasses(self, labels, names, volumeNode, segmentationNode):
        from SAMAdapt3DSlicerLib import core

        if volumeNode.GetScene() is None or segmentationNode.GetScene() is None:
            return "cancelled", "The volume or segmentation was removed meanwhile; nothing was written."
        write = core.write_classes(labels, list(names), volumeNode, segmentationNode)
        self._lastClassWrite = (write, volumeNode, segmentationNode)
        return "ok", write.summary()

    def canUndoClasses(self):
        return self._lastClassWrite is not None

    def undoClasses(self):
        from SAMAdapt3DSlicerLib import core

        write, volumeNode, segmentationNode = self._lastClassWrite
        self._lastClassWrite = None
        core.undo_classes(write, volumeNode, segmentationNode)
        return "Class segments restored to what they were before 'Segment all classes'."

    # ---- fine-tuning (a separate process) -------------------------------------------------------------------
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
        """Export the cases and start `samadapt3d train` with the server's Python; progress to fineTuneCallback."""
        from SAMAdapt3DSlicerLib import training

        if self._trainingJob is not None and self._trainingJob.running:
            raise RuntimeError("a fine-tuning run is already going")
        training.check_training_options(model, epochs, samCheckpoint)
        run = os.path.join(outputFolder or self.defaultTrainingFolder(), time.strftime("run-%Y%m%d-%H%M%S"))
        csvPath, target = training.export_training_set(self.trainingCases, os.path.join(run, "data"))
        command = training.training_command(csvPath, target, os.path.join(run, "model"), model=model, epochs=epochs,
                                            device=device, sam_checkpoint=samCheckpoint, python=self.serverPython())
        self._trainingOut = os.path.join(run, "model")
        self._trainingEvents = []
        self._trainingJob = training.TrainingJob(command, log_path=os.path.join(run, "training.log"))
        self._trainingJob.start()
        self._timer.start()
        self._fineTune("progress", f"Training '{target}' on {len(self.trainingCases)} case(s) ({model})…", 0.0)
        return self._trainingJob

    def cancelFineTune(self):
        if self._trainingJob is not None and self._trainingJob.running:
            self._fineTune("progress", "Stopping (saving a checkpoint)…")
            threading.Thread(target=self._trainingJob.cancel, daemon=True).start()

    def _pollTraining(self):
        from SAMAdapt3DSlicerLib import training

        for event in self._trainingJob.events():
            self._trainingEvents.append(event)
            if event.get("event") == "exit":
                job, self._trainingJob = self._trainingJob, None
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

    # ---- closing --------------------------------------------------------------------------------------------
    def onSceneClose(self):
        """The scene's nodes are going: forget what points at them, stop what would write into them."""
        self.cancelClasses()
        self._lastClassWrite = None
        self.trainingCases = []

    def shutdown(self):
        """Module reload or application exit: no timer, thread result, child or server outlives the module."""
        from SAMAdapt3DSlicerLib import effect_session

        self.onSceneClose()
        self.cancelDownload()
        self.cancelInstall()
        self.cancelFineTune()
        self._timer.stop()
        self._timer.disconnect("timeout()", self._poll)
        self.classesCallback = self.downloadCallback = self.installCallback = None
        self.serverCallback = self.fineTuneCallback = None
        effect_session.set_session_opener(None)
        self.server.stop()
