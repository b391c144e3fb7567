"""The small interface between model families and the rest of the library.

Two kinds of model exist:
- CropModel: a volumetric network that sees a fixed-size crop in model space (3DSAM-adapter).
- SliceModel: a 2D SAM-style network run slice by slice (LiteMedSAM, MA-SAM, Med-SA, SAMed).
Engines (samadapt3d.engines) turn either kind into the same `Engine` the session drives.
A family module never imports the session, the engines or the CLI.

Capabilities are declared on the types (never probed with hasattr): `prompt_kinds` (what the network itself
understands; engines emulate the rest, docs/SESSION.md), `class_names` (multi-class), `slice_context` /
`slab_size` (slices seen around one slice), `engine` (the name of the engine that runs the model).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

import torch
from torch import nn

from ..preprocess import Preset


#: every prompt kind the session knows
PROMPT_KINDS = ("positive", "negative", "box")
#: engines (samadapt3d.engines): "crop" CropEngine, "slices" SliceEngine (slice propagation), "slab" SlabEngine
ENGINE_NAMES = ("crop", "slices", "slab")


class SegmentationModel(nn.Module, ABC):
    """Common attributes of every family's model."""

    family: str = "base"
    #: prompt kinds ("positive", "negative", "box") the network itself understands; engines emulate the others
    prompt_kinds: ClassVar[frozenset[str]] = frozenset({"positive"})
    #: Class names for multi-class models (one segment per class); None for a prompted binary model.
    class_names: tuple[str, ...] | None = None
    #: the engine that runs this model over a volume: one of ENGINE_NAMES
    engine: ClassVar[str] = ""

    @property
    def multi_class(self) -> bool:
        """True for a prompt-free model with fixed classes (`samadapt3d auto`), False for a prompted one."""
        return self.class_names is not None

    @property
    def supports_negative_points(self) -> bool:
        """True when the network itself understands negative clicks; engines emulate them otherwise."""
        return "negative" in self.prompt_kinds

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

    engine = "crop"
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

    engine = "slices"
    #: side of the square model input (e.g. 256 for LiteMedSAM, 1024 for SAM)
    image_size: int
    #: neighbours on each side a slice is embedded with (`embed_in_volume`); 0: a slice alone
    slice_context: int = 0
    #: consecutive slices one forward pass of a slab model sees (MA-SAM: 5)
    slab_size: int = 1

    @staticmethod
    def normalize_slice(slice2d: np.ndarray) -> np.ndarray:
        """A slice scaled to [0, 1] (min-max) for the engine's image cues; families with their own rule override it."""
        lo, hi = float(slice2d.min()), float(slice2d.max())
        return (np.asarray(slice2d, dtype=np.float32) - lo) / max(hi - lo, 1e-8)

    def embed_in_volume(self, image: np.ndarray, axis: int, index: int) -> torch.Tensor:
        """Embedding [1, C, h, w] of slice `index` along `axis` of a model-space volume; models with a
        `slice_context` see the neighbours too (they override this)."""
        tensor, _ = self.preprocess_slice(np.ascontiguousarray(np.take(image, index, axis=axis)))
        return self.embed(tensor[None])

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
