"""3DSAM-adapter's multi-layer aggregation decoder (key names of `decoder_dict` in a released file).

Speed (a click with the encoder cached re-runs only this and the prompt encoder):
- trilinear upsampling (align_corners=True) is separable: it runs as three small matrix products whose
  matrices are PyTorch's own 1D linear interpolation weights, instead of the slow CPU trilinear kernel;
- the first `cls` convolution is linear in its 4 * dim + 1 input channels, and only the `dim` channels of
  head5 (on the prompted feature) depend on the click. `static_part` convolves the other channels once per
  crop; `click_part` adds the convolution of head5's channels to it. Same result up to float rounding
  (tests/test_sam3d_decoder_split.py).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .config import Sam3DAdapterConfig

#: feature heads in the order their channels enter `cls`; the last one reads the prompted (click) feature
HEAD_NAMES = ("head2", "head3", "head4", "head5")


def _conv_norm_relu(in_dim: int, out_dim: int) -> list[nn.Module]:
    return [nn.Conv3d(in_dim, out_dim, 3, padding=1, bias=False), nn.InstanceNorm3d(out_dim), nn.ReLU()]


@lru_cache(maxsize=32)
def _linear_weights(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] weights of PyTorch's 1D linear interpolation with align_corners=True (read from the
    kernel itself by interpolating the identity, so they are the weights F.interpolate uses)."""
    # never an inference tensor: the cache outlives the call, and a training step after an inference_mode decode
    # could not save an inference tensor for its backward
    with torch.inference_mode(False), torch.no_grad():
        eye = torch.eye(n_in, dtype=torch.float32)[None]  # n_in signals (channels), each a unit impulse
        return F.interpolate(eye, size=n_out, mode="linear", align_corners=True)[0].T.contiguous()


def upsample_trilinear(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """F.interpolate(x, size, mode="trilinear", align_corners=True) for x [B, C, A, B', C'], as one matrix
    product per axis (the CPU trilinear kernel was 56 % of a decode)."""
    b, c, n0, n1, n2 = x.shape
    m0, m1, m2 = size
    w0, w1, w2 = (_linear_weights(n, m).to(x.device, x.dtype) for n, m in ((n0, m0), (n1, m1), (n2, m2)))
    y = torch.matmul(x.reshape(b * c * n0 * n1, n2), w2.T)  # last axis
    y = torch.matmul(w1, y.view(b * c * n0, n1, m2))  # middle axis
    y = torch.matmul(w0, y.view(b * c, n0, m1 * m2))  # first axis
    return y.view(b, c, m0, m1, m2)


def conv3x3_one_output(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.conv3d(x, weight, padding=1) for weight [1, C, 3, 3, 3]: the 27 taps' channel sums as one matrix product,
    then 27 shifted adds of one-channel volumes (the convolution kernel ran at ~8 GFLOP/s for one output)."""
    b, c, n0, n1, n2 = x.shape
    taps = weight[0].permute(1, 2, 3, 0).reshape(27, c)
    z = torch.matmul(taps, x.reshape(b, c, n0 * n1 * n2)).view(b * 27, n0, n1, n2)
    z = F.pad(z, (1, 1, 1, 1, 1, 1)).view(b, 3, 3, 3, n0 + 2, n1 + 2, n2 + 2)
    out = torch.zeros(b, n0, n1, n2, dtype=z.dtype, device=z.device)
    for t0 in range(3):
        for t1 in range(3):
            for t2 in range(3):
                out += z[:, t0, t1, t2, t0:t0 + n0, t1:t1 + n1, t2:t2 + n2]
    return out.unsqueeze(1)


class FeatureHeads(nn.Module):
    """One head per neck feature: 2 × (Conv3d 3³, InstanceNorm, ReLU), upsampled to the decoder grid."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        for name in HEAD_NAMES:
            setattr(self, name, nn.Sequential(*_conv_norm_relu(in_dim, out_dim), *_conv_norm_relu(out_dim, out_dim)))

    def head(self, index: int, feature: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        return upsample_trilinear(getattr(self, HEAD_NAMES[index])(feature), size)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int, int]) -> torch.Tensor:
        return torch.cat([self.head(i, f, size) for i, f in enumerate(features)], dim=1)


class MLADecoder(nn.Module):
    """4 features [B, C, H', W', D'] + crop resized to the decoder grid -> class logits at crop size."""

    def __init__(self, config: Sam3DAdapterConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.dim = dim
        self.mlahead = FeatureHeads(config.neck_dim, dim)
        self.cls = nn.Sequential(*_conv_norm_relu(4 * dim + 1, dim),
                                 nn.Conv3d(dim, config.num_classes, 3, padding=1, bias=False))

    def forward(self, features: list[torch.Tensor], small_crop: torch.Tensor, out_size: tuple[int, int, int]) -> torch.Tensor:
        x = torch.cat([self.mlahead(features, tuple(small_crop.shape[2:])), small_crop], dim=1)
        return upsample_trilinear(self.cls(x), out_size)

    # ---- the click-independent / click-dependent split of `cls[0]` -----------------------------------
    def _cls0_weight(self, index: int) -> torch.Tensor:
        """The slice of cls[0]'s weight that reads head `index` (4 = the resized crop channel)."""
        start = index * self.dim
        return self.cls[0].weight[:, start:start + (1 if index == 4 else self.dim)]

    def static_part(self, features: list[torch.Tensor], small_crop: torch.Tensor) -> torch.Tensor:
        """cls[0] applied to the click-independent channels (heads 2-4 and the resized crop): [B, dim, h, w, d].
        Computed once per crop; heads are convolved one by one so that no 4 * dim-channel volume is held."""
        size = tuple(small_crop.shape[2:])
        out = F.conv3d(small_crop, self._cls0_weight(4), padding=1)
        for index, feature in enumerate(features[:3]):
            out += F.conv3d(self.mlahead.head(index, feature, size), self._cls0_weight(index), padding=1)  # type: ignore[arg-type]
        return out

    def click_part(self, prompted: torch.Tensor, static: torch.Tensor, out_size: tuple[int, int, int]) -> torch.Tensor:
        """Logits at crop size from the prompted feature and `static_part`'s result (equal to `forward`)."""
        up = self.mlahead.head(3, prompted, tuple(static.shape[2:]))  # type: ignore[arg-type]
        x = F.relu(self.cls[1](F.conv3d(up, self._cls0_weight(3), padding=1) + static))
        return upsample_trilinear(self.cls[3](x), out_size)

    def click_foreground(self, prompted: torch.Tensor, static: torch.Tensor,
                         out_size: tuple[int, int, int]) -> torch.Tensor:
        """softmax(click_part)[:, 1:2]. With two classes this is sigmoid(l1 - l0), and l1 - l0 is linear in
        what precedes it: one output channel of the last conv and one upsampled channel instead of two."""
        if self.cls[3].weight.shape[0] != 2:
            return self.click_part(prompted, static, out_size).softmax(dim=1)[:, 1:2]
        up = self.mlahead.head(3, prompted, tuple(static.shape[2:]))  # type: ignore[arg-type]
        x = F.conv3d(up, self._cls0_weight(3), padding=1)
        x = F.relu(self.cls[1](x.add_(static) if not torch.is_grad_enabled() else x + static))
        weight = self.cls[3].weight
        difference = conv3x3_one_output(x, weight[1:2] - weight[0:1])
        return torch.sigmoid(upsample_trilinear(difference, out_size))
