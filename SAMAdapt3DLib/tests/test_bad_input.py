"""Bad and unusual input as a user (or an attacker) gives it: every case is one line
`samadapt3d: error: ...`, exit 1, nothing written, the user's files untouched, refused before the model loads."""
import gzip
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import samadapt3d.models as models
from ci_requirements import require_module
from samadapt3d.cli import main
from samadapt3d.errors import InputError
from samadapt3d.volume import Volume
from test_cli import image, toy_registry  # noqa: F401 (fixtures)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the CLI gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was refused")

    monkeypatch.setattr(models, "load_model", refuse)


def run_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samadapt3d: error: "), err
    return lines[0]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- 1. the output never resolves to an input -------------------------------------------------------------------
@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "dotted"])
def test_output_that_is_the_input_is_refused_before_the_model_loads(tmp_path, link, no_model_load, capsys):
    src = tmp_path / "ct.nrrd"
    Volume(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)).save(src)
    out = {"same": src, "dotted": tmp_path / "." / "ct.nrrd", "symlink": tmp_path / "alias.nrrd",
           "hardlink": tmp_path / "hard.nrrd"}[link]
    if link == "symlink":
        out.symlink_to(src)
    elif link == "hardlink":
        os.link(src, out)
    before = snapshot(tmp_path)
    message = run_error(capsys, ["segment", str(src), "-o", str(out), "--point-ijk", "1,1,1"])
    assert "is the input" in message
    assert snapshot(tmp_path) == before


def test_overlay_or_seed_mask_as_output_is_refused(tmp_path, image, no_model_load, capsys):  # noqa: F811
    path, vol = image
    seed = tmp_path / "seed.nrrd"
    vol.save(seed, (vol.array == 100).astype(np.uint8))
    alias = tmp_path / "view.png"
    alias.symlink_to(path)
    before = snapshot(tmp_path)
    assert "is the input" in run_error(capsys, ["segment", str(path), "-o", str(seed), "--seed-mask", str(seed)])
    assert "is the input" in run_error(capsys, ["segment", str(path), "-o", str(seed), "--seed-mask", f"{seed}:1"])
    assert "is the input" in run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--point-ijk",
                                                "1,1,1", "--overlay", str(alias)])
    assert snapshot(tmp_path) == before


# ---- 2. truncated files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_image_is_refused(tmp_path, suffix, no_model_load, capsys):
    rng = np.random.default_rng(0)
    full = tmp_path / f"full{suffix}"
    Volume(rng.integers(-1000, 1000, (20, 30, 40)).astype(np.int16)).save(full)
    data = full.read_bytes()
    if suffix.endswith(".gz"):
        raw = gzip.decompress(data)
        cut = gzip.compress(raw[: len(raw) // 2])  # a well-formed gzip of half the file
    else:
        cut = data[: len(data) // 2]
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(cut)
    out = tmp_path / "mask.nrrd"
    message = run_error(capsys, ["segment", str(bad), "-o", str(out), "--point-ijk", "1,1,1"])
    assert "truncated" in message and "No such file" not in message
    assert not out.exists()


def test_gzip_cut_mid_stream_is_refused(tmp_path, no_model_load, capsys):
    full = tmp_path / "full.nii.gz"
    Volume(np.random.default_rng(1).normal(size=(20, 30, 40)).astype(np.float32)).save(full)
    data = full.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    assert "truncated" in run_error(capsys, ["segment", str(bad), "-o", str(tmp_path / "m.nrrd"), "--point-ijk",
                                             "1,1,1"])


# ---- 3. memory bombs -------------------------------------------------------------------------------------------------
def nrrd_bomb(path, sizes=(2000, 2000, 1000), encoding="raw", payload=b""):
    header = (f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {sizes[0]} {sizes[1]} {sizes[2]}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
              f"kinds: domain domain domain\nendian: little\nencoding: {encoding}\nspace origin: (0,0,0)\n\n")
    path.write_bytes(header.encode() + payload)
    return path


def test_declared_size_over_the_limit_is_refused_before_reading(tmp_path, no_model_load, capsys, monkeypatch):
    monkeypatch.delenv("SAMADAPT3D_MAX_IMAGE_MB", raising=False)
    raw = nrrd_bomb(tmp_path / "bomb.nrrd")
    assert raw.stat().st_size < 400
    zipped = nrrd_bomb(tmp_path / "bomb_gz.nrrd", (2000, 2000, 600), "gzip", gzip.compress(b"\0" * (1 << 20)))
    for path in (raw, zipped):
        message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", "1,1,1"])
        assert "--max-image-mb" in message and "SAMADAPT3D_MAX_IMAGE_MB" in message and "MB" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.nrrd", "bomb_gz.nrrd"]


def test_image_limit_can_be_lowered_and_raised(tmp_path, image, toy_registry, capsys, monkeypatch):  # noqa: F811
    path, vol = image
    out = tmp_path / "m.nrrd"
    monkeypatch.setenv("SAMADAPT3D_MAX_IMAGE_MB", "0.001")  # 1 kB: the 18x16x14 float32 phantom is 16 kB
    assert "limit" in run_error(capsys, ["segment", str(path), "-o", str(out), "--point-ijk", "5,5,3", "--quiet"])
    assert main(["segment", str(path), "-o", str(out), "--point-ijk", "5,5,3", "--quiet", "--model", "toy-crop",
                 "--max-image-mb", "1"]) == 0
    monkeypatch.setenv("SAMADAPT3D_MAX_IMAGE_MB", "lots")
    assert "SAMADAPT3D_MAX_IMAGE_MB" in run_error(capsys, ["segment", str(path), "-o", str(out), "--point-ijk",
                                                            "5,5,3"])


def test_volume_reader_checks_the_limit_itself(tmp_path):
    with pytest.raises(InputError, match="limit"):
        Volume.from_file(nrrd_bomb(tmp_path / "bomb.nrrd"))


# ---- 6. messages that mislead ----------------------------------------------------------------------------------------
def test_dicom_folder_says_dicom_series_are_not_read(tmp_path, no_model_load, capsys):
    folder = tmp_path / "series"
    folder.mkdir()
    image = sitk.Image(8, 8, sitk.sitkInt16)
    for n in range(3):
        image.SetMetaData("0020|000e", "1.2.3.4")
        image.SetMetaData("0020|0013", str(n + 1))
        image.SetMetaData("0008|0060", "CT")
        sitk.WriteImage(image, str(folder / f"slice{n}.dcm"))
    message = run_error(capsys, ["segment", str(folder), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", "1,1,1"])
    assert "DICOM" in message and "not found" not in message
    plain = tmp_path / "empty"
    plain.mkdir()
    message = run_error(capsys, ["segment", str(plain), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", "1,1,1"])
    assert "folder" in message and "not found" not in message


def test_float64_beyond_float32_range_is_reported_as_such(tmp_path, no_model_load, capsys):
    arr = np.zeros((4, 5, 6))
    arr[1, 2, 3] = 1e300
    path = tmp_path / "huge.nrrd"
    Volume(arr).save(path)
    message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", "1,1,1"])
    assert "float32" in message and "1e+300" in message
    assert "NaN" not in message and "Inf" not in message


@pytest.mark.parametrize("text", ["1_0,2,3", "0x1,2,3", "1e1,2,3,", "nan,1,1", " ,1,2,3"])
def test_numbers_are_plain_decimals(tmp_path, image, no_model_load, capsys, text):  # noqa: F811
    path, _ = image
    message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", text])
    assert "3 comma-separated numbers" in message


def test_empty_segment_name_is_refused(tmp_path, image, no_model_load, capsys):  # noqa: F811
    path, vol = image
    seed = tmp_path / "seed.nrrd"
    vol.save(seed, (vol.array == 100).astype(np.uint8))
    message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--seed-mask", f"{seed}:"])
    assert "segment name" in message


def test_no_numpy_reprs_in_messages(tmp_path, image, no_model_load, capsys):  # noqa: F811
    path, _ = image
    message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--box-ijk",
                                 "200,200,200,300,300,300"])
    assert "np." not in message and "200" in message


def test_constant_image_warns(tmp_path, toy_registry, capsys):  # noqa: F811
    path = tmp_path / "flat.nrrd"
    Volume(np.full((6, 7, 8), 5, np.int16)).save(path)
    assert main(["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", "1,1,1", "--model",
                 "toy-crop", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "samadapt3d: warning:" in err and "constant" in err


# ---- 4. tracebacks instead of messages ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu:abc", "cuda:x", "cpu:", ":0", "cpu:-1"])
def test_malformed_device_is_a_clear_error(tmp_path, image, no_model_load, capsys, device):  # noqa: F811
    path, _ = image
    message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", "1,1,1",
                                 "--device", device])
    assert "device" in message


def test_thin_images_are_refused(tmp_path, no_model_load, capsys):
    for shape in [(3, 1, 600), (3, 2, 1200)]:
        path = tmp_path / "thin.nrrd"
        Volume(np.random.default_rng(0).normal(size=shape).astype(np.float32)).save(path)
        message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", "1,0,1"])
        assert "too thin" in message


def test_other_file_types_given_as_model_are_not_checkpoints(tmp_path, image, capsys):  # noqa: F811
    path, _ = image
    png = tmp_path / "view.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    copy = tmp_path / "image.pth"
    shutil.copy(path, copy)
    for model in (path, png, text, copy):
        message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--point-ijk", "1,1,1",
                                     "--model", str(model), "--device", "cpu"])
        assert "weights_only=False" not in message and "code execution" not in message, message
        assert str(model) in message
    assert not (tmp_path / "m.nrrd").exists()


# ---- 5. seed masks that cannot seed ---------------------------------------------------------------------------------
def test_seed_mask_outside_the_image_or_empty_is_refused(tmp_path, image, no_model_load, capsys):  # noqa: F811
    path, vol = image
    far = Volume((vol.array == 100).astype(np.uint8), vol.spacing, vol.origin + 500.0, vol.direction)
    far.save(tmp_path / "far.nrrd")
    message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--seed-mask",
                                 str(tmp_path / "far.nrrd")])
    assert "does not overlap the image" in message
    vol.save(tmp_path / "empty.nrrd", np.zeros(vol.array.shape, np.uint8))
    message = run_error(capsys, ["segment", str(path), "-o", str(tmp_path / "m.nrrd"), "--seed-mask",
                                 str(tmp_path / "empty.nrrd")])
    assert "is empty" in message
    assert not (tmp_path / "m.nrrd").exists()


# ---- 4. the demo's output folder and train --resume -----------------------------------------------------------------
def test_demo_out_naming_a_file_is_refused_before_the_model_loads(tmp_path, no_model_load, capsys):
    from samadapt3d import demo

    taken = tmp_path / "results"
    taken.write_text("my notes")
    assert demo.main(["--out", str(taken)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("samadapt3d demo: error: ") and "not a folder" in err[0]
    assert taken.read_text() == "my notes"


def test_train_resume_with_a_foreign_or_malformed_checkpoint(tmp_path, capsys):
    import torch

    ours = {"trainable": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 0, "step": 0,
            "torch_rng": torch.zeros(2, dtype=torch.uint8), "config": '{"data": "d", "target": "t"}', "history": "[]"}
    cases = {
        "foreign": {"weight": torch.zeros(2)},
        "config not json": {**ours, "config": "{oops"},
        "config a list": {**ours, "config": "[1, 2]"},
        "config without data": {**ours, "config": '{"epochs": 2}'},
        "config of wrong types": {**ours, "config": '{"data": "d", "target": "t", "epochs": "ten"}'},
        "config with a bad crop": {**ours, "config": '{"data": "d", "target": "t", "crop": [1, "x"]}'},
        "history not json": {**ours, "history": "[oops"},
        "no trainable state": {k: v for k, v in ours.items() if k != "trainable"},
    }
    for name, state in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        torch.save(state, path)
        message = run_error(capsys, ["train", "--resume", str(path)])
        assert str(path) in message and "checkpoint" in message, (name, message)


# ---- 7. segment -o x.seg.nrrd is a real Slicer segmentation ---------------------------------------------------------
def test_segment_to_seg_nrrd_writes_a_named_segment(tmp_path, image, toy_registry):  # noqa: F811
    slicerio = require_module("slicerio", "pip install slicerio")
    path, vol = image
    out = tmp_path / "liver.seg.nrrd"
    assert main(["segment", str(path), "-o", str(out), "--point-ijk", "5,5,3", "--model", "toy-crop", "--quiet"]) == 0
    info = slicerio.read_segmentation(str(out))
    segments = info["segments"]
    assert [s["name"] for s in segments] == ["liver"]
    assert len(segments[0]["color"]) == 3
    voxels = info["voxels"]
    assert voxels.sum() == (vol.array == 100).sum()
    named = tmp_path / "other.seg.nrrd"
    assert main(["segment", str(path), "-o", str(named), "--point-ijk", "5,5,3", "--model", "toy-crop", "--quiet",
                 "--name", "left kidney"]) == 0
    assert [s["name"] for s in slicerio.read_segmentation(str(named), skip_voxels=True)["segments"]] == ["left kidney"]


def test_auto_output_that_is_the_input_is_refused(tmp_path, no_model_load, capsys):
    src = tmp_path / "ct.nrrd"
    Volume(np.zeros((4, 5, 6), np.int16)).save(src)
    alias = tmp_path / "labels.nrrd"
    alias.symlink_to(src)
    before = snapshot(tmp_path)
    assert "is the input" in run_error(capsys, ["auto", str(src), "-o", str(alias), "--model", "x.pth"])
    assert snapshot(tmp_path) == before


def test_bench_says_what_it_is_doing(capsys, monkeypatch):
    import torch

    import samadapt3d.bench as bench

    class Stub(torch.nn.Module):  # what is printed, not the network's speed, is under test
        def __init__(self, config):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(()))

        def encode(self, crop):
            return crop * self.weight

        def decode(self, features, points):
            return features.mean()

    monkeypatch.setattr(bench, "SAM3DAdapter", Stub)
    bench_main = bench.main
    assert bench_main(["--config", "small", "--crop", "32", "--repeats", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    steps = [line for line in captured.err.splitlines() if line.startswith("bench: ")]
    assert steps[0].startswith("bench: building") and any("warm-up" in s for s in steps)
    assert any(s.startswith("bench: full forward 1/1") for s in steps)
    assert "full-crop forward" in captured.out and "bench:" not in captured.out
