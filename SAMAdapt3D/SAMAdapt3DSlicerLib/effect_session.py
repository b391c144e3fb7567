"""Where the effect's session comes from: by default a RemoteSession on a `samadapt3d serve` child started with
Slicer's own Python (one per Slicer process, shared by every editor and started on the first prompt, in the
effect's worker thread), so the model never runs in Slicer's process or holds its GIL.

The setup module (or a test) can install another opener with `set_session_opener`, e.g. a remote server's
client, or an in-process InteractiveSession. Qt-free; imports samadapt3d only when a session is opened.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Any, Callable

DEFAULT_MODEL = "litemedsam"

SessionOpener = Callable[[str, str], Any]  # (model, device) -> a session with InteractiveSession's API
_opener: SessionOpener | None = None
_model_choice = (DEFAULT_MODEL, "auto")
_server = None
_server_lock = threading.Lock()
_server_epoch = 0


def set_session_opener(opener: SessionOpener | None) -> None:
    """Install how sessions are opened (None: back to the local server)."""
    global _opener
    if opener != _opener:
        server_changed()
    _opener = opener


def server_changed() -> None:
    """The server behind the opener changed (another opener, or its Python, mode, URL, token or device): sessions
    opened before may be gone with the old server, so the effect opens a new one for its next prompt."""
    global _server_epoch
    _server_epoch += 1


def server_epoch() -> int:
    return _server_epoch


def set_model_choice(model: str, device: str = "auto") -> None:
    """The model and device the setup module selected; the effect uses them for its next session (an effect whose
    own "Model" parameter is set keeps that one)."""
    global _model_choice
    _model_choice = (model or DEFAULT_MODEL, device or "auto")


def model_choice() -> tuple[str, str]:
    return _model_choice


def open_session(model: str = DEFAULT_MODEL, device: str = "auto"):
    opener = _opener or _open_on_local_server
    return opener(model or DEFAULT_MODEL, device or "auto")


def slicer_python() -> str:
    """The interpreter to start the server with: Slicer's PythonSlicer launcher where there is one (sys.executable
    inside Slicer is the application itself, which would start a second Slicer)."""
    executable = sys.executable
    if os.path.basename(executable).lower().startswith("python"):
        return executable
    found = shutil.which("PythonSlicer", path=os.path.dirname(executable))
    return found or executable


def _open_on_local_server(model: str, device: str):
    from samadapt3d.client import LocalServer

    global _server
    with _server_lock:
        if _server is None or not _server.alive:
            _server = LocalServer(python=slicer_python(), device=device).start()
        client = _server.client
    return client.open_session(client.load_model(model, device=device))


def stop_local_server() -> None:
    global _server
    with _server_lock:
        if _server is not None:
            _server.stop()
            _server = None
