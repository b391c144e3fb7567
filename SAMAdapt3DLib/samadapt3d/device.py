"""Device selection: 'auto' picks CUDA, then MPS, then CPU; an absent device is a clear error."""
from __future__ import annotations

import re

import torch

from .errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: a device name: a kind, and for cuda an optional GPU index (`cuda:1`)
_DEVICE_NAME = re.compile(r"^(auto|mps|(?:cpu|cuda)(?::[0-9]+)?)$")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        name = str(name)
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if not _DEVICE_NAME.match(name):
        raise DeviceError(f"malformed device {name!r}; write one of {', '.join(DEVICE_CHOICES)} or cuda:N "
                          "(N a GPU index)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was requested but this PyTorch sees no CUDA GPU (torch {torch.__version__})")
    if kind == "cuda" and ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} was requested but this PyTorch sees {torch.cuda.device_count()} CUDA "
                          "GPU(s), numbered from 0")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise DeviceError(f"device {name!r} was requested but Apple MPS is not available here")
    return torch.device(name)
