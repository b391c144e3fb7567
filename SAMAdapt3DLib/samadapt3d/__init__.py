"""SAMAdapt3D: prompted 3D segmentation with adapter-augmented Segment Anything models."""
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
from .models import load_model  # noqa: E402

__all__ = [
    "__version__", "load_model", "SAMAdapt3DError", "InputError", "CheckpointError", "ModelNotFoundError",
    "DeviceError", "CancelledError",
]
