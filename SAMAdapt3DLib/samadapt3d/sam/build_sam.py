"""Registry of SAM sizes; builds the 2D SAM whose state dict has segment-anything's key layout.

`sam_model_registry["vit_b"]()` gives a randomly initialised model whose `state_dict()` is a
real-format `sam_vit_b_01ec64.pth` layout; tests use small sizes from `SAM_SIZES` the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamSize:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    extra: dict = field(default_factory=dict)


SAM_SIZES: dict[str, SamSize] = {
    "vit_b": SamSize(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSize(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSize(1280, 32, 16, (7, 15, 23, 31)),
    # A tiny size with the same layout, for tests.
    "vit_tiny": SamSize(48, 4, 4, (1, 3), img_size=128, window_size=4, prompt_embed_dim=32,
                        decoder_heads=4, decoder_mlp_dim=64),
}


class Sam(nn.Module):
    """The plain 2D SAM: image encoder, prompt encoder and mask decoder."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)


def build_prompt_encoder(embed_dim: int, image_size: int, embedding_size: int) -> PromptEncoder:
    return PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )


def build_mask_decoder(
    embed_dim: int, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048, num_multimask_outputs: int = 3
) -> MaskDecoder:
    return MaskDecoder(
        transformer_dim=embed_dim,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=embed_dim, num_heads=num_heads, mlp_dim=mlp_dim),
        num_multimask_outputs=num_multimask_outputs,
        iou_head_depth=3,
        iou_head_hidden_dim=embed_dim,
    )


def build_image_encoder(size: SamSize) -> ImageEncoderViT:
    return ImageEncoderViT(
        img_size=size.img_size,
        patch_size=size.patch_size,
        embed_dim=size.embed_dim,
        depth=size.depth,
        num_heads=size.num_heads,
        out_chans=size.prompt_embed_dim,
        window_size=size.window_size,
        global_attn_indexes=size.global_attn_indexes,
    )


def build_sam(size: SamSize | str) -> Sam:
    if isinstance(size, str):
        size = SAM_SIZES[size]
    grid = size.img_size // size.patch_size
    return Sam(
        image_encoder=build_image_encoder(size),
        prompt_encoder=build_prompt_encoder(size.prompt_embed_dim, size.img_size, grid),
        mask_decoder=build_mask_decoder(
            size.prompt_embed_dim, size.decoder_depth, size.decoder_heads, size.decoder_mlp_dim
        ),
    )


sam_model_registry: dict[str, Callable[[], Sam]] = {
    name: (lambda name=name: build_sam(name)) for name in SAM_SIZES
}
