"""Model family "3dsam_adapter": registration for `samadapt3d.load_model` (the code is in `sam3d/`).

Files it recognises: the released `.pth.tar` (encoder_dict / decoder_dict / feature_dict) and our
`.safetensors` (metadata format "samadapt3d.3dsam_adapter"). A bare SAM `.pth` is not a
3DSAM-adapter; build an untrained one for fine-tuning with `from_sam_checkpoint(path)`.
"""
from __future__ import annotations

import os
from typing import Any

from ..models import FamilySpec
from .sam3d import (GENERIC_CT, PRESETS, CropFeatures, LoadReport, SAM3DAdapter, Sam3DAdapterConfig,
                    export_safetensors, from_sam_checkpoint, infer_config, load_checkpoint, load_released,
                    released_state, save_released)
from .sam3d.checkpoint import is_our_safetensors, is_released_checkpoint


def detect(obj: dict[str, Any]) -> bool:
    return is_released_checkpoint(obj) or is_our_safetensors(obj)


def load(obj: dict[str, Any], path: str | os.PathLike | None = None,
         sam_checkpoint: str | os.PathLike | None = None) -> SAM3DAdapter:
    return load_checkpoint(obj, path=path, sam_checkpoint=sam_checkpoint)


FAMILY = FamilySpec(
    name="3dsam_adapter",
    detect=detect,
    load=load,
    builtin_names={},
    description="3DSAM-adapter (Gong et al. 2024): SAM ViT-B made 3D, 128³ crops, point clicks",
)

__all__ = [
    "FAMILY", "detect", "load", "SAM3DAdapter", "Sam3DAdapterConfig", "CropFeatures", "LoadReport", "PRESETS",
    "GENERIC_CT", "export_safetensors", "from_sam_checkpoint", "infer_config", "load_checkpoint", "load_released",
    "released_state", "save_released",
]
