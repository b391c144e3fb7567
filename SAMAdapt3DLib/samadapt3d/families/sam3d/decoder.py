"""3DSAM-adapter's multi-layer aggregation decoder (key names of `decoder_dict` in a released file)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Sam3DAdapterConfig


def _conv_norm_relu(in_dim: int, out_dim: int) -> list[nn.Module]:
    return [nn.Conv3d(in_dim, out_dim, 3, padding=1, bias=False), nn.InstanceNorm3d(out_dim), nn.ReLU()]


class FeatureHeads(nn.Module):
    """One head per neck feature: 2 × (Conv3d 3³, InstanceNorm, ReLU), upsampled to the decoder grid."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        for name in ("head2", "head3", "head4", "head5"):
            setattr(self, name, nn.Sequential(*_conv_norm_relu(in_dim, out_dim), *_conv_norm_relu(out_dim, out_dim)))

    def forward(self, features: list[torch.Tensor], size: tuple[int, int, int]) -> torch.Tensor:
        heads = (self.head2, self.head3, self.head4, self.head5)
        return torch.cat(
            [F.interpolate(head(f), size=size, mode="trilinear", align_corners=True) for head, f in zip(heads, features)],
            dim=1,
        )


class MLADecoder(nn.Module):
    """4 features [B, C, H', W', D'] + crop resized to the decoder grid -> class logits at crop size."""

    def __init__(self, config: Sam3DAdapterConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.mlahead = FeatureHeads(config.neck_dim, dim)
        self.cls = nn.Sequential(*_conv_norm_relu(4 * dim + 1, dim),
                                 nn.Conv3d(dim, config.num_classes, 3, padding=1, bias=False))

    def forward(self, features: list[torch.Tensor], small_crop: torch.Tensor, out_size: tuple[int, int, int]) -> torch.Tensor:
        x = torch.cat([self.mlahead(features, tuple(small_crop.shape[2:])), small_crop], dim=1)
        return F.interpolate(self.cls(x), size=out_size, mode="trilinear", align_corners=True)
