"""The 3DSAM-adapter decoder's speed-ups are exact: separable upsampling equals F.interpolate, and a click
decoded from the cached click-independent part equals the published full decode (written here with plain ops)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_sam3d_reference import randomised

from samadapt3d.families.sam3d import SAM3DAdapter, Sam3DAdapterConfig
from samadapt3d.families.sam3d.decoder import MLADecoder, conv3x3_one_output, upsample_trilinear
from samadapt3d.families.sam3d.model import ACTIVE_PROMPT_ENCODER

#: float32 results of a different summation order
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny() -> SAM3DAdapter:
    torch.manual_seed(0)
    return randomised(SAM3DAdapter(Sam3DAdapterConfig.tiny()), seed=3)


def published_decode(model: SAM3DAdapter, features, points: torch.Tensor) -> torch.Tensor:
    """The published decoder: every head upsampled by F.interpolate, concatenated with the crop, full convs."""
    f = features.features
    prompted = model.prompt_encoders[ACTIVE_PROMPT_ENCODER](f[3], points, features.crop_size)
    dec = model.mask_decoder
    size = tuple(features.small_crop.shape[2:])
    heads = [dec.mlahead.head2, dec.mlahead.head3, dec.mlahead.head4, dec.mlahead.head5]
    ups = []
    for head, x in zip(heads, [f[0], f[1], f[2], prompted]):
        x = F.relu(F.instance_norm(F.conv3d(x, head[0].weight, padding=1)))
        x = F.relu(F.instance_norm(F.conv3d(x, head[3].weight, padding=1)))
        ups.append(F.interpolate(x, size=size, mode="trilinear", align_corners=True))
    y = F.relu(F.instance_norm(F.conv3d(torch.cat(ups + [features.small_crop], 1), dec.cls[0].weight, padding=1)))
    y = F.conv3d(y, dec.cls[3].weight, padding=1)
    d, h, w = features.crop_size
    y = F.interpolate(y, size=(h, w, d), mode="trilinear", align_corners=True)
    return y.softmax(dim=1)[:, 1:2].permute(0, 1, 4, 2, 3)


@pytest.mark.parametrize("shape,size", [((2, 3, 4, 5, 6), (8, 10, 12)), ((1, 2, 7, 3, 5), (13, 4, 9))])
def test_separable_upsampling_equals_trilinear(shape, size):
    x = torch.randn(shape)
    expected = F.interpolate(x, size=size, mode="trilinear", align_corners=True)
    assert (upsample_trilinear(x, size) - expected).abs().max() < 1e-6


def test_one_output_convolution_equals_conv3d():
    x = torch.randn(2, 5, 4, 6, 7)
    weight = torch.randn(1, 5, 3, 3, 3)
    assert (conv3x3_one_output(x, weight) - F.conv3d(x, weight, padding=1)).abs().max() < 1e-5


def test_split_decode_equals_published_decode_for_every_click(tiny):
    crop = torch.randn(2, 1, *tiny.crop_size)
    clicks = [torch.tensor([[[5.0, 20.0, 11.0]], [[17.0, 3.0, 28.0]]]),
              torch.tensor([[[30.0, 30.0, 1.0], [2.0, 9.0, 16.0]], [[0.0, 0.0, 0.0], [31.0, 31.0, 31.0]]])]
    with torch.no_grad():
        features = tiny.encode(crop)
        assert features.decoder_static is None  # nothing is computed until a click needs it
        results = []
        for points in clicks:
            ours = tiny.decode(features, points)
            expected = published_decode(tiny, features, points)
            assert ours.shape == expected.shape == (2, 1, 32, 32, 32)
            assert (ours - expected).abs().max() < TOLERANCE
            results.append(ours)
    assert features.decoder_static is not None and features.decoder_static.shape == (2, 16, 16, 16, 16)
    assert (results[0] - results[1]).abs().max() > 0.01  # the click matters, so the check is not vacuous
    assert results[0].std() > 0.02


def test_static_part_is_computed_once_per_crop(tiny, monkeypatch):
    calls = []
    original = MLADecoder.static_part

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(MLADecoder, "static_part", counting)
    with torch.no_grad():
        features = tiny.encode(torch.randn(1, 1, *tiny.crop_size))
        for click in ([[4.0, 4.0, 4.0]], [[28.0, 20.0, 9.0]], [[10.0, 1.0, 30.0]]):
            tiny.decode(features, torch.tensor([click]))
    assert len(calls) == 1


def test_click_part_logits_equal_full_decoder_forward(tiny):
    # more than two classes: the softmax path of click_foreground and the logits of click_part
    cfg = Sam3DAdapterConfig.tiny(num_classes=3)
    model = randomised(SAM3DAdapter(cfg), seed=5)
    dec = model.mask_decoder
    feats = [torch.randn(1, cfg.neck_dim, 8, 8, 8) for _ in range(4)]
    small = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        full = dec(feats, small, (32, 32, 32))
        static = dec.static_part(feats[:3], small)
        split = dec.click_part(feats[3], static, (32, 32, 32))
        foreground = dec.click_foreground(feats[3], static, (32, 32, 32))
    assert full.shape == split.shape == (1, 3, 32, 32, 32)
    assert (full - split).abs().max() < TOLERANCE * max(1.0, full.abs().max().item())
    assert (foreground - full.softmax(1)[:, 1:2]).abs().max() < TOLERANCE


def test_upsampling_weights_cached_during_inference_serve_a_later_training_step():
    """The interpolation weights are cached across calls: made first under inference_mode (a click), they must still
    be usable in a backward (fine-tuning in the same process)."""
    import torch

    from samadapt3d.families.sam3d.decoder import _linear_weights, upsample_trilinear

    _linear_weights.cache_clear()
    with torch.inference_mode():
        upsample_trilinear(torch.rand(1, 2, 3, 4, 5), (6, 8, 10))
    x = torch.rand(1, 2, 3, 4, 5, requires_grad=True)
    upsample_trilinear(x, (6, 8, 10)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
