"""Fine-tuning from the module: scene -> training set on disk (real MRML scene from slicer-core)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

import SAMAdapt3DSceneBridge as bridge
import SAMAdapt3DTraining as training
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
    event = training.parse_progress_line('{"event": "epoch", "epoch": 2, "epochs": 5, "val_dice": 0.8123}\n')
    assert training.describe_progress(event) == "epoch 2/5, val dice 0.812"
    assert training.parse_progress_line("plain text\n") == {"event": "log", "text": "plain text"}
