"""Prompt-free multi-class models through the library and the CLI (`samadapt3d auto`)."""
import numpy as np
import pytest
import SimpleITK as sitk

from samadapt3d.automatic import segment_all_classes
from samadapt3d.cli import main
from samadapt3d.engines.slab import class_probabilities
from samadapt3d.errors import InputError
from samadapt3d.families import samed
from samadapt3d.models import load_model
from samadapt3d.preprocess import ModelSpace
from samadapt3d.volume import Volume
from test_samed import files  # noqa: F401  (the tiny SAM base + published-layout SAMed files)


def _volume():
    rng = np.random.default_rng(3)
    array = rng.normal(40.0, 80.0, size=(3, 40, 48)).astype(np.float32)
    direction = np.diag([-1.0, 1.0, 1.0])  # flipped first axis: the model space must undo it
    return Volume(array, spacing=(0.8, 0.9, 5.0), origin=(10.0, -20.0, 30.0), direction=direction)


def test_labels_are_the_argmax_of_the_class_probabilities_on_the_volume_grid(files):  # noqa: F811
    base_path, lora_path, _, _ = files
    model = load_model(lora_path, sam_checkpoint=base_path)
    volume = _volume()
    labels, names = segment_all_classes(model, volume)
    assert names == samed.SYNAPSE_CLASSES
    assert labels.shape == volume.array.shape
    space = ModelSpace(volume, model.preset)
    probs = class_probabilities(model, space.image)
    expected = np.argmax(np.stack([space.from_model(p) for p in probs]), axis=0)
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 1  # random weights still pick several classes


def test_cli_auto_writes_named_segments(files, tmp_path):  # noqa: F811
    base_path, lora_path, _, _ = files
    volume = _volume()
    image = tmp_path / "ct.nii.gz"
    volume.save(image)
    out = tmp_path / "organs.seg.nrrd"
    assert main(["auto", str(image), "-o", str(out), "--model", str(lora_path), "--sam-checkpoint",
                 str(base_path), "--device", "cpu", "--quiet"]) == 0
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == volume.size_ijk
    np.testing.assert_allclose(written.GetDirection(), volume.direction.reshape(-1))
    assert written.GetMetaData("Segment4_Name") == samed.SYNAPSE_CLASSES[4]
    assert written.GetMetaData("Segment4_LabelValue") == "5"
    labels, _ = segment_all_classes(load_model(lora_path, sam_checkpoint=base_path), volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)


def test_prompted_models_are_refused(files, tmp_path, capsys):  # noqa: F811
    volume = _volume()
    image = tmp_path / "ct.nii.gz"
    volume.save(image)
    out = tmp_path / "x.nii.gz"
    # LiteMedSAM is prompted: `auto` must say so and write nothing.
    assert main(["auto", str(image), "-o", str(out), "--model", "litemedsam", "--device", "cpu", "--quiet"]) == 1
    assert "prompted" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(InputError, match="prompted"):
        segment_all_classes(load_model("litemedsam"), volume)
