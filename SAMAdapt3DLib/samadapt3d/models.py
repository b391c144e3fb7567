"""`load_model`: a model from a built-in name or a weight file, whatever its family.

Each family module exposes `FAMILY: FamilySpec`. Files are sniffed (after a safe load) by each
family in turn; names are looked up in every family's `builtin_names`.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .checkpoints import load_weights, read_safetensors_metadata
from .device import resolve_device
from .errors import CheckpointError, InputError, ModelNotFoundError
from .families.base import SegmentationModel
from .runtime import apply_precision

FAMILY_MODULES = (
    "samadapt3d.families.sam3d_adapter",
    "samadapt3d.families.litemedsam",
    "samadapt3d.families.samed",
    "samadapt3d.families.ma_sam",
    "samadapt3d.families.med_sa",
    "samadapt3d.families.litemedsam_adapter",
)

DEFAULT_MODEL = "litemedsam"


@dataclass(frozen=True)
class FamilySpec:
    name: str
    #: True if a safely loaded checkpoint object (dict) belongs to this family
    detect: Callable[[dict[str, Any]], bool]
    #: build the model from the loaded object; `path` for messages, `sam_checkpoint` optional base file
    load: Callable[..., SegmentationModel]
    #: names that need no file, e.g. the embedded LiteMedSAM -> callable returning the model
    builtin_names: dict[str, Callable[..., SegmentationModel]] = field(default_factory=dict)
    description: str = ""
    #: keyword settings `load` takes from the caller (load_model's `options`; CLI --model-option key=value)
    options: tuple[str, ...] = ()


def families() -> list[FamilySpec]:
    specs = []
    for module_name in FAMILY_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # family not built yet
            raise
        specs.append(module.FAMILY)
    return specs


#: the official segment-anything file names; one of them next to an adapter checkpoint is its SAM base
OFFICIAL_SAM_FILES = ("sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth")


def find_sam_base(model_path: str | os.PathLike) -> Path | None:
    """The SAM base file next to a model file, when exactly one official SAM file lies there."""
    folder = Path(model_path).expanduser().parent
    found = [folder / name for name in OFFICIAL_SAM_FILES if (folder / name).is_file()]
    return found[0] if len(found) == 1 else None


def builtin_model_names() -> list[str]:
    return sorted(name for spec in families() for name in spec.builtin_names)


def load_model(
    path_or_name: str | os.PathLike | None = None,
    sam_checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    options: Mapping[str, Any] | None = None,
    precision: str | None = None,
) -> SegmentationModel:
    """Load a model by built-in name (e.g. "litemedsam") or from a weight file of any supported family.

    Adapter files that hold only their own tensors (SAMed, MA-SAM, Med-SA, our safetensors) need the SAM base file
    they were trained on: `sam_checkpoint`, or else the one official SAM file lying next to the model file.
    `options` are family settings (e.g. Med-SA's chunk), passed to the family's loader; an option the file's
    family does not declare (`FamilySpec.options`) is refused. `precision` ("auto", "fp32", "bf16";
    samadapt3d.runtime): how LiteMedSAM's encoder runs (default: the family's own, "auto"); others take "fp32"."""
    target = resolve_device(device)
    name = DEFAULT_MODEL if path_or_name is None else str(path_or_name)
    specs = families()
    for spec in specs:
        if name.lower() in spec.builtin_names:
            if options:
                raise InputError(f"model options ({', '.join(sorted(options))}) apply to weight files, not {name!r}")
            model = spec.builtin_names[name.lower()](sam_checkpoint=sam_checkpoint)
            return apply_precision(model.to(target).eval(), precision)
    path = Path(name).expanduser()
    if not path.exists():
        known = ", ".join(builtin_model_names()) or "none"
        raise ModelNotFoundError(f"unknown model {name!r}: not a built-in name ({known}) and no such file")
    if path.suffix == ".safetensors":
        obj: dict[str, Any] = {"__safetensors_metadata__": read_safetensors_metadata(path), "__path__": str(path)}
    else:
        obj = load_weights(path)
    if sam_checkpoint is None:
        sam_checkpoint = find_sam_base(path)
    for spec in specs:
        if spec.detect(obj):
            unknown = sorted(set(options or {}) - set(spec.options))
            if unknown:
                known = ", ".join(spec.options) or "none"
                raise InputError(f"model option {', '.join(unknown)} is not one of {spec.name}'s ({known})")
            model = spec.load(obj, path=path, sam_checkpoint=sam_checkpoint, **dict(options or {}))
            return apply_precision(model.to(target).eval(), precision)
    keys = ", ".join(sorted(str(k) for k in obj)[:8])
    raise CheckpointError(f"{path}: no model family recognises this file (top-level keys: {keys})")
