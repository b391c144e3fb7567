"""LocalServer: `python -m samadapt3d serve --port 0` as a child process of this one (e.g. of 3D Slicer, with
torch installed only in the child's interpreter), restarted once if it dies."""
from __future__ import annotations

import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from .server_client import ServerClient
from .transport import ServerError

#: seconds for the child to print its port and answer /health (importing torch can take a while)
STARTUP_TIMEOUT_S = 120.0
#: seconds a stopping child gets before it is killed
STOP_TIMEOUT_S = 5.0
#: seconds a child whose connection broke gets to be seen dead before we decide it is alive
DEATH_WAIT_S = 1.0
HEALTH_POLL_S = 0.05
_PORT = re.compile(r"port (\d+)")
#: variables that point an interpreter at its own library; not passed on to a different Python
FOREIGN_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONSTARTUP")


class LocalServer:
    """A `samadapt3d serve` child on loopback with a random token. `client` is its ServerClient (the same object
    across a restart: its URL is updated); `restarts` counts restarts (at most `max_restarts`)."""

    def __init__(self, python: str = sys.executable, device: str = "auto", extra_args: Sequence[str] = (),
                 startup_timeout: float = STARTUP_TIMEOUT_S, env: dict[str, str] | None = None,
                 max_restarts: int = 1, timeout: float = 60.0) -> None:
        self.python, self.device, self.extra_args = str(python), str(device), tuple(str(a) for a in extra_args)
        self.startup_timeout, self.env, self.max_restarts = float(startup_timeout), env, int(max_restarts)
        self.timeout = float(timeout)
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._client: ServerClient | None = None
        self._dir: Path | None = None
        self._lock = threading.RLock()  # _recover may be re-entered by its own health check

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "LocalServer":
        if self.process is not None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="samadapt3d-serve-"))
        token = secrets.token_urlsafe(32)
        token_file = self._dir / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        try:
            url = self._spawn()
        except BaseException:
            self.stop()
            raise
        self._client = ServerClient(url, token=token, timeout=self.timeout)
        self._client.transport.on_connection_lost = self._recover
        self._client.health()
        return self

    @property
    def client(self) -> ServerClient:
        if self._client is None:
            raise ServerError("the local server is not started: call start() first", None, "NotStarted")
        return self._client

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            _end(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the child ------------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [self.python, "-m", "samadapt3d", "serve", "--host", "127.0.0.1", "--port", "0",
                "--token-file", str(self._dir / "token"), "--device", self.device, "--exit-with-stdin",
                *self.extra_args]

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if os.path.realpath(self.python) != os.path.realpath(sys.executable):
            for name in FOREIGN_ENV:  # this interpreter's (e.g. Slicer's) settings would break another Python
                env.pop(name, None)
        env.update(self.env or {})
        return env

    def _spawn(self) -> str:
        """Start the child; its URL once it answers /health. ServerError (with its log) when it does not."""
        log_path = self._dir / f"serve-{self.restarts}.log"
        env = self.child_env()
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=log, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_drain, args=(self.process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        try:
            first = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            first = None
        found = _PORT.search(first or "")
        if found is None:
            raise ServerError(f"the server did not start ({self._why(log_path, first)})", None, "StartupError")
        url = f"http://127.0.0.1:{found.group(1)}"
        probe = ServerClient(url, timeout=2.0)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                probe.health()
                return url
            except ServerError:
                time.sleep(HEALTH_POLL_S)
        raise ServerError(f"the server at {url} did not answer /health ({self._why(log_path, first)})", None,
                          "StartupError")

    def _why(self, log_path: Path, first: str | None) -> str:
        code = None
        if self.process is not None:
            try:  # its output ended: give it a moment to be seen exiting
                code = self.process.wait(timeout=DEATH_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.exists() else []
        state = "still running" if code is None else f"exit status {code}"
        said = "; ".join(line.strip() for line in tail if line.strip()) or (first or "").strip() or "no output"
        return f"{state}: {said}"

    def _recover(self) -> bool:
        """Called when the server stopped answering: restart a dead child (at most max_restarts times)."""
        with self._lock:
            process = self.process
            if process is None:
                return False
            try:
                process.wait(timeout=DEATH_WAIT_S)
            except subprocess.TimeoutExpired:
                return False  # alive (busy or hung): nothing to restart
            if self.restarts >= self.max_restarts:
                return False
            self.restarts += 1
            _end(process)
            url = self._spawn()
            self._client.transport.url = url
            self._client.health()  # a new instance: remote sessions rebuild themselves on their next call
            return True


def _drain(stream, lines: queue.Queue) -> None:
    """The child's stdout: the first line to the queue, the rest read and dropped (a full pipe would block it)."""
    try:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode(errors="replace"))
    finally:
        lines.put(None)
        stream.close()


def _end(process: subprocess.Popen) -> None:
    if process.stdin is not None:
        try:
            process.stdin.close()  # --exit-with-stdin: the child ends by itself
        except OSError:
            pass
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
        return
    except subprocess.TimeoutExpired:
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
