"""3DSAM-adapter's point prompt encoder (key names of one `feature_dict` entry of a released file).

Clicks carry no label. The feature under each click is sampled from the last neck feature; these
point tokens and a set of learnable global queries attend to each other, then the image tokens
cross-attend to the queries. Only the image tokens leave the encoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...sam.common import MLPBlock
from ...sam.transformer import Attention
from .config import Sam3DAdapterConfig


class PointQueryLayer(nn.Module):
    """One layer: self-attention over [global queries; point tokens], MLP on the queries, then
    image -> query cross-attention. `cross_attn_token_to_image` exists in the published files
    but the published forward never calls it; it is kept so those files load strictly."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, num_queries: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.global_query = nn.Parameter(0.1 * torch.randn(1, num_queries, dim))
        self.num_queries = num_queries

    def forward(self, image_tokens: torch.Tensor, point_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        queries = torch.cat([self.global_query.expand(point_tokens.shape[0], -1, -1), point_tokens], dim=1)
        queries = self.norm2(queries + self.norm1(self.self_attn(q=queries, k=queries, v=queries)))
        point_tokens = queries[:, self.num_queries:]
        queries = queries[:, : self.num_queries]
        queries = self.norm3(queries + self.mlp(queries))
        attended = self.cross_attn_image_to_token(q=image_tokens, k=queries, v=queries)
        return self.norm4(image_tokens + attended), point_tokens


class PointQueryTransformer(nn.Module):
    def __init__(self, config: Sam3DAdapterConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PointQueryLayer(config.neck_dim, config.prompt_heads, config.prompt_mlp_dim, config.num_global_queries)
            for _ in range(config.prompt_depth)
        )

    def forward(self, image_tokens: torch.Tensor, point_tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            image_tokens, point_tokens = layer(image_tokens, point_tokens)
        return image_tokens


def points_to_grid(points_dhw: torch.Tensor, crop_size: tuple[int, int, int]) -> torch.Tensor:
    """Crop voxel indices [B, N, 3] along (D, H, W) -> grid_sample coordinates [B, 1, 1, N, 3] for a
    feature map laid out [B, C, H', W', D'] (published layout).

    grid_sample reads the last grid component along the first spatial axis, so the components are
    (d, w, h): this is why the published code passes clicks as (d, w, h). Voxel centres map to
    (i + 0.5) / size * 2 - 1 with align_corners=False, so a click lands on the same physical point
    of the coarser feature grid.
    """
    d_size, h_size, w_size = crop_size
    d, h, w = points_dhw.unbind(-1)
    grid = torch.stack(
        [(d + 0.5) * 2 / d_size - 1, (w + 0.5) * 2 / w_size - 1, (h + 0.5) * 2 / h_size - 1], dim=-1
    )
    return grid[:, None, None, :, :]


class PointPromptEncoder(nn.Module):
    def __init__(self, config: Sam3DAdapterConfig) -> None:
        super().__init__()
        self.transformer = PointQueryTransformer(config)
        # Stored in the published files and used there only for position encodings that no layer
        # reads; kept so those files load strictly (it does not affect the output).
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, config.neck_dim // 2))

    def forward(self, feature: torch.Tensor, points_dhw: torch.Tensor, crop_size: tuple[int, int, int]) -> torch.Tensor:
        """feature [B, C, H', W', D'], points [B, N, 3] (crop voxels, D H W) -> refined feature, same shape."""
        grid = points_to_grid(points_dhw.to(feature.dtype), crop_size)
        point_tokens = F.grid_sample(feature, grid, align_corners=False).flatten(2).transpose(1, 2)  # [B, N, C]
        image_tokens = feature.flatten(2).transpose(1, 2)
        out = self.transformer(image_tokens, point_tokens)
        return out.transpose(1, 2).reshape(feature.shape)
