"""Fine-tuning the 3DSAM-adapter (tiny random network, CPU): learning, resume, reload, DDP, CLI signals."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from samadapt3d import load_model
from samadapt3d.training import TrainConfig, build_task, train
from samadapt3d.training.data import find_cases, load_cases
from samadapt3d.training.tasks import network
from samadapt3d.training.trainer import trainable_state
from samadapt3d.training.validate import evaluate
from test_training_data import write_spheres

LIB = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_spheres(tmp_path_factory.mktemp("spheres") / "train", 6, seed=3)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    folder = write_spheres(tmp_path_factory.mktemp("spheres") / "test", 2, seed=11)
    task = build_task("sam3d-adapter", config="tiny")
    return load_cases(find_cases(folder), "1", task.model.preset)


def _config(data, out, **kw) -> TrainConfig:
    values = dict(data=str(data), target="1", model="sam3d-adapter", out=str(out), config="tiny", epochs=2,
                  samples_per_epoch=4, lr=1e-3, device="cpu", val_fraction=0.2)
    values.update(kw)
    return TrainConfig(**values)


def test_loss_falls_trained_beats_untrained_and_reloads(data, held_out, tmp_path):
    untrained = build_task("sam3d-adapter", config="tiny", seed=0)
    first = {k: v.clone() for k, v in untrained.model.state_dict().items()}
    trainable = {n for n, p in untrained.model.named_parameters() if p.requires_grad}
    encoder = {n for n in trainable if n.startswith("image_encoder.")}
    assert not any(k in n for n in encoder for k in ("attn.qkv", "patch_embed", "pos_embed", "mlp.lin1"))
    assert any("adapter" in n for n in trainable) and any(n.startswith("mask_decoder.") for n in trainable)
    before = evaluate(untrained, network(untrained), held_out, torch.device("cpu"))
    events = []
    result = train(_config(data, tmp_path / "run"), progress=events.append, show_bar=False)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert events[-1]["event"] == "done" and events[-1]["model"] == str(result.model_path)
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3

    model = load_model(result.model_path)  # our safetensors, like any other model file
    trained = build_task("sam3d-adapter", config="tiny")
    trained.model = model
    after = evaluate(trained, network(trained), held_out, torch.device("cpu"))
    assert after["dice"] > before["dice"] + 0.2, (before, after)
    assert after["dice"] > 0.6 and after["nsd"] >= before["nsd"]
    # reload = the trained network: equal outputs on a new crop
    crop = torch.from_numpy(held_out[0].image[:32, :32, :32].copy())[None, None]
    points = torch.tensor([[[16.0, 16.0, 16.0]]])
    again = load_model(result.model_path)
    torch.testing.assert_close(model.predict_crop(crop, points), again.predict_crop(crop, points), rtol=0, atol=0)
    # only the adapter side moved
    changed = {k for k, v in model.state_dict().items() if not torch.equal(first[k], v)}
    assert changed and changed <= trainable


def test_resume_repeats_an_uninterrupted_run(data, tmp_path):
    whole = train(_config(data, tmp_path / "whole", epochs=1, samples_per_epoch=3), show_bar=False)
    def stopper(event):
        if event["event"] == "step" and event["step"] == 1:
            stop.set()

    import threading

    stop = threading.Event()
    part = train(_config(data, tmp_path / "part", epochs=1, samples_per_epoch=3), progress=stopper, stop=stop,
                 show_bar=False)
    assert part.stopped and part.model_path is None
    resumed = train(_config(data, tmp_path / "part", epochs=1, samples_per_epoch=3), resume=part.checkpoint_path,
                    show_bar=False)
    a = load_model(whole.model_path).state_dict()
    b = load_model(resumed.model_path).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)
    assert resumed.history[-1]["val_dice"] == pytest.approx(whole.history[-1]["val_dice"], abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    seen: list = []
    result = train(_config(data, out, epochs=1, samples_per_epoch=4), progress=seen.append, show_bar=False)
    steps = len([e for e in seen if e["event"] == "step"])
    torch.save({"trainable": trainable_state(result.model), "steps": steps}, f"{out}/rank{rank}.pt")


def test_two_process_ddp_on_cpu(data, tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(data), str(tmp_path / "ddp")), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    assert r0["steps"] == 2 and r1["steps"] == 0  # 4 crops / 2 ranks, batch 1; only rank 0 reports
    assert r0["trainable"].keys() == r1["trainable"].keys()
    for key, value in r0["trainable"].items():
        assert torch.equal(value, r1["trainable"][key]), key
    start = build_task("sam3d-adapter", config="tiny").model.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in r0["trainable"].items())  # it did train
    saved = load_model(tmp_path / "ddp" / "sam3d-adapter.safetensors").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in r0["trainable"].items())


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_cli_progress_json_sigterm_and_resume(data, tmp_path, capsys):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(LIB) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "samadapt3d", "train", "--data", str(data), "--target", "1", "--model",
           "sam3d-adapter", "--config", "tiny", "--out", str(out), "--epochs", "1", "--samples-per-epoch", "6",
           "--val-fraction", "0", "--device", "cpu", "--progress-json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if '"event": "step"' in line:
            proc.send_signal(signal.SIGTERM)  # as the Slicer module's Stop
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    events = _events("".join(lines) + rest)
    assert events[0]["event"] == "start" and events[-1]["event"] == "stopped", events
    assert (out / "checkpoint.pt").is_file() and not (out / "sam3d-adapter.safetensors").exists()
    stopped_at = events[-1]["step"]
    assert 1 <= stopped_at < 6
    from samadapt3d.cli import main  # the resume in this process (as `samadapt3d train --resume --out DIR`)

    assert main(["train", "--resume", "--out", str(out), "--progress-json"]) == 0
    events = _events(capsys.readouterr().out)
    assert events[0]["resumed_epoch"] == 0
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(stopped_at + 1, 7))
    assert events[-1]["event"] == "done" and Path(events[-1]["model"]).is_file()


def test_cli_errors_are_reported_as_json(tmp_path, capsys):
    from samadapt3d.cli import main

    code = main(["train", "--data", str(tmp_path / "missing"), "--target", "1", "--progress-json"])
    out, err = capsys.readouterr()
    assert code == 1 and "training data not found" in err
    assert _events(out) == [{"event": "error", "message": f"training data not found: {tmp_path / 'missing'}"}]
    assert main(["train", "--data", str(tmp_path), "--target", "1", "--model", "sam3d-adapter"]) == 1
    assert "no image/label pairs" in capsys.readouterr().err


def test_start_from_a_sam_file_exports_only_the_difference(tiny_sam_base, tmp_path):
    """The path users take: an untrained 3DSAM-adapter from a SAM ViT file; the result stores only what differs
    from SAM and reloads with that file (found next to the model, or given)."""
    sam_path, sam_state = tiny_sam_base
    data = write_spheres(tmp_path / "data", 2, shape=(24, 24, 24), seed=2, radius=(3.0, 5.0))
    result = train(TrainConfig(data=str(data), target="1", model="sam3d-adapter", sam_checkpoint=str(sam_path),
                               out=str(tmp_path / "run"), epochs=1, samples_per_epoch=2, lr=1e-3, device="cpu",
                               val_fraction=0.5), show_bar=False)
    from samadapt3d.checkpoints import load_weights, read_safetensors_metadata

    stored = load_weights(result.model_path)
    meta = read_safetensors_metadata(result.model_path)
    assert json.loads(meta["sam_keys"]) and not any(k in stored for k in json.loads(meta["sam_keys"]))
    assert "image_encoder.blocks.0.attn.qkv.weight" not in stored and "mask_decoder.cls.3.weight" in stored
    model = load_model(result.model_path, sam_checkpoint=sam_path)
    for key, value in trainable_state(result.model).items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.state_dict()["image_encoder.blocks.0.attn.qkv.weight"],
                       sam_state["image_encoder.blocks.0.attn.qkv.weight"])
