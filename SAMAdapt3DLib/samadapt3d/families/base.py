"""The small interface between model families and the rest of the library.

Two kinds of model exist:
- CropModel: a volumetric network that sees a fixed-size crop in model space (3DSAM-adapter).
- SliceModel: a 2D SAM-style network run slice by slice (LiteMedSAM, MA-SAM, Med-SA, SAMed).
Engines (samadapt3d.engines) turn either kind into the same `Engine` the session drives.
A family module never imports the session, the engines or the CLI.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from ..preprocess import Preset


class SegmentationModel(nn.Module, ABC):
    """Common attributes of every family's model."""

    family: str = "base"
    #: True when the network itself understands negative clicks; engines emulate them otherwise.
    supports_negative_points: bool = False
    #: Class names for multi-class models (one segment per class); None for a prompted binary model.
    class_names: tuple[str, ...] | None = None

    def __init__(self, preset: Preset) -> None:
        super().__init__()
        self.preset = preset

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (family, preset, sizes) for logs, the CLI and the Slicer module."""
        return {"family": self.family, "preset": self.preset.to_dict(),
                "parameters": sum(p.numel() for p in self.parameters())}


class CropModel(SegmentationModel):
    """A model that segments a fixed-size 3D crop [B, 1, D, H, W] in model space from point clicks."""

    #: crop size (D, H, W) in model voxels
    crop_size: tuple[int, int, int]

    @abstractmethod
    def encode(self, crop: torch.Tensor) -> Any:
        """Heavy part: image features of a normalised crop [B, 1, D, H, W]. Cacheable per crop."""

    @abstractmethod
    def decode(self, features: Any, points: torch.Tensor) -> torch.Tensor:
        """Light part: foreground probability [B, 1, D, H, W] from cached features and points
        [B, N, 3] (float voxel indices along (D, H, W) of the crop)."""

    @torch.no_grad()
    def predict_crop(self, crop: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(crop), points)


class SliceModel(SegmentationModel):
    """A 2D SAM-style model applied to one slice at a time.

    Pixel coordinates are (x, y) = (column, row) of the model's square input, as SAM's.
    """

    #: side of the square model input (e.g. 256 for LiteMedSAM, 1024 for SAM)
    image_size: int

    @abstractmethod
    def preprocess_slice(self, slice2d: "np.ndarray") -> tuple[torch.Tensor, Any]:  # noqa: F821
        """A 2D slice (already preset-normalised, [rows, cols]) -> model input [3, S, S] and the
        transform needed to map coordinates and masks back (see `to_model_xy`, `mask_to_slice`)."""

    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings of model inputs [B, 3, S, S]. Cacheable per slice."""

    @abstractmethod
    def decode(
        self,
        embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits [B, M, s, s] (low resolution) and predicted IoU [B, M]."""
