"""3DSAM-adapter image encoder: SAM ViT-B blocks made 3D with shifted cubic windows and adapters.

Key names follow the published encoder (`encoder_dict` of a released `.pth.tar`), which in turn
reuses segment-anything's names for the frozen SAM parts. Tokens are kept in the published
layout [B, H, W, D, C] (in-plane axes first, slice axis last) so that every 3D kernel of the
released weights (adapter convs, necks) is applied along the axes it was trained on; the model
converts from and to the crop's (D, H, W) order at its edges.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...sam.common import LayerNorm3d, MLPBlock
from ...sam.image_encoder import PatchEmbed, get_rel_pos
from .config import Sam3DAdapterConfig
from .linear import linear

#: The published shift mask uses -100, not -inf; kept for identical softmax values.
SHIFT_MASK_VALUE = -100.0


def upsample_patch_matrix(factor: int, kernel: int) -> torch.Tensor:
    """Weights [kernel, kernel // factor + 2] of a 1D linear upsample by `factor` (align_corners=False)
    read by a patch of `kernel` samples, on an input replicate-padded by one sample each side.

    Row a is upsampled sample `kernel * p + a`; column s is padded input sample `(kernel // factor) * p + s`.
    Replicate padding reproduces the edge clamping of the upsample exactly.
    """
    taps = torch.zeros(kernel, kernel // factor + 2, dtype=torch.float64)
    for a in range(kernel):
        source = (a + 0.5) / factor - 0.5 + 1.0  # +1: position in the padded input
        left = int(source // 1)
        frac = source - left
        taps[a, left] += 1.0 - frac
        if frac > 0:
            taps[a, left + 1] += frac
    return taps


class Adapter(nn.Module):
    """Bottleneck adapter at each block input: Linear, ReLU, depth-wise Conv3d 3³, ReLU, Linear, ReLU, residual."""

    def __init__(self, dim: int, mid_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, mid_dim)
        self.conv = nn.Conv3d(mid_dim, mid_dim, kernel_size=3, padding=1, groups=mid_dim)
        self.linear2 = nn.Linear(mid_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, W, D, C]
        out = linear(x, self.linear1, "relu")
        out = F.relu(self.conv(out.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1))
        return x + linear(out, self.linear2, "relu")


def window_partition_3d(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, D, C] (each a multiple of `window`) -> [B * nW, window³, C], windows in (h, w, d) order."""
    b, h, w, d, c = x.shape
    x = x.view(b, h // window, window, w // window, window, d // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window**3, c)


def window_unpartition_3d(windows: torch.Tensor, window: int, grid: tuple[int, int, int]) -> torch.Tensor:
    h, w, d = grid
    b = windows.shape[0] // ((h // window) * (w // window) * (d // window))
    x = windows.view(b, h // window, w // window, d // window, window, window, window, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, h, w, d, -1)


def shifted_window_regions(grid: tuple[int, int, int], window: int, shift: int) -> torch.Tensor:
    """Swin region id [nW, window³] of every token of every window of the rolled grid."""
    regions = torch.zeros(1, *grid, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for sh in bounds:
        for sw in bounds:
            for sd in bounds:
                regions[:, sh, sw, sd, :] = label
                label += 1
    return window_partition_3d(regions, window).squeeze(-1).to(torch.int16)


def region_mask(ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[nW', window³, window³]: 0 within a region, SHIFT_MASK_VALUE across regions, for ids [nW', window³]."""
    differ = ids.unsqueeze(1) != ids.unsqueeze(2)
    return torch.zeros(differ.shape, dtype=dtype, device=ids.device).masked_fill_(differ, SHIFT_MASK_VALUE)


def shifted_window_mask(grid: tuple[int, int, int], window: int, shift: int) -> torch.Tensor:
    """Swin mask [nW, window³, window³] as the published files store it (built on demand, never held)."""
    return region_mask(shifted_window_regions(grid, window, shift))


#: the packed head width of the fused attention is rounded up to a multiple of this (measured on a 2-core AMD EPYC
#: (Zen 4) with torch 2.13's CPU flash kernel: 96 columns ran faster than 88)
PACKED_HEAD_ALIGN = 32


def packed_head_dim(head_dim: int, window: int) -> int:
    """Columns of the packed q / k / v: the head, one relative-position column per window position on each of the
    three axes, zeros up to a multiple of PACKED_HEAD_ALIGN."""
    return -(-(head_dim + 3 * window) // PACKED_HEAD_ALIGN) * PACKED_HEAD_ALIGN


def axis_onehots(window: int, scale: float) -> torch.Tensor:
    """[window³, 3 * window]: for key token (h, w, d) of a window, 1 / scale in column h, window + w and
    2 * window + d (scaled back by the attention's scale to exactly the query's relative-position term)."""
    pos = torch.arange(window)
    eye = torch.eye(window)
    h, w, d = (t.reshape(-1) for t in torch.meshgrid(pos, pos, pos, indexing="ij"))
    return torch.cat([eye[h], eye[w], eye[d]], dim=1) / scale


def axis_shift_terms(regions: torch.Tensor, window: int) -> torch.Tensor:
    """[nW, window³, 3 * window]: the shift mask split by axis, for the query columns of the packed attention.

    A shifted window's regions are products of one segment per axis (region id = 9 * h + 3 * w + d, see
    shifted_window_regions), so query i and key j are in different regions iff some axis segment differs.
    Adding SHIFT_MASK_VALUE per differing axis (not once) changes only logits that are already <= -100 below
    the others: exp(-100) ~ 4e-44 is below float32 resolution next to the unmasked terms either way."""
    ids = regions.long().reshape(-1, window, window, window)
    segments = (ids[:, :, 0, 0] // 9, ids[:, 0, :, 0] // 3 % 3, ids[:, 0, 0, :] % 3)  # each [nW, window]
    pos = torch.arange(window, device=regions.device)
    h, w, d = (t.reshape(-1) for t in torch.meshgrid(pos, pos, pos, indexing="ij"))
    terms = []
    for seg, coord in zip(segments, (h, w, d)):
        differ = seg[:, coord, None] != seg[:, None, :]  # [nW, window³ (query), window (key position)]
        terms.append(differ.float() * SHIFT_MASK_VALUE)
    return torch.cat(terms, dim=2)


class WindowAttention3D(nn.Module):
    """Multi-head attention inside cubic windows with decomposed 3D relative positions.

    SAM's frozen rel_pos_h / rel_pos_w (and the trainable rel_pos_d) are resampled to the window at
    run time; their sum is scaled by the frozen scalar `lr` (1 in the published files).
    Speed: the relative positions and the shift mask never form a [windows, n, n] bias. Each query's terms
    (lr * q·R per axis and key position, plus the axis-split shift mask: 3 * window numbers) become extra
    columns of q, and every key gets the matching one-hot columns, so q'·k' = q·k * scale + relative + mask
    and one fused scaled_dot_product_attention (flash kernel on CPU and GPU) computes the whole attention.
    """

    def __init__(self, dim: int, num_heads: int, table_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * table_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * table_size - 1, head_dim))
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * table_size - 1, head_dim))
        self.lr = nn.Parameter(torch.tensor(1.0))

    def _relative(self, q: torch.Tensor, window: int) -> torch.Tensor:
        """lr * q·R_axis[query position, key position] for q [m, n, hd]: [m, n, 3 * window]."""
        m = q.shape[0]
        tables = [get_rel_pos(window, window, t) * self.lr for t in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_d)]
        r_q = q.reshape(m, window, window, window, -1)
        rel = [torch.einsum("bhwdc,hkc->bhwdk", r_q, tables[0]), torch.einsum("bhwdc,wkc->bhwdk", r_q, tables[1]),
               torch.einsum("bhwdc,dkc->bhwdk", r_q, tables[2])]
        return torch.cat([r.reshape(m, window**3, window) for r in rel], dim=2)

    def forward(self, x: torch.Tensor, window: int, shift_terms: torch.Tensor | None) -> torch.Tensor:
        """x: windows [B * nW, window³, C] (batch-major); shift_terms: axis_shift_terms [nW, window³, 3 * window]
        of a shifted block, or None."""
        bw, n, c = x.shape
        heads = self.num_heads
        hd = c // heads
        width = packed_head_dim(hd, window)
        qkv = linear(x, self.qkv).view(bw, n, 3, heads, hd)
        q = qkv[:, :, 0].transpose(1, 2)  # [bw, heads, n, hd] views
        rel = self._relative(q.reshape(bw * heads, n, hd), window).view(bw, heads, n, 3 * window)
        if shift_terms is not None:
            rel = (rel.view(-1, shift_terms.shape[0], heads, n, 3 * window) + shift_terms[None, :, None]).view(rel.shape)
        keys = axis_onehots(window, self.scale).to(qkv.device, qkv.dtype)
        packed = qkv.new_empty(3, bw, heads, n, width)  # qkv's dtype: bf16 under autocast
        packed[0, ..., :hd] = q
        packed[0, ..., hd:hd + 3 * window] = rel
        packed[1, ..., :hd] = qkv[:, :, 1].transpose(1, 2)
        packed[1, ..., hd:hd + 3 * window] = keys
        packed[:2, ..., hd + 3 * window:] = 0  # only the padding is zeroed, not the whole buffer
        packed[2, ..., :hd] = qkv[:, :, 2].transpose(1, 2)
        packed[2, ..., hd:] = 0
        out = F.scaled_dot_product_attention(packed[0], packed[1], packed[2], scale=self.scale)
        return linear(out[..., :hd].transpose(1, 2).reshape(bw, n, c), self.proj)


class Block3D(nn.Module):
    """Adapter, then (shifted) cubic-window attention and MLP, each with a residual."""

    def __init__(self, config: Sam3DAdapterConfig, index: int) -> None:
        super().__init__()
        dim = config.embed_dim
        table = config.sam_grid if index in config.global_attn_indexes else config.sam_window
        self.window = config.window_size
        self.shift = config.window_size // 2 if index % 2 == 0 else 0
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention3D(dim, config.num_heads, table)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * config.mlp_ratio))
        self.adapter = Adapter(dim, dim // 2)
        self.grid = config.token_grid_hwd
        # Region ids (small integers), not the published [nW, n, n] float mask (67 MB per shifted block of a
        # 128³ crop): the mask of a few windows is built when they run. Not persistent (see checkpoint.py).
        # Plain attributes, not buffers (DDP would broadcast them, and gloo has no int16/bool); moved to the
        # input's device when used (`_shift_terms`).
        self.window_regions = shifted_window_regions(self.grid, self.window, self.shift) if self.shift else None
        regions = self.window_regions
        self.shift_terms = None if regions is None else axis_shift_terms(regions, self.window)

    def _shift_terms(self, device: torch.device) -> torch.Tensor | None:
        if self.shift_terms is not None and self.shift_terms.device != device:
            self.shift_terms = self.shift_terms.to(device)
        return self.shift_terms

    @property
    def attn_mask(self) -> torch.Tensor | None:
        """The published shift mask of this block (built on demand for checkpoint files; never held)."""
        return None if self.window_regions is None else region_mask(self.window_regions.cpu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, D, C]
        x = self.adapter(x)
        shortcut = x
        x = self.norm1(x)
        grid = tuple(x.shape[1:4])
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        x = self.attn(window_partition_3d(x, self.window), self.window, self._shift_terms(x.device))
        x = window_unpartition_3d(x, self.window, grid)  # type: ignore[arg-type]
        if self.shift:
            x = torch.roll(x, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        x = shortcut + x
        return x + linear(linear(self.norm2(x), self.mlp.lin1, "gelu"), self.mlp.lin2)  # MLPBlock's GELU


def make_neck(embed_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(embed_dim, out_dim, kernel_size=1, bias=False),
        LayerNorm3d(out_dim),
        nn.Conv3d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm3d(out_dim),
    )


class ImageEncoder3D(nn.Module):
    """Crop [B, 1, H, W, D] (published axis order) -> 4 neck features [B, neck_dim, H/4, W/4, D/4]."""

    def __init__(self, config: Sam3DAdapterConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, 3, dim)  # frozen SAM patch embedding
        self.slice_embed = nn.Conv3d(dim, dim, kernel_size=(1, 1, config.num_slice),
                                     stride=(1, 1, config.num_slice), groups=dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.sam_grid, config.sam_grid, dim))
        self.depth_embed = nn.Parameter(torch.ones(1, config.depth_tokens, dim))
        self.blocks = nn.ModuleList(Block3D(config, i) for i in range(config.depth))
        self.neck_3d = nn.ModuleList(make_neck(dim, config.neck_dim) for _ in range(4))
        #: training only: keep each block's input, not its activations, and recompute the block in the backward
        #: (a full ViT-B 128³ step otherwise holds ~1 GB of attention tensors per block)
        self.checkpoint_blocks = False

    def embed_patches(self, crop_hwd: torch.Tensor) -> torch.Tensor:
        """Exact, cheap equivalent of the published chain: repeat to 3 channels, trilinear ×f upsample
        (align_corners=False), SAM's 16×16 patch embedding on every upsampled slice along D, then the
        depth-wise slice_embed over 16 slices. All of it is linear with replicate-clamped edges, so it
        folds into one stride-(16/f) Conv3d of kernel 16/f + 2 on the replicate-padded crop.
        Returns tokens [B, H', W', D', C]."""
        cfg = self.config
        up = cfg.input_upsample
        weight = self.patch_embed.proj.weight.sum(dim=1).double()  # 3 identical input channels
        plane = upsample_patch_matrix(up, cfg.patch_size).to(weight.device)
        depth = upsample_patch_matrix(up, cfg.num_slice).to(weight.device)
        plane_kernel = torch.einsum("as,oab,bt->ost", plane, weight, plane)  # [C, kh, kw]
        slice_weight = self.slice_embed.weight.reshape(weight.shape[0], cfg.num_slice).double()
        depth_kernel = slice_weight @ depth  # [C, kd]
        kernel = plane_kernel[:, :, :, None] * depth_kernel[:, None, None, :]
        bias = self.patch_embed.proj.bias.double() * slice_weight.sum(dim=1) + self.slice_embed.bias.double()
        padded = F.pad(crop_hwd, (1, 1, 1, 1, 1, 1), mode="replicate")
        dtype = crop_hwd.dtype
        tokens = F.conv3d(padded, kernel.unsqueeze(1).to(dtype), bias.to(dtype),
                          stride=(cfg.patch_size // up, cfg.patch_size // up, cfg.num_slice // up))
        return tokens.permute(0, 2, 3, 4, 1)

    def position_embedding(self) -> torch.Tensor:
        """SAM's pos_embed average-pooled by 2 (in-plane) plus the learnable depth embedding: [1, H', W', D', C]."""
        plane = F.avg_pool2d(self.pos_embed.permute(0, 3, 1, 2), kernel_size=2).permute(0, 2, 3, 1)
        return plane.unsqueeze(3) + self.depth_embed[:, None, None, :, :]

    def forward(self, crop_hwd: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed_patches(crop_hwd) + self.position_embedding()
        features = []
        every = len(self.blocks) // 4
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks, start=1):
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if index % every == 0 and len(features) < 4:
                features.append(self.neck_3d[len(features)](x.permute(0, 4, 1, 2, 3)))
        return features
