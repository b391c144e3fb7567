"""`samadapt3d bench --reference-dir`: against a fake checkout written here with the published module layout
(modeling/image_encoder.py, mask_decoder.py, prompt_encoder.py; the published call conventions: upsampled
3-channel slices in, clicks (d, w, h) normalised in place, decoder scale factors). Every timed run is a fresh
process (spawned), so these tests start a few Python processes."""
from __future__ import annotations

import textwrap

import pytest

from samadapt3d import bench_reference
from samadapt3d.errors import InputError
from samadapt3d.families.sam3d import Sam3DAdapterConfig

FAKE_ENCODER = '''
import torch.nn.functional as F
from samadapt3d.families.sam3d import Sam3DAdapterConfig
from samadapt3d.families.sam3d.encoder import ImageEncoder3D


class ImageEncoderViT_3d_v2(ImageEncoder3D):
    def __init__(self, *, depth, embed_dim, img_size, mlp_ratio, norm_layer, num_heads, patch_size, qkv_bias,
                 use_rel_pos, global_attn_indexes, window_size, cubic_window_size, out_chans, num_slice, patch_depth):
        super().__init__(Sam3DAdapterConfig(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, patch_size=patch_size,
            num_slice=num_slice, sam_grid=img_size // patch_size, sam_window=window_size,
            global_attn_indexes=tuple(global_attn_indexes), window_size=cubic_window_size, depth_tokens=patch_depth,
            neck_dim=out_chans))

    def load_state_dict(self, state, strict=True):  # the published blocks hold their masks as buffers
        return super().load_state_dict({k: v for k, v in state.items() if not k.endswith("attn_mask")}, strict)

    def forward(self, slices):  # [D_up, 3, H_up, W_up]: SAM's patch embedding per slice, then slice_embed
        patches = F.conv2d(slices, self.patch_embed.proj.weight, self.patch_embed.proj.bias,
                           stride=self.config.patch_size)
        x = self.slice_embed(patches.permute(1, 2, 3, 0).unsqueeze(0)).permute(0, 2, 3, 4, 1)
        x = x + self.position_embedding()
        feats = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i % 3 == 0:
                feats.append(self.neck_3d[len(feats)](x.permute(0, 4, 1, 2, 3)))
        return feats[3], feats[:3]
'''

FAKE_PROMPT = '''
import torch
import torch.nn.functional as F
from samadapt3d.families.sam3d import Sam3DAdapterConfig
from samadapt3d.families.sam3d.prompt_encoder import PointQueryTransformer


class TwoWayTransformer(PointQueryTransformer):
    def __init__(self, *, depth, embedding_dim, mlp_dim, num_heads):
        super().__init__(Sam3DAdapterConfig.tiny(neck_dim=embedding_dim, prompt_depth=depth, prompt_mlp_dim=mlp_dim,
                                                 prompt_heads=num_heads))


class PromptEncoder(torch.nn.Module):
    def __init__(self, *, transformer, num_pos_feats=128):
        super().__init__()
        self.transformer = transformer
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def forward(self, image_embeddings, point_coord, img_size, feat_size):
        point_coord[:, :, 0] = (point_coord[:, :, 0] + 0.5) * 2 / img_size[2] - 1
        point_coord[:, :, 1] = (point_coord[:, :, 1] + 0.5) * 2 / img_size[1] - 1
        point_coord[:, :, 2] = (point_coord[:, :, 2] + 0.5) * 2 / img_size[0] - 1
        grid = point_coord.reshape(1, 1, 1, -1, 3)
        points = F.grid_sample(image_embeddings, grid, align_corners=False).flatten(2).transpose(1, 2)
        out = self.transformer(image_embeddings.flatten(2).transpose(1, 2), points)
        return out.transpose(1, 2).reshape([1, -1] + feat_size)
'''

FAKE_DECODER = '''
import torch
import torch.nn.functional as F
from samadapt3d.families.sam3d import Sam3DAdapterConfig
from samadapt3d.families.sam3d.decoder import HEAD_NAMES, MLADecoder


class VIT_MLAHead_h(MLADecoder):
    def __init__(self, img_size=768, mla_channels=256, mlahead_channels=128, num_classes=2):
        super().__init__(Sam3DAdapterConfig.tiny(neck_dim=mla_channels, decoder_dim=mlahead_channels,
                                                 num_classes=num_classes))

    def forward(self, inputs, scale_factor1, scale_factor2):
        heads = [F.interpolate(getattr(self.mlahead, name)(f), scale_factor=scale_factor1, mode="trilinear",
                               align_corners=True) for name, f in zip(HEAD_NAMES, inputs[:4])]
        x = self.cls(torch.cat(heads + [inputs[-1]], dim=1))
        return F.interpolate(x, scale_factor=scale_factor2, mode="trilinear", align_corners=True)
'''


@pytest.fixture()
def fake_checkout(tmp_path):
    modeling = tmp_path / "3DSAM-adapter" / "modeling"
    modeling.mkdir(parents=True)
    for name, text in (("image_encoder", FAKE_ENCODER), ("prompt_encoder", FAKE_PROMPT),
                       ("mask_decoder", FAKE_DECODER)):
        (modeling / f"{name}.py").write_text(textwrap.dedent(text))
    return modeling.parent


def test_reference_and_ours_agree_and_are_timed(fake_checkout):
    config = Sam3DAdapterConfig.tiny(depth=12, global_attn_indexes=(2, 5, 8, 11))
    said = []
    result = bench_reference.run(fake_checkout, config, repeats=1, points=2, say=said.append)
    assert result["max_dp"] < 1e-4
    for side in ("reference", "ours"):
        for part in ("encoder", "decode"):
            assert result[f"{side}_{part}_wall"] > 0 and result[f"{side}_{part}_cpu"] > 0
        assert result[f"{side}_total_wall"] >= result[f"{side}_encoder_wall"]
        assert 2**26 < result[f"{side}_peak_rss"] < 2**34  # a torch process: more than 64 MiB, less than 16 GiB
    assert result["total_wall_ratio"] == pytest.approx(result["reference_total_wall"] / result["ours_total_wall"])
    assert result["encoder_cpu_ratio"] == pytest.approx(result["reference_encoder_cpu"] / result["ours_encoder_cpu"])
    # the published code ran on glibc's default allocator, ours with its setting (on Linux with glibc)
    assert result["reference_keeps_freed_memory"] is False
    import sys

    assert result["ours_keeps_freed_memory"] is sys.platform.startswith("linux")
    runs = [line for line in said if line.startswith("run ")]
    assert len(runs) == 2 and "published" in runs[0] and "ours" in runs[1]  # the published side first
    # imported at run time only: nothing of the checkout stays importable
    assert str(fake_checkout) not in sys.path


def test_reference_bench_detects_a_different_network(fake_checkout):
    # a checkout whose decoder ignores the click-dependent head must show up as a large |dp|
    path = fake_checkout / "modeling" / "mask_decoder.py"
    path.write_text(path.read_text().replace("zip(HEAD_NAMES, inputs[:4])]",
                                             "zip(HEAD_NAMES, inputs[:3] + [inputs[0]])]"))
    config = Sam3DAdapterConfig.tiny(depth=12, global_attn_indexes=(2, 5, 8, 11))
    result = bench_reference.run(fake_checkout, config, repeats=1, points=1, say=lambda _: None)
    assert result["max_dp"] > 1e-3


def test_cli_names_a_folder_without_the_published_modules(tmp_path, capsys):
    from samadapt3d.cli import main

    assert main(["bench", "--reference-dir", str(tmp_path), "--config", "small", "--crop", "32"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("samadapt3d: error: --reference-dir") and "modeling/" in err[-1]
    with pytest.raises(InputError, match="12 blocks"):
        bench_reference.run(tmp_path, Sam3DAdapterConfig.tiny(), 1, 1, lambda _: None)
