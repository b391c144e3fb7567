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
from .transformer import TwoWayAttentionBlock, TwoWayTransformer


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


class ResidualTwoWayBlock(TwoWayAttentionBlock):
    """segment-anything's block with the residual token self-attention and the stacked token MLP."""

    def _make_mlp(self, embedding_dim: int, mlp_dim: int, activation: type[nn.Module]) -> nn.Module:
        return StackedMLP(embedding_dim, mlp_dim, embedding_dim, 1, activation)

    def _attend_tokens(self, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
        if not self.skip_first_layer_pe:
            queries = queries + query_pe  # kept in the tokens, residual included (the published behaviour)
        return self.norm1(queries + self.self_attn(queries, queries, queries))


class ResidualTwoWayTransformer(TwoWayTransformer):
    """Drop-in for `transformer.TwoWayTransformer` in `mask_decoder.MaskDecoder` (same call, same outputs' shapes)."""

    block_type = ResidualTwoWayBlock


def build_residual_mask_decoder(embed_dim: int, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048,
                                num_multimask_outputs: int = 3) -> MaskDecoder:
    """SAM's mask decoder (segment-anything key names) around the residual two-way transformer."""
    return MaskDecoder(
        transformer_dim=embed_dim,
        transformer=ResidualTwoWayTransformer(depth, embed_dim, num_heads, mlp_dim),
        num_multimask_outputs=num_multimask_outputs,
        iou_head_depth=3,
        iou_head_hidden_dim=embed_dim,
    )
