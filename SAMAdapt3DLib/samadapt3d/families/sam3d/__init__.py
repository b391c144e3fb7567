"""3DSAM-adapter (Gong et al., MedIA 2024): SAM ViT-B adapted to 3D promptable tumour segmentation."""
from .checkpoint import (export_safetensors, from_sam_checkpoint, load_checkpoint, load_released,
                         load_sam_into, released_state, save_released)
from .config import Sam3DAdapterConfig, infer_config
from .model import CropFeatures, LoadReport, SAM3DAdapter
from .presets import GENERIC_CT, PRESETS, preset_for_path

__all__ = [
    "export_safetensors", "from_sam_checkpoint", "load_checkpoint", "load_released", "load_sam_into",
    "released_state", "save_released", "Sam3DAdapterConfig", "infer_config", "CropFeatures", "LoadReport",
    "SAM3DAdapter", "GENERIC_CT", "PRESETS", "preset_for_path",
]
