"""Fine-tuning from the module: scene -> training set on disk (real MRML scene from slicer-core)."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from SAMAdapt3DSlicerLib import scene_bridge as bridge
from SAMAdapt3DSlicerLib import training
from samadapt3d.errors import InputError
from samadapt3d.labels import read_labels
from samadapt3d.volume import Volume

OBLIQUE = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _case(scene, name, segment_name, offset):
    rng = np.random.default_rng(offset)
    array = rng.integers(-100, 100, (6, 12, 10)).astype(np.int16)
    volume = Volume(array, spacing=(0.8, 0.9, 2.5), origin=(offset, -4.0, 2.0), direction=OBLIQUE)
    node = bridge.volume_to_node(volume, scene, name)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    bridge.add_segment(seg, "other")
    sid = bridge.add_segment(seg, segment_name)
    mask = np.zeros(array.shape, bool)
    mask[2:4, 3:7 + offset % 3, 2:6] = True
    bridge.write_segment_mask(seg, sid, mask, node)
    return training.TrainingCase(node, seg, sid), volume, mask


def test_export_writes_images_named_labels_and_a_csv(scene, tmp_path):
    first, vol1, mask1 = _case(scene, "ct1", "tumour", 0)
    second, vol2, mask2 = _case(scene, "ct2", "Tumor (refined)", 1)
    csv_path, target = training.export_training_set([first, second], tmp_path / "set")
    assert target == "tumour"
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["image"] for r in rows] == ["case000_image.nrrd", "case001_image.nrrd"]
    for row, volume, mask in zip(rows, (vol1, vol2), (mask1, mask2)):
        image = Volume.from_file(csv_path.parent / row["image"])
        np.testing.assert_array_equal(image.array, volume.array)
        np.testing.assert_allclose(image.direction, volume.direction, atol=1e-6)
        np.testing.assert_allclose(image.origin, volume.origin, atol=1e-6)
        labels = read_labels(csv_path.parent / row["label"])
        np.testing.assert_array_equal(labels.mask("tumour"), mask)  # renamed to the common target
        assert labels.grid.same_geometry(volume)


def test_empty_segment_and_no_case_are_refused(scene, tmp_path):
    case, _, _ = _case(scene, "ct", "tumour", 0)
    empty = bridge.add_segment(case.segmentation_node, "empty")
    with pytest.raises(InputError, match="empty"):
        training.export_training_set([training.TrainingCase(case.volume_node, case.segmentation_node, empty)],
                                     tmp_path / "set")
    with pytest.raises(InputError, match="at least one"):
        training.export_training_set([], tmp_path / "set")


def test_command_line_and_progress_lines(tmp_path):
    cmd = training.training_command(tmp_path / "cases.csv", "tumour", tmp_path / "out", epochs=3, device="cpu")
    assert cmd[1:4] == ["-m", "samadapt3d", "train"] and "--progress-json" in cmd
    assert cmd[cmd.index("--target") + 1] == "tumour" and cmd[cmd.index("--epochs") + 1] == "3"
    with pytest.raises(InputError, match="cannot fine-tune"):
        training.training_command("a.csv", "t", "out", model="samed")
    with pytest.raises(InputError, match="SAM base file"):
        training.training_command("a.csv", "t", "out", model="sam3d-adapter")
    sam = tmp_path / "sam_vit_b_01ec64.pth"
    sam.write_bytes(b"x")
    cmd = training.training_command("a.csv", "t", "out", model="sam3d-adapter", sam_checkpoint=sam)
    assert cmd[cmd.index("--sam-checkpoint") + 1] == str(sam) and "--checkpoint-activations" in cmd
    event = training.parse_progress_line('{"event": "epoch", "epoch": 2, "epochs": 5, "val_dice": 0.8123}\n')
    assert training.describe_progress(event) == "epoch 2/5, val dice 0.812"
    assert training.parse_progress_line("plain text\n") == {"event": "log", "text": "plain text"}
    log = [{"event": "log", "text": "Traceback ..."}, {"event": "log", "text": "RuntimeError: boom"}]
    assert training.failure_detail(log) == "RuntimeError: boom"
    assert training.failure_detail(log[:1] + [{"event": "error", "message": "case a: label is empty"}] + log[1:]) \
        == "case a: label is empty"
    assert training.failure_detail([]) == "see training.log"


def _blob_case(scene, name, seed):
    """A bright ball in noise, segmented: something a tiny model can learn in a step or two."""
    rng = np.random.default_rng(seed)
    shape = (10, 32, 32)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ball = (k - 5) ** 2 / 9 + (j - 14 - seed) ** 2 / 36 + (i - 16) ** 2 / 36 <= 1
    array = (rng.normal(0, 20, shape) + 300 * ball).astype(np.int16)
    node = bridge.volume_to_node(Volume(array, spacing=(1.0, 1.0, 2.0)), scene, name)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    sid = bridge.add_segment(seg, "ball")
    bridge.write_segment_mask(seg, sid, ball, node)
    return training.TrainingCase(node, seg, sid)


TINY = ["--config", "tiny", "--samples-per-epoch", "2", "--batch-size", "1", "--val-fraction", "0.5", "--seed", "0"]


def test_real_training_process_reports_progress_and_its_model_loads(scene, tmp_path):
    """The module's path end to end: scene cases -> files -> `python -m samadapt3d train` in a child process ->
    JSON progress -> a model file that load_model takes."""
    from samadapt3d.models import load_model

    cases = [_blob_case(scene, f"ct{n}", n) for n in range(2)]
    csv_path, target = training.export_training_set(cases, tmp_path / "data")
    command = training.training_command(csv_path, target, tmp_path / "model", epochs=1, device="cpu", extra=TINY)
    job = training.TrainingJob(command, log_path=tmp_path / "training.log")
    job.start()
    assert job.wait(timeout=300) == 0, (tmp_path / "training.log").read_text()[-2000:]
    events = job.events()
    kinds = [e.get("event") for e in events]
    assert "start" in kinds and "epoch" in kinds and "done" in kinds, kinds
    assert events[-1] == {"event": "exit", "returncode": 0, "cancelled": False}
    epoch = next(e for e in events if e.get("event") == "epoch")
    assert "epoch 1/1" in training.describe_progress(epoch)
    model_path = training.find_trained_model(tmp_path / "model", events)
    assert model_path is not None and model_path.suffix == ".safetensors"
    model = load_model(model_path)
    assert model.family == "litemedsam_adapter"


def test_stopping_a_training_process_saves_a_checkpoint(scene, tmp_path):
    cases = [_blob_case(scene, "ct", 0)]
    csv_path, target = training.export_training_set(cases, tmp_path / "data")
    command = training.training_command(csv_path, target, tmp_path / "model", epochs=500, device="cpu",
                                        extra=TINY[:-4] + ["--val-fraction", "0"])
    job = training.TrainingJob(command)
    job.start()
    seen = []
    deadline = time.time() + 240
    while time.time() < deadline and not any(e.get("event") == "step" for e in seen):
        seen += job.events()
        assert job.running or any(e.get("event") == "step" for e in seen), seen
        time.sleep(0.2)
    job.cancel(timeout=120)
    job.wait(timeout=60)
    seen += job.events()
    assert seen[-1]["event"] == "exit" and seen[-1]["cancelled"]
    stopped = [e for e in seen if e.get("event") == "stopped"]
    assert stopped and Path(stopped[0]["checkpoint"]).is_file(), seen[-5:]
