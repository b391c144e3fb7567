"""The atomic writers (image files, safetensors, PNG overlays): a failure in the middle of a write leaves the
old file byte for byte and no partial or temporary file beside it."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from samadapt3d.errors import InputError
from samadapt3d.volume import Volume


class Boom(RuntimeError):
    pass


def half_then_fail(target_arg: int = 1):
    """A writer that writes half of something to the path it is given, then fails."""
    def write(*args, **kwargs):
        with open(str(args[target_arg]), "wb") as handle:
            handle.write(b"partial data")
        raise Boom("disk full")

    return write


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", ["mask.nrrd", "mask.nii.gz", "mask.seg.nrrd", "mask.mha"])
def test_image_write_failing_midway_keeps_the_old_file(tmp_path, monkeypatch, name):
    path = tmp_path / name
    Volume(np.ones((3, 4, 5), np.uint8)).save(path)
    before = path.read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", half_then_fail(1))
    with pytest.raises((Boom, InputError)):
        Volume(np.zeros((3, 4, 5), np.uint8)).save(path)
    assert path.read_bytes() == before
    assert listing(tmp_path) == [name]


def test_safetensors_write_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    from samadapt3d.checkpoints import save_safetensors

    path = tmp_path / "model.safetensors"
    save_safetensors({"w": torch.ones(3)}, path, {"format": "test"})
    before = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail(1))
    with pytest.raises(Boom):
        save_safetensors({"w": torch.zeros(3)}, path, {"format": "test"})
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["model.safetensors"]


def test_png_write_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    from PIL import Image

    from samadapt3d.overlay import save_png

    path = tmp_path / "view.png"
    save_png(Image.new("RGB", (4, 4), (255, 0, 0)), path)
    before = path.read_bytes()

    def fail(self, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise Boom("disk full")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(Boom):
        save_png(Image.new("RGB", (4, 4), (0, 0, 255)), path)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["view.png"]
