"""The 3DSAM-adapter network as a CropModel.

Axis conventions (the one place they are translated):
- the public API takes crops [B, 1, D, H, W] (D = axial slice index) and clicks [B, N, 3] as voxel
  indices along (D, H, W);
- inside, every tensor follows the published layout [.., H, W, D] (the encoder slices along D and
  puts it last), so released 3D kernels see the axes they were trained on;
- the published code passes clicks as (d, w, h); `points_to_grid` builds that order from (d, h, w).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from ...preprocess import Preset
from ..base import CropModel
from .allocator import keep_freed_memory
from .config import Sam3DAdapterConfig
from .decoder import MLADecoder
from .encoder import ImageEncoder3D
from .prompt_encoder import PointPromptEncoder

#: the prompt encoder that the published method uses (the one on the last neck feature)
ACTIVE_PROMPT_ENCODER = 3


@dataclass
class LoadReport:
    """What a weight load did: where weights came from and which keys were not used or not found."""

    source: str
    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.source}: {len(self.loaded)} tensors loaded"]
        if self.unused:
            parts.append(f"{len(self.unused)} unused ({_preview(self.unused)})")
        if self.missing:
            parts.append(f"{len(self.missing)} not in the file, left at initial values ({_preview(self.missing)})")
        parts.extend(self.notes)
        return "; ".join(parts)


def _preview(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass
class CropFeatures:
    """Encoder output for one crop batch, reusable for any clicks on it."""

    features: list[torch.Tensor]  # 4 × [B, neck_dim, H', W', D'] (published layout)
    small_crop: torch.Tensor  # crop resized to the decoder grid, [B, 1, h, w, d]
    crop_size: tuple[int, int, int]  # (D, H, W)
    #: the decoder's click-independent part (MLADecoder.static_part), filled by the first decode on this crop
    decoder_static: torch.Tensor | None = None


class SAM3DAdapter(CropModel):
    family = "3dsam_adapter"
    prompt_kinds = frozenset({"positive"})  # negatives and boxes are emulated by the crop engine

    def __init__(self, config: Sam3DAdapterConfig | None = None, preset: Preset | None = None) -> None:
        from .presets import GENERIC_CT

        super().__init__(preset or GENERIC_CT)
        keep_freed_memory()  # once per process: the forward's transient buffers stay in the allocator
        self.config = config or Sam3DAdapterConfig()
        self.crop_size = self.config.crop_size
        self.image_encoder = ImageEncoder3D(self.config)
        self.prompt_encoders = nn.ModuleList(PointPromptEncoder(self.config) for _ in range(self.config.num_prompt_encoders))
        self.mask_decoder = MLADecoder(self.config)
        self.load_report: LoadReport | None = None
        self.sam_sha256: str | None = None
        self.set_trainable()

    # ---- training setup -------------------------------------------------------------------
    def set_trainable(self) -> None:
        """requires_grad as the published training: SAM's patch embedding, pos_embed, attention
        projections, rel_pos_h/w, lr and MLPs stay frozen; depth/slice embeddings, norms,
        adapters, rel_pos_d, necks, prompt encoders and decoder train."""
        encoder = self.image_encoder
        for p in encoder.parameters():
            p.requires_grad_(False)
        trainable: list[nn.Module | nn.Parameter] = [encoder.depth_embed, encoder.slice_embed, encoder.neck_3d]
        for block in encoder.blocks:
            trainable += [block.norm1, block.norm2, block.adapter, block.attn.rel_pos_d]
        for item in trainable:
            params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
            for p in params:
                p.requires_grad_(True)
        for p in list(self.prompt_encoders.parameters()) + list(self.mask_decoder.parameters()):
            p.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- inference --------------------------------------------------------------------------
    def _check_crop(self, crop: torch.Tensor) -> None:
        if crop.dim() != 5 or crop.shape[1] != 1:
            raise InputError(f"crop must be [B, 1, D, H, W], got {tuple(crop.shape)}")
        if tuple(crop.shape[2:]) != tuple(self.crop_size):
            raise InputError(f"crop must be {tuple(self.crop_size)} voxels (D, H, W), got {tuple(crop.shape[2:])}")

    def encode(self, crop: torch.Tensor) -> CropFeatures:
        self._check_crop(crop)
        crop_hwd = crop.to(self.device, torch.float32).permute(0, 1, 3, 4, 2)
        features = self.image_encoder(crop_hwd)
        d, h, w = self.config.decoder_grid
        small = F.interpolate(crop_hwd, size=(h, w, d), mode="trilinear", align_corners=False)
        return CropFeatures(features=features, small_crop=small, crop_size=tuple(self.crop_size))

    @staticmethod
    def _check_points(points: torch.Tensor, batch: int) -> None:
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != batch or points.shape[1] < 1:
            raise InputError(f"points must be [B, N>=1, 3] with B={batch}, got {tuple(points.shape)}")

    @torch.no_grad()
    def predict_crop(self, crop: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        self._check_points(points, crop.shape[0])  # before the expensive encoder
        return self.decode(self.encode(crop), points)

    def decode(self, features: CropFeatures, points: torch.Tensor) -> torch.Tensor:
        feats = features.features
        self._check_points(points, feats[0].shape[0])
        if features.decoder_static is None:  # once per crop: every later click on it reuses this
            features.decoder_static = self.mask_decoder.static_part(feats[:3], features.small_crop)
        prompted = self.prompt_encoders[ACTIVE_PROMPT_ENCODER](feats[3], points.to(feats[3].device), features.crop_size)
        d, h, w = features.crop_size
        foreground = self.mask_decoder.click_foreground(prompted, features.decoder_static, (h, w, d))
        return foreground.permute(0, 1, 4, 2, 3)  # [B, 1, D, H, W]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(config=self.config.to_dict(), crop_size=list(self.crop_size), sam_sha256=self.sam_sha256)
        if self.load_report is not None:
            info["load_report"] = self.load_report.summary()
        return info
