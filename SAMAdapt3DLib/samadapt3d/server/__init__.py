"""`samadapt3d serve`: the InteractiveSession API over HTTP (FastAPI + uvicorn); see docs/SERVER.md.

`main(argv)` is what `samadapt3d serve ...` calls; `create_app` builds the app (tests serve it in-process).
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from .cli import main as serve_main

    return serve_main(argv)
