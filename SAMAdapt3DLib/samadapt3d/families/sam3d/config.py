"""Architecture of a 3DSAM-adapter network, and its inference from a checkpoint's tensor shapes.

The published network (Gong et al., MedIA 2024; github med-air/3DSAM-adapter) is SAM ViT-B made 3D.
Only the sizes below vary between the released files and our reduced test networks; everything
else (adapter width = dim/2, shift = window/2 on even blocks, 4 necks after every quarter of
the blocks, decoder at twice the token grid) follows the published code.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from ...errors import CheckpointError


@dataclass(frozen=True)
class Sam3DAdapterConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    #: SAM's 2D patch size, applied to the slices of the upsampled crop
    patch_size: int = 16
    #: slices merged into one token by the depth-wise `slice_embed` (kernel (1, 1, num_slice))
    num_slice: int = 16
    #: side of SAM's pretrained pos_embed grid (1024 / 16); average-pooled by 2 to the token grid
    sam_grid: int = 64
    #: SAM's 2D window size; only sizes the relative-position tables of the windowed blocks
    sam_window: int = 14
    #: blocks whose rel-pos tables are sized for SAM's global attention (no global attention is run)
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    #: side of the cubic attention windows in tokens; even blocks are shifted by half of it
    window_size: int = 8
    #: tokens along depth (the published network: 32 = 512 upsampled slices / 16)
    depth_tokens: int = 32
    #: the crop is upsampled trilinearly by this factor before patch embedding (128 -> 512)
    input_upsample: int = 4
    neck_dim: int = 256
    prompt_depth: int = 2
    prompt_heads: int = 8
    prompt_mlp_dim: int = 2048
    num_global_queries: int = 10
    num_prompt_encoders: int = 4
    decoder_dim: int = 128
    num_classes: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def tiny(cls, **overrides: Any) -> "Sam3DAdapterConfig":
        """A reduced network of the same layout (32³ crops, 8³ tokens, 4³ windows) for tests and demos."""
        values: dict[str, Any] = dict(embed_dim=48, depth=4, num_heads=4, sam_grid=16, sam_window=4,
                                      global_attn_indexes=(1, 3), window_size=4, depth_tokens=8, neck_dim=32,
                                      prompt_mlp_dim=64, decoder_dim=16)
        values.update(overrides)
        return cls(**values)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """Token grid (D, H, W) of the encoder."""
        side = self.sam_grid // 2
        return (self.depth_tokens, side, side)

    @property
    def token_grid_hwd(self) -> tuple[int, int, int]:
        """The same grid in the published encoder's layout (H, W, D)."""
        d, h, w = self.token_grid
        return (h, w, d)

    @property
    def crop_size(self) -> tuple[int, int, int]:
        """Crop (D, H, W) in model voxels: 128³ for the published network."""
        d, h, w = self.token_grid
        up = self.input_upsample
        return (d * self.num_slice // up, h * self.patch_size // up, w * self.patch_size // up)

    @property
    def decoder_grid(self) -> tuple[int, int, int]:
        """Grid (D, H, W) of the decoder's aggregation: twice the token grid (64³ published)."""
        return tuple(2 * s for s in self.token_grid)  # type: ignore[return-value]

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def validate(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.patch_size % self.input_upsample or self.num_slice % self.input_upsample:
            raise ValueError("patch_size and num_slice must be multiples of input_upsample")
        if self.depth < 4 or self.depth % 4:
            raise ValueError(f"depth {self.depth} must be a multiple of 4 (a neck after every quarter)")
        if any(s % self.window_size for s in self.token_grid):
            raise ValueError(f"token grid {self.token_grid} is not a multiple of window {self.window_size}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["global_attn_indexes"] = list(self.global_attn_indexes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Sam3DAdapterConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"unknown 3DSAM-adapter config fields: {sorted(unknown)}")
        values = dict(data)
        if "global_attn_indexes" in values:
            values["global_attn_indexes"] = tuple(int(i) for i in values["global_attn_indexes"])
        return cls(**values)


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{source}: cannot infer the architecture, missing key {key!r}")
    return tuple(state[key].shape)


def infer_config(
    encoder: Mapping[str, torch.Tensor],
    decoder: Mapping[str, torch.Tensor] | None = None,
    prompt: Mapping[str, torch.Tensor] | None = None,
    *,
    num_prompt_encoders: int = 4,
    source: str = "checkpoint",
) -> Sam3DAdapterConfig:
    """Sizes of the network that produced these state dicts (encoder_dict, decoder_dict, one feature_dict)."""
    embed_dim = _shape(encoder, "patch_embed.proj.weight", source)[0]
    patch_size = _shape(encoder, "patch_embed.proj.weight", source)[-1]
    num_slice = _shape(encoder, "slice_embed.weight", source)[-1]
    sam_grid = _shape(encoder, "pos_embed", source)[1]
    depth_tokens = _shape(encoder, "depth_embed", source)[1]
    depth = len({k.split(".")[1] for k in encoder if k.startswith("blocks.")})
    head_dim = _shape(encoder, "blocks.0.attn.rel_pos_h", source)[1]
    mlp_hidden = _shape(encoder, "blocks.0.mlp.lin1.weight", source)[0]
    neck_dim = _shape(encoder, "neck_3d.0.0.weight", source)[0]
    table_lengths = [_shape(encoder, f"blocks.{i}.attn.rel_pos_h", source)[0] for i in range(depth)]
    global_len = 2 * sam_grid - 1
    global_attn = tuple(i for i, n in enumerate(table_lengths) if n == global_len)
    windowed = [n for n in table_lengths if n != global_len]
    sam_window = (windowed[0] + 1) // 2 if windowed else 14
    window_size = 8
    shifted = "blocks.0.attn_mask"
    if shifted in encoder:
        window_size = round(encoder[shifted].shape[-1] ** (1 / 3))
    values: dict[str, Any] = dict(
        embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim, mlp_ratio=mlp_hidden / embed_dim,
        patch_size=patch_size, num_slice=num_slice, sam_grid=sam_grid, sam_window=sam_window,
        global_attn_indexes=global_attn, window_size=window_size, depth_tokens=depth_tokens, neck_dim=neck_dim,
        num_prompt_encoders=num_prompt_encoders,
    )
    if prompt is not None:
        layers = {k.split(".")[2] for k in prompt if k.startswith("transformer.layers.")}
        values["prompt_depth"] = len(layers)
        values["prompt_mlp_dim"] = _shape(prompt, "transformer.layers.0.mlp.lin1.weight", source)[0]
        values["num_global_queries"] = _shape(prompt, "transformer.layers.0.global_query", source)[1]
    if decoder is not None:
        values["decoder_dim"] = _shape(decoder, "mlahead.head2.0.weight", source)[0]
        values["num_classes"] = _shape(decoder, "cls.3.weight", source)[0]
    config = Sam3DAdapterConfig(**values)
    try:
        config.validate()
    except ValueError as exc:
        raise CheckpointError(f"{source}: inferred an impossible architecture: {exc}") from exc
    return config
