"""TinyViT image encoder as used by LiteMedSAM (written here; no timm).

Layout of LiteMedSAM's TinyViT-5M at a 256x256 input (checkpoint key names under `image_encoder.`):

    patch_embed.seq   two 1x1 Conv-BN (+GELU) at full resolution            3 -> 64 ch, 256x256
    layers.0          2 MBConv blocks, then PatchMerging (stride 2)          64 -> 128 ch, 128x128
    layers.1          2 attention blocks (window 7), PatchMerging (stride 2) 128 -> 160 ch, 64x64
    layers.2          6 attention blocks (window 14), PatchMerging (stride 1) 160 -> 320 ch, 64x64
    layers.3          2 attention blocks (window 7)                          320 ch, 64x64
    neck              1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d          -> 256 x 64 x 64

An attention block: windowed multi-head attention with a learned bias per head and per
|dy|, |dx| offset inside the window (`attention_biases` [heads, window*window]); a depthwise
3x3 Conv-BN ("local_conv"); an MLP with its own LayerNorm. Residuals around attention and MLP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class Conv2dBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d; children named `c` and `bn` (checkpoint layout)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        self._fused: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, bn = self.c, self.bn
        learning = torch.is_grad_enabled() and any(p.requires_grad for p in (c.weight, bn.weight, bn.bias))
        if self.training or learning:
            return bn(c(x))
        # inference: BatchNorm folded into the convolution (one pass instead of two, ~9% of an encoder pass)
        key = (c.weight._version, bn.weight._version, bn.bias._version, bn.running_mean._version,
               bn.running_var._version, c.weight.data_ptr(), c.weight.device, c.weight.dtype)
        if self._fused is None or self._fused[0] != key:
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                weight = c.weight * scale[:, None, None, None]
                bias = bn.bias - bn.running_mean * scale
            self._fused = (key, weight, bias)
        return F.conv2d(x, self._fused[1], self._fused[2], c.stride, c.padding, c.dilation, c.groups)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(in_chans, embed_dim // 2), nn.GELU(), Conv2dBN(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project; GELU after the residual sum."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """[B, C, H, W] or tokens [B, H*W, C] -> tokens [B, H'*W', C'] (depthwise 3x3 with `stride`)."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            h, w = self.resolution
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over one window of tokens with a learned relative-offset bias."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # bias index of a token pair = |dy| * window + |dx| (one bias per absolute offset)
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        idx = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("bias_index", idx, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)  # [heads, n, n]
        # written out rather than scaled_dot_product_attention: with a float mask its CPU path spends ~10% of
        # an encoder pass checking the mask for -inf rows
        logits = torch.baddbmm(bias.expand(b, -1, -1, -1).reshape(-1, n, n),
                               (q * self.scale).reshape(-1, n, self.head_dim),
                               k.reshape(-1, n, self.head_dim).transpose(1, 2))
        out = torch.bmm(logits.softmax(dim=-1), v.reshape(-1, n, self.head_dim))
        return self.proj(out.view(b, self.num_heads, n, self.head_dim).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.local_conv = Conv2dBN(dim, dim, 3, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        s = self.window
        if h == s and w == s:
            return self.attn(x)
        grid = x.view(b, h, w, c)
        pad_b, pad_r = (-h) % s, (-w) % s
        if pad_b or pad_r:
            grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))  # zero tokens, as the reference
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // s, pw // s
        win = grid.view(b, nh, s, nw, s, c).transpose(2, 3).reshape(b * nh * nw, s * s, c)
        win = self.attn(win)
        grid = win.view(b, nh, nw, s, s, c).transpose(2, 3).reshape(b, ph, pw, c)
        return grid[:, :h, :w].reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class BasicLayer(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window: int,
                 mlp_ratio: float, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


@dataclass(frozen=True)
class TinyViTConfig:
    img_size: int = 256
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    out_chans: int = 256
    #: spatial stride of each stage's PatchMerging (the last stage has none)
    merge_strides: tuple[int, ...] = (2, 2, 1)


class TinyViT(nn.Module):
    """Image [B, 3, S, S] -> embedding [B, out_chans, S/4, S/4] (LiteMedSAM: 256 -> 256 x 64 x 64)."""

    def __init__(self, config: TinyViTConfig = TinyViTConfig()) -> None:
        super().__init__()
        self.config = config
        dims = config.embed_dims
        self.patch_embed = PatchEmbed(config.in_chans, dims[0])
        res = config.img_size
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, config.depths)):
            last = i == len(dims) - 1
            down = None if last else PatchMerging((res, res), dim, dims[i + 1], config.merge_strides[i])
            if i == 0:
                layer: nn.Module = ConvLayer(dim, depth, config.mbconv_expand_ratio, down)
            else:
                layer = BasicLayer(dim, (res, res), depth, config.num_heads[i], config.window_sizes[i],
                                   config.mlp_ratio, down)
            self.layers.append(layer)
            if not last:
                res = (res + config.merge_strides[i] - 1) // config.merge_strides[i]
        self.out_size = res
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_size, self.out_size, c).permute(0, 3, 1, 2)
        return self.neck(x)
