"""3DSAM-adapter as a CropModel: shapes, determinism, probabilities, click axes, caching."""
from __future__ import annotations

import pytest
import torch

from samadapt3d.errors import InputError
from samadapt3d.families.base import CropModel
from samadapt3d.families.sam3d import SAM3DAdapter, Sam3DAdapterConfig
from samadapt3d.families.sam3d.prompt_encoder import points_to_grid


@pytest.fixture(scope="module")
def model() -> SAM3DAdapter:
    torch.manual_seed(0)
    return SAM3DAdapter(Sam3DAdapterConfig.tiny()).eval()


def test_is_a_crop_model_with_published_defaults():
    cfg = Sam3DAdapterConfig()
    assert cfg.crop_size == (128, 128, 128) and cfg.token_grid == (32, 32, 32) and cfg.decoder_grid == (64, 64, 64)
    assert issubclass(SAM3DAdapter, CropModel) and SAM3DAdapter.family == "3dsam_adapter"


def test_predict_crop_shape_range_and_determinism(model):
    crop = torch.randn(2, 1, 32, 32, 32)
    points = torch.rand(2, 3, 3) * 31
    first = model.predict_crop(crop, points)
    second = model.predict_crop(crop, points)
    assert first.shape == (2, 1, 32, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert first.min() >= 0 and first.max() <= 1
    # each sample of a batch is predicted as if alone
    alone = model.predict_crop(crop[1:], points[1:])
    assert (alone - first[1:]).abs().max() < 1e-5


def test_encode_once_decode_many(model):
    crop = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        features = model.encode(crop)
        assert len(features.features) == 4 and features.features[0].shape == (1, 32, 8, 8, 8)
        assert features.small_crop.shape == (1, 1, 16, 16, 16)
        a = model.decode(features, torch.tensor([[[4.0, 4.0, 4.0]]]))
        b = model.decode(features, torch.tensor([[[28.0, 20.0, 9.0]]]))
    assert not torch.equal(a, b)  # the click matters
    assert torch.equal(a, model.predict_crop(crop, torch.tensor([[[4.0, 4.0, 4.0]]])))


def test_points_are_not_modified_in_place(model):
    points = torch.tensor([[[3.0, 4.0, 5.0]]])
    model.predict_crop(torch.zeros(1, 1, 32, 32, 32), points)
    assert points.tolist() == [[[3.0, 4.0, 5.0]]]


def test_click_axes_reach_the_right_feature_voxel():
    # feature [1, 1, H', W', D'] whose value names its own (h, w, d) index
    h, w, d = torch.meshgrid(torch.arange(8), torch.arange(8), torch.arange(4), indexing="ij")
    feature = (100 * h + 10 * w + d).float()[None, None]
    # crop (D, H, W) = (16, 32, 32) -> feature voxel (h=1, w=2, d=3) holds crop voxels 4t..4t+3, centre 4t+1.5
    points = torch.tensor([[[13.5, 5.5, 9.5]]])  # (d, h, w)
    grid = points_to_grid(points, (16, 32, 32))
    sampled = torch.nn.functional.grid_sample(feature, grid, align_corners=False)
    assert sampled.item() == pytest.approx(123.0)


def test_non_cubic_crop():
    cfg = Sam3DAdapterConfig.tiny(depth_tokens=4)
    assert cfg.crop_size == (16, 32, 32)
    net = SAM3DAdapter(cfg).eval()
    out = net.predict_crop(torch.randn(1, 1, 16, 32, 32), torch.tensor([[[8.0, 16.0, 3.0]]]))
    assert out.shape == (1, 1, 16, 32, 32)


def test_bad_inputs_are_named(model):
    with pytest.raises(InputError, match=r"\(32, 32, 32\)"):
        model.predict_crop(torch.zeros(1, 1, 16, 32, 32), torch.zeros(1, 1, 3))
    with pytest.raises(InputError, match="points must be"):
        model.predict_crop(torch.zeros(1, 1, 32, 32, 32), torch.zeros(1, 3))


def test_describe_is_json_friendly(model):
    import json

    info = json.loads(json.dumps(model.describe()))
    assert info["family"] == "3dsam_adapter" and info["crop_size"] == [32, 32, 32]


def test_bench_runs_small(capsys):
    from samadapt3d.bench import main

    assert main(["--device", "cpu", "--config", "small", "--crop", "32", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "full-crop forward" in out and "decode only" in out and "peak memory" in out
