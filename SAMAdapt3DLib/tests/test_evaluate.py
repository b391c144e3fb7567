"""`samadapt3d evaluate`: metrics against hand-computed values, the box and click generators against
independent brute-force versions of the protocol text, and end-to-end CLI runs (toy and tiny random models)."""
import csv
import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from samadapt3d import models
from samadapt3d.cli import main
from samadapt3d.evaluate.metrics import curve_auc, dice, nsd, scored_nsd
from samadapt3d.evaluate.protocol import corrective_click, first_click, protocol_box
from samadapt3d.volume import Volume


# ---- metrics ---------------------------------------------------------------------------------------------------
def cubes(shift: int, side: int = 6, shape=(10, 10, 16)):
    truth = np.zeros(shape, bool)
    truth[2:2 + side, 2:2 + side, 2:2 + side] = True
    pred = np.roll(truth, shift, axis=2)
    return pred, truth


def test_dice_and_nsd_of_a_cube_and_a_shifted_cube():
    pred, truth = cubes(3)
    assert dice(pred, truth) == pytest.approx(2 * 108 / 432)  # 3 of 6 columns overlap: 0.5
    # each cube has 152 border voxels; only the far face (36 voxels) of each is more than 2 mm from the other's
    # border (3 mm), every other border voxel is within 2 mm: (116 + 116) / 304
    assert nsd(pred, truth, (1, 1, 1)) == pytest.approx(232 / 304)
    assert nsd(pred, truth, (1, 1, 1), tolerance_mm=3.0) == pytest.approx(1.0)
    # 2 mm voxels along i: the far faces are 6 mm away, the next columns 4 mm: (152 - 36 - 36 / 2 ...) by hand:
    # truth border voxels at i = 2, 3 are 6 and 4 mm from the shifted cube's border at i = 5: out; the rest is in
    # truth i=2 face: 36; i=3 ring: 20 -> 56 out of 152 on each side
    assert nsd(pred, truth, (1, 1, 2)) == pytest.approx((152 - 56) * 2 / 304)
    assert nsd(truth, truth, (1, 1, 1)) == 1.0 and dice(truth, truth) == 1.0
    assert nsd(np.zeros_like(truth), truth, (1, 1, 1)) == 0.0 and dice(np.zeros_like(truth), truth) == 0.0


def test_nsd_is_scored_zero_at_low_dice():
    pred, truth = cubes(5)  # one column of 6 overlaps: Dice 1/6
    assert dice(pred, truth) == pytest.approx(1 / 6)
    assert nsd(pred, truth, (1, 1, 1)) > 0.2 and scored_nsd(pred, truth, (1, 1, 1)) == 0.0
    pred, truth = cubes(1)
    assert scored_nsd(pred, truth, (1, 1, 1)) == pytest.approx(nsd(pred, truth, (1, 1, 1))) == pytest.approx(1.0)


def test_curve_auc_is_the_trapezoid_over_the_click_steps():
    assert curve_auc([1, 1, 1, 1, 1]) == 4.0
    assert curve_auc([0, 0.5, 1, 1, 1]) == pytest.approx(0.25 + 0.75 + 1 + 1)


# ---- the prompt generators against brute force -------------------------------------------------------------------
def brute_box(truth, rng):
    slices = [k for k in range(truth.shape[0]) if truth[k].any()]
    middle = slices[len(slices) // 2]
    cells = [(r, c) for r in range(truth.shape[1]) for c in range(truth.shape[2]) if truth[middle, r, c]]
    r0, r1 = min(r for r, _ in cells), max(r for r, _ in cells)
    c0, c1 = min(c for _, c in cells), max(c for _, c in cells)
    h, w = truth.shape[1:]
    d = [int(int(rng.integers(0, 7)) * size / 256) for size in (h, w, h, w)]
    return (slices[0], max(r0 - d[0], 0), max(c0 - d[1], 0)), (slices[-1], min(r1 + d[2], h - 1), min(c1 + d[3], w - 1))


def brute_largest_component(mask):
    """Flood fill, 26 neighbours, components in raster order of their first voxel; the first of the largest."""
    seen = np.zeros(mask.shape, bool)
    best = []
    for start in map(tuple, np.argwhere(mask)):
        if seen[start]:
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            v = stack.pop()
            comp.append(v)
            for dv in itertools.product((-1, 0, 1), repeat=3):
                n = tuple(a + b for a, b in zip(v, dv))
                if all(0 <= x < s for x, s in zip(n, mask.shape)) and mask[n] and not seen[n]:
                    seen[n] = True
                    stack.append(n)
        if len(comp) > len(best):
            best = comp
    return best


def brute_click_candidates(component_voxels):
    """EDT maxima of the component, the padded box's border being background: distance to the nearest voxel
    that is not in the component (inside its bounding box padded by max(int(25 %), 1), or just outside it)."""
    comp = np.array(component_voxels)
    lo, hi = comp.min(axis=0), comp.max(axis=0)
    pad = np.maximum(((hi - lo + 1) * 0.25).astype(int), 1)
    inside = set(map(tuple, comp))
    box = [range(a - p, b + p + 1) for a, b, p in zip(lo, hi, pad)]
    background = np.array([v for v in itertools.product(*box) if v not in inside] +
                          # beyond the padded box is background too (the distance transform's border)
                          [v for v in itertools.product(*[range(a - p - 1, b + p + 2) for a, b, p in zip(lo, hi, pad)])
                           if any(x < a - p or x > b + p for x, a, b, p in zip(v, lo, hi, pad))], float)
    dist = {v: np.sqrt(((background - np.array(v)) ** 2).sum(axis=1)).min() for v in inside}
    top = max(dist.values())
    return {v for v, d in dist.items() if d >= top - 1e-6}


masks = st.integers(0, 2 ** 31 - 1).map(
    lambda seed: np.random.default_rng(seed).random((5, 7, 8)) < np.random.default_rng(seed + 1).uniform(0.1, 0.6))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(truth=masks, seed=st.integers(0, 1000))
def test_box_matches_a_brute_force_reading_of_the_protocol(truth, seed):
    if not truth.any():
        return
    box = protocol_box(truth, np.random.default_rng(seed))
    assert (box.lo_kji, box.hi_kji) == brute_box(truth, np.random.default_rng(seed))


def test_box_jitter_scales_with_the_image_size():
    truth = np.zeros((3, 512, 300), bool)
    truth[1, 200:300, 100:200] = True
    seen = set()
    for seed in range(60):
        box = protocol_box(truth, np.random.default_rng(seed))
        grow = (200 - box.lo_kji[1], 100 - box.lo_kji[2], box.hi_kji[1] - 299, box.hi_kji[2] - 199)
        assert all(g in {int(n * size / 256) for n in range(7)} for g, size in zip(grow, (512, 300, 512, 300)))
        seen.add(grow[0])
    assert seen == {int(n * 2) for n in range(7)}  # randint(0, 6) * 512 / 256, every value drawn


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(truth=masks, prediction=masks, seed=st.integers(0, 1000))
def test_corrective_click_matches_brute_force(truth, prediction, seed):
    click = corrective_click(prediction, truth, np.random.default_rng(seed))
    error = prediction != truth
    if not error.any():
        assert click is None
        return
    component = brute_largest_component(error)
    assert click.kji in brute_click_candidates(component)
    assert click.positive == bool(truth[click.kji])


def test_first_click_is_deep_inside_the_object():
    truth = np.zeros((9, 20, 30), bool)
    truth[1:8, 2:9, 3:10] = True  # a 7-voxel cube: the EDT maximum (4) is its centre only
    assert first_click(truth, np.random.default_rng(0)).kji == (4, 5, 6)
    truth[1:8, 2:17, 3:20] = True  # 7 x 15 x 17: EDT 4 on a plateau of the middle slice; the seed picks one
    picks = {first_click(truth, np.random.default_rng(seed)).kji for seed in range(8)}
    assert len(picks) > 1
    for k, j, i in picks:
        assert k == 4 and 5 <= j <= 13 and 6 <= i <= 16


# ---- end to end through the CLI ----------------------------------------------------------------------------------
@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(models, "FAMILY_MODULES", models.FAMILY_MODULES + ("test_evaluate_models",))


def write_cases(folder, n=2):
    folder.mkdir()
    rows = ["image,label"]
    for c in range(n):
        arr = np.zeros((10, 40, 44), np.float32)
        arr[2:8, 8 + c:26, 10:30] = 100
        arr[4:7, 28:36, 4:14 + c] = 200
        labels = (arr == 100).astype(np.uint8) + 2 * (arr == 200).astype(np.uint8)
        vol = Volume(arr, spacing=(0.8, 0.9, 2.0), origin=(1, 2, 3))
        vol.save(folder / f"case{c}.nii.gz")
        vol.save(folder / f"case{c}_label.nii.gz", labels)
        rows.append(f"case{c}.nii.gz,case{c}_label.nii.gz")
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model, clicks_only, cases, clicks", [("toy-slice", False, 2, 5), ("toy-crop", True, 2, 5),
                                                              ("tiny-sam3d", False, 1, 2)])
def test_evaluate_end_to_end(tmp_path, registry, model, clicks_only, cases, clicks, capsys):
    data = write_cases(tmp_path / "data", n=cases)
    out = tmp_path / "out"
    argv = ["evaluate", "--data", str(data / "cases.csv"), "--out", str(out), "--model", model, "--device", "cpu",
            "--seed", "3", "--clicks", str(clicks)] + (["--clicks-only"] if clicks_only else [])
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "final Dice" in table and "label 1" in table
    rows = read_csv(out / "results.csv")
    assert [(r["case"], r["class"]) for r in rows] == [(f"case{c}", f"label {n}") for c in range(cases) for n in (1, 2)]
    for r in rows:
        dices = [float(r[f"dice_{n}"]) for n in range(clicks + 1)]
        assert all(0 <= d <= 1 for d in dices)
        assert float(r["final_dice"]) == dices[-1]
        assert float(r["dsc_auc"]) == pytest.approx(curve_auc(dices[1:]), abs=1e-5)
    steps = read_csv(out / "steps.csv")
    assert len(steps) == len(rows) * (clicks + 1)
    assert steps[0]["prompt"] == ("positive" if clicks_only else "box")
    assert all(s["prompt"] in ("positive", "negative", "none") for s in steps if s["step"] != "0")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model"] == model and summary["config"]["clicks_only"] == clicks_only
    assert set(summary["classes"]) == {"label 1", "label 2"} and summary["overall"]["cases"] == len(rows)
    assert len(summary["overall"]["dice_per_step"]) == clicks + 1
    assert Image.open(out / "dice_per_step.png").size == (720, 420)
    if model == "toy-crop":  # the clicked object exactly: every step is perfect
        assert all(float(r["final_dice"]) == 1.0 for r in rows)
    if model != "tiny-sam3d":  # the same seed gives the same prompts and scores
        again = tmp_path / "again"
        assert main(argv[:4] + [str(again)] + argv[5:]) == 0
        assert read_csv(again / "steps.csv") == [dict(s, seconds=t["seconds"]) for s, t in
                                                 zip(steps, read_csv(again / "steps.csv"))]


def test_evaluate_classes_filter_and_user_errors(tmp_path, registry, capsys):
    data = write_cases(tmp_path / "data", n=1)
    out = tmp_path / "out"
    base = ["evaluate", "--data", str(data), "--out", str(out), "--model", "toy-crop", "--quiet", "--clicks", "2"]
    assert main(base + ["--classes", "2"]) == 0
    rows = read_csv(out / "results.csv")
    assert [r["class"] for r in rows] == ["label 2"] and "dice_3" not in rows[0]
    for bad, message in [(["--classes", "liver"], "no object to evaluate"), (["--model", "nonexistent"], "unknown model"),
                         (["--clicks", "-1"], "--clicks")]:
        target = tmp_path / f"bad{len(message)}"
        argv = ["evaluate", "--data", str(data), "--out", str(target), "--model", "toy-crop", "--quiet"] + bad
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("samadapt3d: error: ") and message in err and err.count("\n") == 1
        assert not target.exists()
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


# ---- --canonical: the same physical prompts whatever the stored axis order ------------------------------------
class PhysicalSession:
    """A stand-in session whose answers are defined in physical (LPS) space: the box gives the truth below a
    plane, a click adds / removes a 5 mm ball around it. Records every prompt as an LPS point."""

    def __init__(self, volume, truth):
        self.volume, self.truth = volume, truth
        k, j, i = np.indices(truth.shape)
        self.lps = volume.index_to_physical(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1), "lps").reshape(
            truth.shape + (3,))
        self.prompts = []

    def reset(self):
        self.mask = np.zeros(self.truth.shape, bool)

    def set_box(self, a, b):
        corners = np.sort(self.volume.index_to_physical(np.array([a, b], float), "lps").reshape(2, 3), axis=0)
        self.prompts.append(("box", tuple(np.round(corners, 6).ravel())))
        self.mask = self.truth & (self.lps[..., 2] < np.median(self.lps[self.truth][:, 2]))
        return self.mask

    def add_point(self, ijk, positive=True):
        p = self.volume.index_to_physical(np.asarray(ijk, float), "lps").reshape(3)
        self.prompts.append((positive, tuple(np.round(p, 6))))
        ball = ((self.lps - p) ** 2).sum(axis=-1) <= 25.0
        self.mask = self.mask | ball if positive else self.mask & ~ball
        return self.mask


def test_canonical_frame_gives_the_same_physical_prompts_for_a_reoriented_copy():
    import SimpleITK as sitk

    from samadapt3d.evaluate.protocol import PromptFrame, run_object

    arr = np.zeros((12, 20, 16), np.float32)
    arr[2:9, 4:15, 3:12] = 1
    arr[5:9, 10:15, 3:6] = 0  # not a box: corrections are needed
    a = Volume(arr, (1.5, 1.0, 2.0), (5, -3, 7), np.diag([1.0, -1.0, 1.0]))
    b = Volume.from_sitk(sitk.DICOMOrient(a.to_sitk(), "SLA"))  # the same image, axes permuted and flipped
    runs = []
    for vol in (a, b):
        truth = vol.array > 0.5
        session = PhysicalSession(vol, truth)
        result = run_object(session, truth, tuple(vol.spacing[::-1]), np.random.default_rng(0), clicks=3,
                            frame=PromptFrame(vol, canonical=True))
        runs.append((session.prompts, [round(s.dice, 9) for s in result.steps]))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 4 and runs[0][1][0] < 1.0


def test_scaling_benchmark_counts_decoder_runs(registry, capsys):
    from samadapt3d.evaluate.scaling import main as scaling

    assert scaling(["--model", "toy-crop", "--negatives", "1,4", "--shape", "6,14,14"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == [1, 4]
    for r in rows:
        assert int(r[2]) >= 1 and int(r[4]) == 0  # the positive decodes; a negative added later decodes nothing


def _evaluate_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    import os

    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    models.FAMILY_MODULES = models.FAMILY_MODULES + ("test_evaluate_models",)
    assert main(["evaluate", "--data", data, "--out", out, "--model", "toy-crop", "--device", "cpu", "--quiet",
                 "--clicks", "2"]) == 0


def test_torchrun_style_sharding_merges_every_case(tmp_path):
    import socket

    import torch.multiprocessing as mp

    data = write_cases(tmp_path / "data", n=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_evaluate_worker, args=(2, port, str(data / "cases.csv"), str(tmp_path / "out")), nprocs=2, join=True)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert sorted((r["case"], r["class"]) for r in rows) == [(f"case{c}", f"label {n}") for c in range(3) for n in (1, 2)]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["config"]["processes"] == 2
    assert not list((tmp_path / "out").glob(".evaluate-shard-*"))  # the shards are merged and removed


def test_a_label_file_on_its_own_extent_is_moved_onto_the_image_grid(tmp_path, registry):
    arr = np.zeros((10, 30, 32), np.float32)
    arr[2:8, 5:20, 6:25] = 100
    vol = Volume(arr, spacing=(0.8, 0.9, 2.0), origin=(1, 2, 3))
    folder = tmp_path / "data"
    folder.mkdir()
    vol.save(folder / "ct.nii.gz")
    # the label saved on a sub-extent (as Slicer does for a .seg.nrrd): voxels [1:9, 3:22, 4:27] of the image
    sub = (arr[1:9, 3:22, 4:27] == 100).astype(np.uint8)
    origin = vol.index_to_physical(np.array([4.0, 3.0, 1.0]), "lps").reshape(3)
    Volume(sub, vol.spacing, origin, vol.direction).save(folder / "ct_label.nii.gz")
    out = tmp_path / "out"
    assert main(["evaluate", "--data", str(folder), "--out", str(out), "--model", "toy-crop", "--quiet",
                 "--clicks", "1"]) == 0
    rows = read_csv(out / "results.csv")
    assert [(r["class"], int(r["voxels"])) for r in rows] == [("label 1", int((arr == 100).sum()))]
    assert float(rows[0]["final_dice"]) == 1.0
