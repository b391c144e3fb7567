"""Which inference server the module and the effect use: a local `samadapt3d serve` child (started with Slicer's
PythonSlicer or a Python the user names) or a remote one (URL + token). Qt-free; imports only samadapt3d.client
(standard library + numpy), never torch. Every call that may block (start, health, a model run) is meant for a
worker thread.
"""
from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass

LOCAL, REMOTE = "local", "remote"
SERVER_MODES = (LOCAL, REMOTE)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerSettings:
    mode: str = LOCAL
    python: str = ""  # local: the server's interpreter ("" = Slicer's PythonSlicer)
    url: str = ""  # remote
    token: str = ""  # remote; kept in the application settings, never in the scene
    device: str = "auto"

    def problem(self) -> str:
        """Why these settings cannot work ("" when they can), as a line for the status label."""
        if self.mode not in SERVER_MODES:
            return f"unknown server mode {self.mode!r}"
        if self.mode == REMOTE:
            parsed = urllib.parse.urlparse(self.url.strip())
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                return "the remote server needs a URL like http://gpu-machine:8000"
            if not self.token.strip() and parsed.hostname not in LOOPBACK_HOSTS:
                return "the remote server needs its token (printed by `samadapt3d serve`)"
        return ""


class ServerControl:
    """Owns the client of the configured server. `session_opener` is what the Segment Editor effect calls
    (effect_session.set_session_opener), so the effect and the module share one server."""

    def __init__(self, default_python: str) -> None:
        self.default_python = default_python
        self.settings = ServerSettings()
        self._local = None  # samadapt3d.client.LocalServer
        self._remote = None  # samadapt3d.client.ServerClient
        self._lock = threading.Lock()

    def configure(self, settings: ServerSettings) -> bool:
        """New settings take effect at the next call; a running local server is stopped if its Python changed.
        True when the settings differ from the previous ones (sessions on the old server may be gone)."""
        with self._lock:
            old, self.settings = self.settings, settings
            if self._local is not None and (settings.mode != LOCAL or settings.python != old.python
                                            or settings.device != old.device):
                self._local.stop()
                self._local = None
            if settings.mode != REMOTE or (settings.url, settings.token) != (old.url, old.token):
                self._remote = None
            return settings != old

    def client(self):
        """The ServerClient of the configured server, starting the local one if needed (blocking)."""
        from samadapt3d.client import LocalServer, ServerClient, ServerError

        with self._lock:
            settings = self.settings
            problem = settings.problem()
            if problem:
                raise ServerError(problem, None, "BadSettings")
            if settings.mode == REMOTE:
                if self._remote is None:
                    self._remote = ServerClient(settings.url.strip().rstrip("/"), token=settings.token.strip() or None)
                return self._remote
            if self._local is None or not self._local.alive:
                if self._local is not None:
                    self._local.stop()
                self._local = LocalServer(python=settings.python or self.default_python, device=settings.device)
                self._local.start()
            return self._local.client

    def session_opener(self, model: str, device: str):
        client = self.client()
        return client.open_session(client.load_model(model, device=device))

    def describe(self) -> str:
        """One or two lines about the server (blocking: a health call)."""
        client = self.client()
        info = client.info()
        where = "local server" if self.settings.mode == LOCAL else f"remote server {client.url}"
        device = info.get("device") if isinstance(info.get("device"), dict) else {}
        return (f"Connected to the {where}: samadapt3d {info.get('version', '?')}, Python {info.get('python', '?')}, "
                f"device {device.get('resolved', '?')} (PyTorch {device.get('torch', '?')}, CUDA available: "
                f"{device.get('cuda_available', '?')}).")

    def stop(self) -> None:
        with self._lock:
            if self._local is not None:
                self._local.stop()
                self._local = None
            self._remote = None


_shared: ServerControl | None = None


def shared(default_python: str) -> ServerControl:
    """The process-wide ServerControl: the module's Logic and the effect use one server."""
    global _shared
    if _shared is None:
        _shared = ServerControl(default_python)
    return _shared
