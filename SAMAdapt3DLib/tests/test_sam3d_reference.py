"""3DSAM-adapter against a straightforward test-side re-implementation of the published algorithm.

Everything below `# ---- literal` is written from the published method with plain ops: the crop is
really upsampled to 4× and cut into slices, attention is computed over the whole token grid with
an explicit window + Swin mask, clicks are passed as (d, w, h) like the published test script.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from samadapt3d.families.sam3d import SAM3DAdapter, Sam3DAdapterConfig
from samadapt3d.families.sam3d.encoder import upsample_patch_matrix

MASK = -100.0


def randomised(model: SAM3DAdapter, seed: int = 0) -> SAM3DAdapter:
    """Give every tensor random values (norm weights around 1) so no term can hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(".lr"):
                p.copy_(1.0 + 0.3 * noise)
            elif "norm" in name or "neck_3d" in name and p.dim() == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(noise * (0.5 / math.sqrt(max(p[0].numel(), 1)) if p.dim() > 1 else 0.1))
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> SAM3DAdapter:
    torch.manual_seed(0)
    return randomised(SAM3DAdapter(Sam3DAdapterConfig.tiny()))


# ---- literal re-implementation --------------------------------------------------------------------
def literal_tokens(enc, crop_dhw: torch.Tensor, cfg: Sam3DAdapterConfig) -> torch.Tensor:
    """Published chain: 3 channels, trilinear ×4 upsample, SAM patch embed per slice along D, slice_embed."""
    x = crop_dhw.repeat(1, 3, 1, 1, 1)
    x = F.interpolate(x, scale_factor=cfg.input_upsample, mode="trilinear")
    slices = x[0].transpose(0, 1)  # [D_up, 3, H_up, W_up]
    patches = F.conv2d(slices, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=cfg.patch_size)
    volume = patches.permute(1, 2, 3, 0).unsqueeze(0)  # [1, C, h, w, D_up]
    tokens = F.conv3d(volume, enc.slice_embed.weight, enc.slice_embed.bias,
                      stride=(1, 1, cfg.num_slice), groups=cfg.embed_dim)
    return tokens.permute(0, 2, 3, 4, 1)  # [1, h, w, d, C]


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def channel_norm(x, weight, bias, eps=1e-6):  # LayerNorm over dim 1 of [B, C, ...]
    return layer_norm(x.movedim(1, -1), weight, bias, eps).movedim(-1, 1)


def resized_table(table: torch.Tensor, length: int) -> torch.Tensor:
    if table.shape[0] == length:
        return table
    return F.interpolate(table.T[None], size=length, mode="linear")[0].T


def naive_attention(block, x: torch.Tensor) -> torch.Tensor:
    """Attention branch over the whole grid: window + Swin region mask written out explicitly."""
    attn = block.attn
    _, gh, gw, gd, c = x.shape
    ws, shift, heads = block.window, block.shift, attn.num_heads
    x = torch.roll(x, shifts=(-shift,) * 3, dims=(1, 2, 3)) if shift else x
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), torch.arange(gd), indexing="ij"), -1)
    coords = coords.reshape(-1, 3)
    window_id = (coords // ws) @ torch.tensor([10000, 100, 1])
    sizes = torch.tensor([gh, gw, gd])

    def region(c: torch.Tensor) -> torch.Tensor:  # Swin regions of the rolled grid, per axis 0/1/2
        return (c >= sizes - ws).long() + (c >= sizes - shift).long()

    region_id = region(coords) @ torch.tensor([9, 3, 1]) if shift else torch.zeros(len(coords), dtype=torch.long)
    same_window = window_id[:, None] == window_id[None, :]
    bias = torch.full((len(coords), len(coords)), float("-inf"))
    bias[same_window] = 0.0
    bias[same_window & (region_id[:, None] != region_id[None, :])] = MASK

    tokens = x.reshape(-1, c)
    qkv = tokens @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv.reshape(-1, 3, heads, c // heads).permute(1, 2, 0, 3)  # each [heads, N, hd]
    local = coords % ws
    rel = local[:, None, :] - local[None, :, :] + ws - 1  # [N, N, 3]
    tables = [resized_table(t, 2 * ws - 1) for t in (attn.rel_pos_h, attn.rel_pos_w, attn.rel_pos_d)]
    out = torch.zeros(heads, len(coords), c // heads)
    for h in range(heads):
        logits = (q[h] * attn.scale) @ k[h].T
        for axis, table in enumerate(tables):
            emb = table[rel[:, :, axis]]  # [N, N, hd]
            logits = logits + attn.lr * torch.einsum("nc,nmc->nm", q[h], emb)
        out[h] = torch.softmax(logits + bias, dim=-1) @ v[h]
    out = out.permute(1, 0, 2).reshape(-1, c) @ attn.proj.weight.T + attn.proj.bias
    out = out.reshape(1, gh, gw, gd, c)
    return torch.roll(out, shifts=(shift,) * 3, dims=(1, 2, 3)) if shift else out


def literal_block(block, x: torch.Tensor) -> torch.Tensor:
    ad = block.adapter
    hidden = F.relu(x @ ad.linear1.weight.T + ad.linear1.bias)
    hidden = F.conv3d(hidden.permute(0, 4, 1, 2, 3), ad.conv.weight, ad.conv.bias, padding=1,
                      groups=hidden.shape[-1]).permute(0, 2, 3, 4, 1)
    x = x + F.relu(F.relu(hidden) @ ad.linear2.weight.T + ad.linear2.bias)
    x = x + naive_attention(block, layer_norm(x, block.norm1.weight, block.norm1.bias, 1e-6))
    h = layer_norm(x, block.norm2.weight, block.norm2.bias, 1e-6)
    h = F.gelu(h @ block.mlp.lin1.weight.T + block.mlp.lin1.bias) @ block.mlp.lin2.weight.T + block.mlp.lin2.bias
    return x + h


def literal_neck(neck, x):
    x = channel_norm(F.conv3d(x, neck[0].weight), neck[1].weight, neck[1].bias)
    return channel_norm(F.conv3d(x, neck[2].weight, padding=1), neck[3].weight, neck[3].bias)


def mha(attn, q, k, v, heads):
    q, k, v = (t @ p.weight.T + p.bias for t, p in ((q, attn.q_proj), (k, attn.k_proj), (v, attn.v_proj)))
    split = lambda t: t.reshape(t.shape[0], heads, -1).transpose(0, 1)  # noqa: E731
    qh, kh, vh = split(q), split(k), split(v)
    out = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(qh.shape[-1]), -1) @ vh
    return out.transpose(0, 1).reshape(q.shape[0], -1) @ attn.out_proj.weight.T + attn.out_proj.bias


def literal_prompt(pe, feature, points_dwh, crop: int, heads: int):
    """As the published test: clicks (d, w, h), normalised by the crop size, grid_sample on [1, C, H, W, D]."""
    grid = (points_dwh + 0.5) * 2 / crop - 1
    point = F.grid_sample(feature, grid.reshape(1, 1, 1, -1, 3), align_corners=False)[0, :, 0, 0].T  # [N, C]
    image = feature[0].flatten(1).T  # [HWD, C]
    for layer in pe.transformer.layers:
        ln = lambda t, n: layer_norm(t, n.weight, n.bias, 1e-5)  # noqa: E731
        nq = layer.global_query.shape[1]
        q = torch.cat([layer.global_query[0], point])
        q = ln(q + ln(mha(layer.self_attn, q, q, q, heads), layer.norm1), layer.norm2)
        point, queries = q[nq:], q[:nq]
        queries = ln(queries + (F.relu(queries @ layer.mlp.lin1.weight.T + layer.mlp.lin1.bias)
                                @ layer.mlp.lin2.weight.T + layer.mlp.lin2.bias), layer.norm3)
        image = ln(image + mha(layer.cross_attn_image_to_token, image, queries, queries, heads), layer.norm4)
    return image.T.reshape(feature.shape)


def literal_forward(model: SAM3DAdapter, crop_dhw: torch.Tensor, points_dhw: torch.Tensor) -> torch.Tensor:
    cfg, enc = model.config, model.image_encoder
    x = literal_tokens(enc, crop_dhw, cfg)
    pos = F.avg_pool2d(enc.pos_embed.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    x = x + pos[:, :, :, None, :] + enc.depth_embed[:, None, None]
    feats = []
    for i, block in enumerate(enc.blocks):
        x = literal_block(block, x)
        if (i + 1) % (cfg.depth // 4) == 0:
            feats.append(literal_neck(enc.neck_3d[len(feats)], x.permute(0, 4, 1, 2, 3)))
    crop = crop_dhw.shape[-1]
    points_dwh = points_dhw[0][:, [0, 2, 1]]
    feats[3] = literal_prompt(model.prompt_encoders[3], feats[3], points_dwh, crop, cfg.prompt_heads)
    small = F.interpolate(crop_dhw[0, 0].permute(1, 2, 0)[None, None], scale_factor=0.5, mode="trilinear")
    inorm = lambda t: F.instance_norm(t)  # noqa: E731
    heads = [model.mask_decoder.mlahead.head2, model.mask_decoder.mlahead.head3,
             model.mask_decoder.mlahead.head4, model.mask_decoder.mlahead.head5]
    ups = []
    for head, f in zip(heads, feats):
        f = F.relu(inorm(F.conv3d(f, head[0].weight, padding=1)))
        f = F.relu(inorm(F.conv3d(f, head[3].weight, padding=1)))
        ups.append(F.interpolate(f, scale_factor=2, mode="trilinear", align_corners=True))
    cls = model.mask_decoder.cls
    y = F.relu(inorm(F.conv3d(torch.cat(ups + [small], 1), cls[0].weight, padding=1)))
    y = F.conv3d(y, cls[3].weight, padding=1)
    y = F.interpolate(y, scale_factor=2, mode="trilinear", align_corners=True).permute(0, 1, 4, 2, 3)
    return F.softmax(y, dim=1)[:, 1:2]


# ---- tests ------------------------------------------------------------------------------------------
def test_upsample_patch_matrix_rows_sum_to_one():
    taps = upsample_patch_matrix(4, 16)
    assert taps.shape == (16, 6)
    assert torch.allclose(taps.sum(1), torch.ones(16, dtype=torch.float64))


def test_efficient_patch_embed_equals_upsample_patch_slice_chain(tiny):
    crop = torch.randn(1, 1, *tiny.crop_size)
    with torch.no_grad():
        fast = tiny.image_encoder.embed_patches(crop.permute(0, 1, 3, 4, 2))
        slow = literal_tokens(tiny.image_encoder, crop, tiny.config)
    assert fast.shape == slow.shape == (1, 8, 8, 8, 48)
    assert (fast - slow).abs().max() < 1e-4


def test_efficient_patch_embed_full_width_kernel():
    # the published sizes (768 channels, 16×16 patches, 16 slices) on a small token grid
    cfg = Sam3DAdapterConfig(embed_dim=768, depth=4, num_heads=12, sam_grid=8, window_size=4, depth_tokens=4)
    enc = randomised(SAM3DAdapter(cfg)).image_encoder
    crop = torch.randn(1, 1, *cfg.crop_size) * 2
    with torch.no_grad():
        fast = enc.embed_patches(crop.permute(0, 1, 3, 4, 2))
        slow = literal_tokens(enc, crop, cfg)
    assert (fast - slow).abs().max() < 1e-4


@pytest.mark.parametrize("index", [0, 1])  # shifted, then unshifted block
def test_window_attention_block_equals_naive_masked_attention(tiny, index):
    block = tiny.image_encoder.blocks[index]
    assert block.shift == (2 if index == 0 else 0)
    x = torch.randn(1, 8, 8, 8, 48)
    with torch.no_grad():
        ours = block(x)
        naive = literal_block(block, x)
    assert (ours - naive).abs().max() < 1e-4


def test_predict_crop_equals_literal_published_forward(tiny):
    crop = torch.randn(1, 1, *tiny.crop_size)
    points = torch.tensor([[[5.0, 20.0, 11.0], [17.0, 3.0, 28.0], [30.0, 30.0, 1.0]]])
    with torch.no_grad():
        ours = tiny.predict_crop(crop, points.clone())
        literal = literal_forward(tiny, crop, points)
    assert ours.shape == literal.shape == (1, 1, 32, 32, 32)
    assert (ours - literal).abs().max() < 1e-4
    assert 0.02 < ours.std()  # the check is not comparing two constants
