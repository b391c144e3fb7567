"""HTTP to `samadapt3d serve` with the standard library: one kept-alive connection per thread, timeouts,
retries of idempotent requests, and server errors turned back into the library's exceptions."""
from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

from ..errors import CancelledError, CheckpointError, DeviceError, InputError, ModelNotFoundError, SAMAdapt3DError

#: pauses before the retries of an idempotent request whose connection failed
RETRY_DELAYS_S = (0.1, 0.5)
#: error kinds the server sends that are the library's own exceptions (raised as such, so a client is a drop-in)
LIBRARY_ERRORS: dict[str, type[SAMAdapt3DError]] = {
    "InputError": InputError, "CancelledError": CancelledError, "ModelNotFoundError": ModelNotFoundError,
    "CheckpointError": CheckpointError, "DeviceError": DeviceError, "SAMAdapt3DError": SAMAdapt3DError,
}
_CONNECTION_ERRORS = (ConnectionError, http.client.HTTPException, socket.timeout, OSError)


class ServerError(SAMAdapt3DError):
    """The server refused a request (`status`, `kind` as it sent them) or cannot be reached (status None)."""

    def __init__(self, message: str, status: int | None = None, kind: str = "ConnectionError") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class Transport:
    """Requests to one base URL. `on_connection_lost` (set by a launcher) is called when the server cannot be
    reached, before the error is raised; it may restart the server and change `url`."""

    def __init__(self, url: str, token: str | None, timeout: float, client_id: str) -> None:
        self.url = url
        self.token, self.timeout, self.client_id = token, float(timeout), client_id
        self.on_connection_lost: Callable[[], bool] | None = None
        self._local = threading.local()

    @property
    def url(self) -> str:
        return self._url

    @url.setter
    def url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"a server URL looks like http://host:port, got {url!r}")
        self._url, self._parts = url.rstrip("/"), parts
        self._generation = getattr(self, "_generation", 0) + 1  # connections to an old URL are dropped

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """(connection, reused): a kept-alive one unless the server has closed it meanwhile."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and (self._local.generation != self._generation or _closed_by_peer(conn)):
            conn.close()
            conn = None
        reused = conn is not None
        if conn is None:
            cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            conn = cls(self._parts.hostname, self._parts.port, timeout=timeout)
            self._local.conn, self._local.generation = conn, self._generation
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, reused

    def drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                idempotent: bool = False, timeout: float | None = None) -> tuple[int, bytes]:
        timeout = self.timeout if timeout is None else float(timeout)
        all_headers = {"X-Client-Id": self.client_id, **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        delays = RETRY_DELAYS_S if idempotent else ()
        for attempt in range(len(delays) + 1):
            conn, _ = self._connection(timeout)
            try:
                if conn.sock is None:
                    conn.connect()
                    # headers and body go out in two writes: without this Nagle + delayed ACK add ~40 ms a call
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.request(method, self._parts.path.rstrip("/") + path, body=body, headers=all_headers)
                response = conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.drop_connection()
                return response.status, data
            except socket.timeout:
                self.drop_connection()
                raise ServerError(f"no answer from the server at {self.url} within {timeout:g} s "
                                  f"({method} {path})", None, "Timeout") from None
            except _CONNECTION_ERRORS as exc:
                self.drop_connection()
                if attempt < len(delays):
                    time.sleep(delays[attempt])
                    continue
                restarted = self.on_connection_lost() if self.on_connection_lost is not None else False
                note = "; it was restarted: the session is rebuilt on the next call" if restarted else ""
                raise ServerError(f"the server at {self.url} stopped answering ({method} {path}: "
                                  f"{type(exc).__name__}: {exc}){note}") from None
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, payload: dict | None = None, idempotent: bool = False,
             timeout: float | None = None) -> dict:
        """A JSON request; a 4xx / 5xx answer is raised (the library's exception for its errors, else
        ServerError)."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        status, data = self.request(method, path, body, headers, idempotent, timeout)
        return decode_answer(status, data, f"{method} {path}")


def decode_answer(status: int, data: bytes, what: str) -> dict:
    try:
        answer = json.loads(data or b"{}")
    except ValueError:
        raise ServerError(f"{what}: the server answered {status} with a body that is not JSON", status) from None
    if status < 400:
        return answer
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        detail = answer.get("detail") if isinstance(answer, dict) else None
        raise ServerError(f"{what}: HTTP {status}{f': {detail}' if detail else ''}", status, "HTTPError")
    kind, message = str(error.get("kind", "Error")), str(error.get("message", ""))
    library = LIBRARY_ERRORS.get(kind)
    if library is not None:
        raise library(message)
    raise ServerError(message or f"{what}: HTTP {status}", status, kind)


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """A kept-alive socket that is readable before we sent anything has been closed by the server."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
