"""3DSAM-adapter weight files: SAM base, released .pth.tar, our safetensors; architecture inference."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from samadapt3d import load_model
from samadapt3d.checkpoints import read_safetensors_metadata
from samadapt3d.errors import CheckpointError
from samadapt3d.families import sam3d_adapter
from samadapt3d.families.sam3d import (PRESETS, SAM3DAdapter, Sam3DAdapterConfig, export_safetensors,
                                       from_sam_checkpoint, infer_config, released_state, save_released)
from samadapt3d.families.sam3d.presets import GENERIC_CT
from samadapt3d.sam import build_sam
from samadapt3d.sam.build_sam import SamSize

TINY_SAM = SamSize(embed_dim=48, depth=4, num_heads=4, global_attn_indexes=(1, 3), img_size=256, window_size=4,
                   prompt_embed_dim=32, decoder_heads=4, decoder_mlp_dim=64)
CONFIG = Sam3DAdapterConfig.tiny()


def perturbed(model: SAM3DAdapter, seed: int = 1) -> SAM3DAdapter:
    """Move every trainable tensor away from its initial value, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth"
    torch.save(build_sam(TINY_SAM).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def trained(sam_file) -> SAM3DAdapter:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete SAM file must not warn
        model = from_sam_checkpoint(sam_file, config=CONFIG)
    return perturbed(model)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(1, 1, 32, 32, 32, generator=gen), torch.tensor([[[10.0, 12.0, 20.0], [11.0, 14.0, 18.0]]])


def test_sam_state_dict_initialises_frozen_parts_and_reports_the_rest(sam_file):
    sam_state = torch.load(sam_file, weights_only=True)
    model = from_sam_checkpoint(sam_file)  # architecture inferred from the SAM file
    cfg = model.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.global_attn_indexes) == (48, 4, 4, (1, 3))
    assert model.crop_size == (32, 32, 32) and model.config.window_size == 4
    enc = model.image_encoder.state_dict()
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.3.attn.qkv.weight", "blocks.1.attn.rel_pos_h",
                "blocks.2.mlp.lin2.bias", "blocks.0.norm1.weight"):
        assert torch.equal(enc[key], sam_state[f"image_encoder.{key}"]), key
    block = model.image_encoder.blocks[2].attn
    assert torch.allclose(block.rel_pos_d, 0.5 * (block.rel_pos_h + block.rel_pos_w))
    report = model.load_report
    assert not report.missing
    assert any(k.startswith("image_encoder.neck.") for k in report.unused)
    assert any(k.startswith("prompt_encoder.") for k in report.unused)
    assert any(k.startswith("mask_decoder.") for k in report.unused)
    assert "unused" in report.summary()


def test_full_vit_b_sam_state_dict_loads(tmp_path):
    from samadapt3d.families.sam3d import load_sam_into

    sam_state = build_sam("vit_b").state_dict()
    model = SAM3DAdapter()  # the published sizes
    report = load_sam_into(model, sam_state, "sam_vit_b (random)")
    assert not report.missing and len(report.loaded) == 3 + 12 * 14  # patch embed, pos; 14 per block
    assert model.crop_size == (128, 128, 128)
    assert model.image_encoder.blocks[2].attn.rel_pos_h.shape == (127, 64)  # global-sized table
    assert model.image_encoder.blocks[0].attn_mask.shape == (64, 512, 512)
    released = released_state(model)
    inferred = infer_config(released["encoder_dict"], released["decoder_dict"], released["feature_dict"][0])
    assert inferred == Sam3DAdapterConfig()  # the published architecture, read back from shapes


def test_incomplete_sam_file_warns_and_names_missing_keys(sam_file, tmp_path):
    state = torch.load(sam_file, weights_only=True)
    del state["image_encoder.blocks.1.attn.qkv.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.warns(UserWarning, match="blocks.1.attn.qkv.weight"):
        model = from_sam_checkpoint(path, config=CONFIG)
    assert model.load_report.missing == ["image_encoder.blocks.1.attn.qkv.weight"]


def test_mis_shaped_sam_file_is_refused(sam_file, tmp_path):
    state = torch.load(sam_file, weights_only=True)
    state["image_encoder.pos_embed"] = torch.zeros(1, 8, 8, 48)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="mis-shaped.*image_encoder.pos_embed"):
        from_sam_checkpoint(path, config=CONFIG)


def test_trainable_parameters_follow_published_training(trained):
    names = {n for n, p in trained.named_parameters() if p.requires_grad}
    frozen = {n for n, p in trained.named_parameters() if not p.requires_grad}
    for name in ("image_encoder.depth_embed", "image_encoder.slice_embed.weight", "image_encoder.blocks.0.norm1.weight",
                 "image_encoder.blocks.0.norm2.bias", "image_encoder.blocks.1.adapter.conv.weight",
                 "image_encoder.blocks.3.attn.rel_pos_d", "image_encoder.neck_3d.2.0.weight",
                 "prompt_encoders.3.transformer.layers.0.global_query", "mask_decoder.cls.3.weight"):
        assert name in names, name
    for name in ("image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed", "image_encoder.blocks.0.attn.qkv.weight",
                 "image_encoder.blocks.0.attn.proj.bias", "image_encoder.blocks.0.attn.rel_pos_h",
                 "image_encoder.blocks.0.attn.rel_pos_w", "image_encoder.blocks.0.attn.lr", "image_encoder.blocks.0.mlp.lin1.weight"):
        assert name in frozen, name


def test_released_checkpoint_round_trip_and_inference(trained, inputs, tmp_path):
    path = tmp_path / "kits" / "best.pth.tar"
    path.parent.mkdir()
    obj = released_state(trained)
    obj.update(epoch=3, best_val_loss=0.1, encoder_opt={"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]})
    torch.save(obj, path)
    assert infer_config(obj["encoder_dict"], obj["decoder_dict"], obj["feature_dict"][0]) == CONFIG
    assert sam3d_adapter.detect(obj)
    model = load_model(path)  # no SAM file needed
    assert isinstance(model, SAM3DAdapter) and model.config == CONFIG
    assert model.preset == PRESETS["kits"]
    crop, points = inputs
    assert torch.equal(model.predict_crop(crop, points), trained.predict_crop(crop, points))
    assert "ignored" in model.load_report.summary()
    # the published layout stores the shift masks of the even blocks
    assert obj["encoder_dict"]["blocks.0.attn_mask"].shape == (8, 64, 64)
    assert "blocks.1.attn_mask" not in obj["encoder_dict"]


@pytest.mark.parametrize("damage, message", [
    (lambda o: o["encoder_dict"].pop("blocks.2.adapter.linear1.weight"), r"missing keys: blocks\.2\.adapter\.linear1\.weight"),
    (lambda o: o["decoder_dict"].__setitem__("cls.9.weight", torch.zeros(1)), r"decoder_dict.*unexpected keys: cls\.9\.weight"),
    (lambda o: o["feature_dict"][3].__setitem__("transformer.layers.1.norm4.weight", torch.zeros(5)),
     r"feature_dict\[3\].*mis-shaped keys: transformer\.layers\.1\.norm4\.weight"),
    (lambda o: o["encoder_dict"].pop("blocks.2.attn_mask"), r"missing keys: blocks\.2\.attn_mask"),
    (lambda o: o["encoder_dict"]["blocks.0.attn_mask"].zero_(), r"blocks\.0\.attn_mask is not the shifted-window mask"),
])
def test_bad_released_files_are_refused_with_named_keys(trained, tmp_path, damage, message):
    obj = released_state(trained)
    damage(obj)
    path = tmp_path / "damaged.pth.tar"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_safetensors_export_stores_only_what_differs_from_sam(trained, sam_file, inputs, tmp_path):
    path = tmp_path / "lits_model.safetensors"
    meta = export_safetensors(trained, path, sam_checkpoint=sam_file)
    stored = read_safetensors_metadata(path)
    assert json.loads(stored["config"]) == CONFIG.to_dict()
    assert stored["sam_sha256"] == meta["sam_sha256"] and len(meta["sam_sha256"]) == 64
    from safetensors import safe_open
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
    assert "image_encoder.blocks.0.attn.qkv.weight" not in keys and "image_encoder.pos_embed" not in keys
    assert "image_encoder.blocks.0.adapter.linear1.weight" in keys and "mask_decoder.cls.3.weight" in keys

    with pytest.raises(CheckpointError, match="pass the SAM base file"):
        load_model(path)
    other = tmp_path / "other_sam.pth"
    torch.save(build_sam(TINY_SAM).state_dict(), other)
    with pytest.raises(CheckpointError, match="is not the SAM base file"):
        load_model(path, sam_checkpoint=other)
    model = load_model(path, sam_checkpoint=sam_file)
    crop, points = inputs
    assert torch.equal(model.predict_crop(crop, points), trained.predict_crop(crop, points))
    assert model.preset == trained.preset


def test_safetensors_from_released_file_keeps_preset_and_outputs(trained, inputs, tmp_path):
    released = tmp_path / "pancreas_best.pth.tar"
    save_released(trained, released)
    model = load_model(released)
    assert model.preset == PRESETS["msd_pancreas"]
    path = tmp_path / "exported.safetensors"
    export_safetensors(model, path)  # no SAM base: all tensors stored
    assert "sam_sha256" not in read_safetensors_metadata(path)
    again = load_model(path)
    crop, points = inputs
    assert again.preset == PRESETS["msd_pancreas"]
    assert torch.equal(again.predict_crop(crop, points), model.predict_crop(crop, points))


def test_safetensors_with_foreign_key_is_refused(trained, tmp_path):
    from samadapt3d.checkpoints import save_safetensors

    path = tmp_path / "model.safetensors"
    meta = export_safetensors(trained, path)
    state = {k: v for k, v in trained.state_dict().items() if k != "mask_decoder.cls.0.weight"}
    state["image_encoder.extra"] = torch.zeros(2)
    save_safetensors(state, path, meta)
    with pytest.raises(CheckpointError, match=r"mask_decoder\.cls\.0\.weight.*unexpected keys: image_encoder\.extra"):
        load_model(path)


def test_preset_follows_file_name():
    from samadapt3d.families.sam3d import preset_for_path

    assert preset_for_path("ckpt/lits/last.pth.tar") == PRESETS["lits"]
    assert preset_for_path("3dsam_colon.pth.tar") == PRESETS["msd_colon"]
    assert preset_for_path("model.pth.tar") == GENERIC_CT
    kits = PRESETS["kits"]
    assert kits.clip == (-54.0, 247.0) and kits.mean == 59.53867 and kits.std == 55.457336
    assert kits.spacing == (1.0, 1.0, 1.0) and kits.orientation == "LPS"


def test_sam_file_is_not_taken_for_a_3dsam_adapter(sam_file):
    assert not sam3d_adapter.detect(torch.load(sam_file, weights_only=True))
