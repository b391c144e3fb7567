"""The EfficientSAM-style two-way transformer that Medical-SAM-Adapter's SAM mask decoder uses since
its commit e987d64 (2024-01-03, `models/common/two_way_transformer.py`, later `models/common/MaskDecoder/`).

Written here from the algorithm (nothing copied). It differs from segment-anything's
`transformer.TwoWayTransformer` (which the other families keep using, unchanged) in two ways:
- key names of the token MLP: `mlp.layers.0.0` (Linear, then the activation) and `mlp.fc`
  instead of `mlp.lin1` / `mlp.lin2`;
- token self-attention: every layer keeps the residual (segment-anything's first layer replaces the
  tokens by the attention output), and in layers after the first the query positional encoding is
  added to the tokens themselves (it stays in them) rather than only to the attention's q and k.
Cross-attentions, norms and the final token-to-image attention are as in segment-anything.
"""
from __future__ import annotations

import torch
from torch import nn

from .mask_decoder import MaskDecoder
from .transformer import Attention


class StackedMLP(nn.Module):
    """`num_layers` x (Linear then activation) as `layers.N.0`, then a final Linear `fc`."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(d, hidden_dim), activation()) for d in dims_in)
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


class ResidualTwoWayBlock(nn.Module):
    """Token self-attention (residual always), token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, activation: type[nn.Module] = nn.ReLU,
                 attention_downsample_rate: int = 2, skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = StackedMLP(embedding_dim, mlp_dim, embedding_dim, 1, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.skip_first_layer_pe:
            queries = queries + query_pe  # kept in the tokens, residual included (the published behaviour)
        queries = self.norm1(queries + self.self_attn(queries, queries, queries))

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class ResidualTwoWayTransformer(nn.Module):
    """Drop-in for `transformer.TwoWayTransformer` in `mask_decoder.MaskDecoder` (same call, same outputs' shapes)."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            ResidualTwoWayBlock(embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate,
                                skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                point_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe: [B, C, h, w]; point_embedding: [B, N, C] -> (tokens, image tokens)."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


def build_residual_mask_decoder(embed_dim: int, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048,
                                num_multimask_outputs: int = 3) -> MaskDecoder:
    """SAM's mask decoder (segment-anything key names) around the residual two-way transformer."""
    return MaskDecoder(
        transformer_dim=embed_dim,
        transformer=ResidualTwoWayTransformer(depth, embed_dim, num_heads, mlp_dim),  # type: ignore[arg-type]
        num_multimask_outputs=num_multimask_outputs,
        iou_head_depth=3,
        iou_head_hidden_dim=embed_dim,
    )
