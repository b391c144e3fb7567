"""samadapt3d's user cache folder (exported encoders, slice embeddings), written here rather than platformdirs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

#: env var naming the cache folder (overrides XDG_CACHE_HOME and the platform default)
CACHE_DIR_ENV = "SAMADAPT3D_CACHE_DIR"


def user_cache_dir() -> Path:
    """$SAMADAPT3D_CACHE_DIR, else the platform's user cache folder + samadapt3d (XDG on Linux)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "samadapt3d" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "samadapt3d"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "samadapt3d"
