"""`samadapt3d serve [--host 127.0.0.1] [--port 0] [--token-file F] [--device auto] [--max-sessions N]
[--max-voxels N] [--idle-timeout S] [--workers N] [--model-family MODULE]... [--exit-with-stdin]`

With --port 0 the first stdout line is `samadapt3d serve: port N (http://HOST:N)`, for a launcher to read.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import sys
import threading
from pathlib import Path

from ..errors import InputError
from .state import DEFAULT_MAX_VOXELS, ServerConfig

#: seconds a kept-alive connection may idle (uvicorn's default, 5 s, would drop a client between two clicks)
KEEP_ALIVE_S = 300
PORT_LINE = "samadapt3d serve: port {port} (http://{host}:{port})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samadapt3d serve", description="Serve interactive segmentation sessions "
                                "over HTTP (docs/SERVER.md).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only); any other "
                                                      "address needs --token-file")
    p.add_argument("--port", type=int, default=0, help="port (0: a free one, printed on the first stdout line)")
    p.add_argument("--token-file", default=None, help="file holding the access token; created with a new random "
                                                      "token (mode 600) when it does not exist")
    p.add_argument("--device", default="auto", help="default device for models: auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--max-sessions", type=int, default=8, help="sessions held at once (least recently used "
                                                              "dropped first; default: %(default)s)")
    p.add_argument("--max-voxels", type=int, default=DEFAULT_MAX_VOXELS, help="largest image accepted, in voxels "
                                                                             "(default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=3600.0, help="seconds after which an idle session "
                                                                     "expires (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="threads running models (default: %(default)s)")
    p.add_argument("--model-family", action="append", default=[], metavar="MODULE",
                   help="also offer the model family defined by this importable module (its FAMILY); repeatable")
    p.add_argument("--exit-with-stdin", action="store_true", help="exit when stdin closes (a launcher's child "
                                                                 "ends with its parent)")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_or_create_token(path: Path) -> str:
    """The token in `path`; a missing file is created (owner-only) with a new random token."""
    if not path.exists():
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise InputError(f"token file {path} is empty")
    return token


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if not is_loopback(args.host) and args.token_file is None:
        raise InputError(f"refusing to serve on {args.host} (not loopback) without a token: give --token-file")
    for name in ("max_sessions", "max_voxels", "workers"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.idle_timeout <= 0:
        raise InputError("--idle-timeout must be positive")
    token = None if args.token_file is None else read_or_create_token(Path(args.token_file).expanduser())
    return ServerConfig(token=token, device=args.device, max_sessions=args.max_sessions, max_voxels=args.max_voxels,
                        idle_timeout=args.idle_timeout, workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    import uvicorn

    from .. import models
    from ..device import resolve_device

    if args.model_family:
        models.FAMILY_MODULES = models.FAMILY_MODULES + tuple(args.model_family)
        for name in args.model_family:
            __import__(name)  # a wrong module name fails now, not at the first load
    resolve_device(args.device)  # an absent device is an error now, not at the first model load
    from .app import create_app

    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: uvicorn writes headers and body apart, and with Nagle + the client's
    # delayed ACK every answer would wait ~40 ms
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise InputError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    port = sock.getsockname()[1]
    print(PORT_LINE.format(port=port, host=args.host), flush=True)
    if args.exit_with_stdin:
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", timeout_keep_alive=KEEP_ALIVE_S,
                                           access_log=False))
    server.run(sockets=[sock])
    return 0


def _exit_when_stdin_closes() -> None:
    try:
        while sys.stdin.buffer.read(1024):
            pass
    except (OSError, ValueError):
        pass
    os._exit(0)
