"""SAMAdapt3D: prompted 3D segmentation with adapter-augmented Segment Anything models.

Importing the package imports neither torch nor a model: `samadapt3d.client` runs without torch (inside 3D Slicer),
and the command line installs its Ctrl-C handler before torch is loaded. `load_model` imports torch on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CancelledError,
    CheckpointError,
    DeviceError,
    InputError,
    ModelNotFoundError,
    SAMAdapt3DError,
)

__all__ = [
    "__version__", "load_model", "SAMAdapt3DError", "InputError", "CheckpointError", "ModelNotFoundError",
    "DeviceError", "CancelledError",
]


def __getattr__(name: str):
    # PEP 562: the torch-heavy entry point is loaded only when asked for
    if name == "load_model":
        from .models import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
