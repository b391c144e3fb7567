"""Safe loading of weight files and key-layout checks.

Nothing here unpickles arbitrary objects: `.pth`/`.pth.tar` go through
`torch.load(weights_only=True)`, `.safetensors` through safetensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
#: torch.save writes a zip archive; files of older PyTorch versions start with a pickle protocol byte
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = b"\x80"
_FORBIDDEN_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _unpickling_error(path: Path, exc: pickle.UnpicklingError) -> CheckpointError:
    """torch's message advises `weights_only=False` (running the file's code): say what was found instead."""
    found = _FORBIDDEN_GLOBAL.search(str(exc))
    if found:
        return CheckpointError(f"refusing to load {path}: it holds a Python object ({found.group(1)}) whose loading "
                               "could run code; only tensors and plain containers are read. Save the model's "
                               "state_dict() (or a .safetensors file) instead")
    detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()
    return CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): "
                           f"{detail[0] if detail else type(exc).__name__}")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint without executing pickled code.

    Returns the top-level mapping (a state dict, or a dict of state dicts and plain values).
    Raises CheckpointError naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        return load_safetensors(path)
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTOCOL)):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (.pth, .pt) or a .safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(path, exc) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError, UnicodeDecodeError, struct.error) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"{_first_line(exc)}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Write tensors with JSON-encoded metadata values; written to a temp file then renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:  # a failed write leaves the old file and no partial one
        if tmp.exists():
            tmp.unlink()


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keys under `prefix` with the prefix removed; also strips DataParallel's `module.`."""
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value
    return out


def _short_list(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    allow_missing: Iterable[str] = (),
    allow_unexpected: bool = False,
) -> tuple[list[str], list[str]]:
    """Compare `state` with `module`'s parameters; raise CheckpointError naming every problem.

    Mis-shaped keys are always an error. Missing keys are an error unless listed in
    `allow_missing`; unexpected keys are an error unless `allow_unexpected`.
    Returns (missing, unexpected) as they were tolerated.
    """
    expected = module.state_dict()
    allowed_missing = set(allow_missing)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if mis_shaped:
        problems.append(f"mis-shaped keys: {_short_list(mis_shaped)}")
    bad_missing = [k for k in missing if k not in allowed_missing]
    if bad_missing:
        problems.append(f"missing keys: {_short_list(bad_missing)}")
    if unexpected and not allow_unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    return missing, unexpected
