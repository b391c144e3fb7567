"""The CLI end to end on CPU with the toy crop model registered as a model family ("toy-crop"),
in-process through main(argv) and once through a real subprocess; plus label files / seeds."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import samadapt3d.models as models
from samadapt3d import __version__
from samadapt3d.cli import main
from samadapt3d.labels import read_labels, read_mask
from samadapt3d.volume import Volume
from test_session import phantom
from test_volume import rotation

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setattr(models, "FAMILY_MODULES", models.FAMILY_MODULES + ("test_session_toymodel",))


@pytest.fixture
def image(tmp_path):
    vol = Volume(phantom(), (0.9, 1.2, 2.5), (-20, 30, 5), rotation((0.2, -0.1, 0.3)) @ np.diag([1, -1, 1]))
    path = tmp_path / "img.nii.gz"
    vol.save(path)
    return path, Volume.from_file(path)


def test_segment_writes_the_mask_with_the_input_geometry_and_an_overlay(tmp_path, image, toy_registry, capsys):
    path, vol = image
    out, png = tmp_path / "mask.nrrd", tmp_path / "view.png"
    ras = ",".join(str(v) for v in vol.index_to_physical([12, 12, 10], "ras"))
    code = main(["segment", str(path), "-o", str(out), "--model", "toy-crop", "--point-ijk", "5,5,3",
                 "--point-ras", ras, "--negative-ijk", "12,12,10", "--device", "cpu", "--overlay", str(png)])
    assert code == 0, capsys.readouterr().err
    mask = Volume.from_file(out)
    assert mask.same_geometry(vol)
    assert np.array_equal(mask.array > 0, vol.array == 100)
    assert "wrote" in capsys.readouterr().out
    picture = Image.open(png)
    assert picture.format == "PNG" and picture.width > picture.height > 0
    pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - [255, 60, 40]).sum(axis=1) < 200).any()  # the mask colour is drawn


def test_segment_lps_points_and_box(tmp_path, image, toy_registry):
    path, vol = image
    out = tmp_path / "mask.nii.gz"
    lps = ",".join(str(v) for v in vol.index_to_physical([13, 11, 9], "lps"))
    assert main(["segment", str(path), "-o", str(out), "--model", "toy-crop", "--point-lps", lps, "--quiet"]) == 0
    assert np.array_equal(Volume.from_file(out).array > 0, vol.array == 200)
    assert main(["segment", str(path), "-o", str(out), "--model", "toy-crop", "--box-ijk", "3,2,1,8,9,5",
                 "--quiet"]) == 0
    assert np.array_equal(Volume.from_file(out).array > 0, vol.array == 100)


def bad_cases(tmp_path, path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x00garbage")
    flat, four, nan = tmp_path / "flat.nrrd", tmp_path / "four.nii.gz", tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.Image(5, 6, sitk.sitkFloat32), str(flat))
    sitk.WriteImage(sitk.Image([4, 5, 6, 2], sitk.sitkFloat32), str(four))
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 1, 1] = np.nan
    Volume(arr).save(nan)
    toy = ["--model", "toy-crop"]
    return {
        "missing": ([str(tmp_path / "nope.nii.gz"), "--point-ijk", "1,1,1", *toy], "not found"),
        "not an image": ([str(junk), "--point-ijk", "1,1,1", *toy], "cannot read"),
        "2D": ([str(flat), "--point-ijk", "1,1,0", *toy], "3D"),
        "4D": ([str(four), "--point-ijk", "1,1,1", *toy], "3D"),
        "NaN": ([str(nan), "--point-ijk", "1,1,1", *toy], "1 non-finite voxels (1 NaN"),
        "outside": ([str(path), "--point-ijk", "18,0,0", *toy], "outside the image"),
        "outside ras": ([str(path), "--point-ras", "1000,0,0", *toy], "outside the image"),
        "malformed point": ([str(path), "--point-ijk", "1,2", *toy], "3 comma-separated numbers"),
        "empty box": ([str(path), "--box-ijk", "3,3,3,3,3,3", *toy], "empty box"),
        "no prompt": ([str(path), *toy], "nothing to segment"),
        "unknown model": ([str(path), "--point-ijk", "1,1,1", "--model", "no-such-model"], "unknown model"),
        "absent device": ([str(path), "--point-ijk", "1,1,1", *toy, "--device", "cuda:7"
                           if not _has_cuda() else "mps"], "device"),
        "bad device": ([str(path), "--point-ijk", "1,1,1", *toy, "--device", "tpu"], "unknown device"),
    }


def _has_cuda():
    import torch

    return torch.cuda.is_available()


def test_every_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, image, toy_registry, capsys):
    path, _ = image
    for name, (args, message) in bad_cases(tmp_path, path).items():
        out = tmp_path / "out" / "mask.nii.gz"
        out.parent.mkdir(exist_ok=True)
        code = main(["segment", *args, "-o", str(out), "--overlay", str(out.parent / "o.png")])
        err = capsys.readouterr().err
        assert code == 1, name
        assert err.startswith("samadapt3d: error: ") and message in err, (name, err)
        assert list(out.parent.iterdir()) == [], name


def test_bad_output_paths(tmp_path, image, toy_registry, capsys):
    path, _ = image
    for out, message in [(tmp_path / "m.txt", "must end in"), (tmp_path / "no" / "m.nrrd", "does not exist")]:
        assert main(["segment", str(path), "-o", str(out), "--point-ijk", "1,1,1", "--model", "toy-crop"]) == 1
        assert message in capsys.readouterr().err


def test_models_version_and_missing_subcommands(toy_registry, capsys, monkeypatch):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "toy-crop: toy-crop" in out and f"default model: {models.DEFAULT_MODEL}" in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    import builtins

    real_import = builtins.__import__

    def no_demo(name, *args, **kw):
        if name in ("samadapt3d.demo", "samadapt3d.bench"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_demo)
    monkeypatch.setattr("importlib.import_module", lambda name: no_demo(name))
    for sub in ("demo", "bench"):
        assert main([sub]) == 1
        assert "not available in this installation" in capsys.readouterr().err


def test_demo_and_bench_are_delegated(monkeypatch):
    import types

    calls = []
    for name in ("demo", "bench"):
        module = types.ModuleType(f"samadapt3d.{name}")
        module.main = lambda argv, name=name: calls.append((name, argv)) or 3
        monkeypatch.setitem(sys.modules, f"samadapt3d.{name}", module)
    assert main(["demo", "--fast"]) == 3 and main(["bench", "-x"]) == 3
    assert calls == [("demo", ["--fast"]), ("bench", ["-x"])]


def test_subprocess_end_to_end(tmp_path, image):
    """The real process boundary: exit codes, stderr, files; the toy family registered in the child."""
    path, vol = image
    out = tmp_path / "mask.mha"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import samadapt3d.models as m; "
              "m.FAMILY_MODULES += ('test_session_toymodel',); from samadapt3d.cli import main; "
              "sys.exit(main(sys.argv[2:]))")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([sys.executable, "-c", script, str(TESTS), "segment", str(path), "-o", str(out),
                         "--model", "toy-crop", "--point-ijk", "5,4,10", "--device", "cpu"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert np.array_equal(Volume.from_file(out).array > 0, vol.array == 300)
    bad = subprocess.run([sys.executable, "-c", script, str(TESTS), "segment", str(path), "-o",
                          str(tmp_path / "x.nrrd"), "--model", "toy-crop", "--point-ijk", "99,0,0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("samadapt3d: error: point")
    assert not (tmp_path / "x.nrrd").exists()
    version = subprocess.run([sys.executable, "-m", "samadapt3d.cli", "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0 and __version__ in version.stdout


# ---- label files and seeds ------------------------------------------------------------------------
SEG_HEADER = """NRRD0004
type: unsigned char
dimension: 4
space: left-posterior-superior
sizes: 2 {i} {j} {k}
space directions: none {directions}
kinds: list domain domain domain
encoding: raw
space origin: ({ox},{oy},{oz})
Segment0_ID:=Segment_1
Segment0_LabelValue:=1
Segment0_Layer:=0
Segment0_Name:=block
Segment1_ID:=Segment_2
Segment1_LabelValue:=1
Segment1_Layer:=1
Segment1_Name:=ball

"""


def write_seg_nrrd(path, vol, layers):
    """A two-layer Slicer segmentation as Slicer writes it (4D, first axis a 'list' of layers)."""
    (i, j, k), (ox, oy, oz) = vol.size_ijk, vol.origin
    axes = vol.direction * vol.spacing[None, :]  # column c: the LPS step of index axis c
    directions = " ".join("(" + ",".join(repr(float(v)) for v in axes[:, c]) + ")" for c in range(3))
    header = SEG_HEADER.format(i=i, j=j, k=k, directions=directions, ox=ox, oy=oy, oz=oz)
    data = np.stack(layers, axis=-1).astype(np.uint8)  # [k, j, i, layer]
    path.write_bytes(header.encode() + data.tobytes())


def test_seg_nrrd_layers_and_segments(tmp_path):
    arr = phantom()
    vol = Volume(arr, (1.0, 1.5, 2.0), (4, 5, 6))
    path = tmp_path / "s.seg.nrrd"
    write_seg_nrrd(path, vol, [(arr == 100), (arr == 300)])
    labels = read_labels(path)
    assert [(s.name, s.label_value, s.layer) for s in labels.segments] == [("block", 1, 0), ("ball", 1, 1)]
    assert labels.grid.same_geometry(vol)
    assert np.array_equal(labels.mask("ball"), arr == 300)
    assert np.array_equal(labels.mask(), (arr == 100) | (arr == 300))
    # a 4D scalar label image (e.g. NIfTI) is read as layers too
    four = tmp_path / "four.nii.gz"
    image = sitk.JoinSeries([vol.to_sitk((arr == 100).astype(np.uint8)), vol.to_sitk((arr == 200).astype(np.uint8) * 2)])
    sitk.WriteImage(image, str(four))
    labels = read_labels(four)
    assert len(labels.layers) == 2 and np.array_equal(labels.mask(2), arr == 200)
    assert np.array_equal(read_mask(four, "label 1", reference=vol), arr == 100)


def test_cli_refines_a_seed_segment(tmp_path, image, toy_registry):
    path, vol = image
    seg = tmp_path / "seed.seg.nrrd"
    # a segmentation on the image's own (oblique) grid, as Slicer saves one
    write_seg_nrrd(seg, vol, [(vol.array == 100), (vol.array == 300)])
    out = tmp_path / "refined.nrrd"
    labels = read_labels(seg)
    seed = read_mask(seg, "ball", reference=vol)
    assert np.array_equal(seed, vol.array == 300)  # the seed really lies on the ball
    assert main(["segment", str(path), "-o", str(out), "--model", "toy-crop", "--quiet",
                 "--seed-mask", f"{seg}:ball", "--point-ijk", "5,5,3"]) == 0
    result = Volume.from_file(out).array > 0
    assert np.array_equal(result, seed | (vol.array == 100))
    assert labels.grid.size_ijk == vol.size_ijk


def test_negative_coordinates_after_point_options(tmp_path, image, toy_registry):
    from samadapt3d.cli import _join_negative_values

    assert _join_negative_values(["--point-ras", "-1.5,2,3", "-o", "x"]) == ["--point-ras=-1.5,2,3", "-o", "x"]
    path, vol = image
    ijk = np.array([5.0, 5.0, 3.0])
    lps = vol.index_to_physical(ijk, "lps")
    shift = Volume(vol.array, vol.spacing, vol.origin + [300, 300, -300] - lps, vol.direction)  # RAS all < 0
    moved = tmp_path / "moved.nii.gz"
    shift.save(moved)
    ras = shift.index_to_physical(ijk, "ras")
    assert (ras < 0).all()
    out = tmp_path / "m.nii.gz"
    assert main(["segment", str(moved), "-o", str(out), "--model", "toy-crop", "--quiet",
                 "--point-ras", ",".join(str(v) for v in ras)]) == 0
    assert np.array_equal(Volume.from_file(out).array > 0, vol.array == 100)


# ---- progress ------------------------------------------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_progress_is_short_but_never_silent():
    import io

    from samadapt3d.progress import PLAIN_EVERY_S, Progress

    out, clock = io.StringIO(), _Clock()
    progress = Progress(out, clock=clock, tty=False).phase("segmenting")
    for n in range(1, 101):  # 100 slices, one per 0.01 of progress, 0.05 s each
        clock.now += 0.05
        progress(n / 200, f"slice {n}/100")
    clock.now += PLAIN_EVERY_S + 1  # a long silent stretch (one slow slice): still a line when it ends
    progress(0.51, "slice 101/100")
    progress(1.0, "done")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("segmenting:   0%")
    assert 5 <= len(lines) <= 12, lines  # a line per 10 %, per stage change and per long wait
    assert any(line.startswith("segmenting:  51% slice 101/100") for line in lines)
    assert lines[-1].startswith("segmenting: 100% done")
    assert "\r" not in out.getvalue()


def test_terminal_progress_redraws_one_line_and_clears_it():
    import io

    from samadapt3d.progress import Progress

    out, clock = io.StringIO(), _Clock()
    progress = Progress(out, clock=clock, tty=True).phase("segmenting")
    clock.now += 1
    progress(0.5, "slice 3/6")
    progress.close()
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") >= 2 and " 50% |" in text and text.endswith("\r\x1b[K")


def test_segment_progress_follows_the_session_and_writing(tmp_path, image, toy_registry, capsys, monkeypatch):
    """Not a terminal: plain lines on stdout (stderr stays for errors); the segmenting phase reaches 100 % only when
    the session has the mask, and the writing phase comes after it."""
    import samadapt3d.session as session_module

    path, vol = image
    seen = []
    original = session_module.InteractiveSession.segment

    def segment(self, *args, **kwargs):
        mask = original(self, *args, **kwargs)
        seen.append(capsys.readouterr().out)  # what was printed while the session worked
        return mask

    monkeypatch.setattr(session_module.InteractiveSession, "segment", segment)
    out = tmp_path / "mask.nrrd"
    assert main(["segment", str(path), "-o", str(out), "--model", "toy-crop", "--point-ijk", "5,5,3",
                 "--overlay", str(tmp_path / "v.png")]) == 0
    captured = capsys.readouterr()
    during, after = seen[0].splitlines(), captured.out.splitlines()
    assert captured.err == ""
    assert during[0].startswith("loading the model:") and any(line.startswith("segmenting: 100%") for line in during)
    fractions = [int(line.split(":")[1].split("%")[0]) for line in during if line.startswith("segmenting:")]
    assert fractions == sorted(fractions) and len(fractions) >= 3
    assert [line.split(":")[0] for line in after[:-1]] == ["writing"] * (len(after) - 1)
    assert "mask.nrrd" in after[-2] or "v.png" in after[-2]
    assert after[-1].startswith("wrote ")
