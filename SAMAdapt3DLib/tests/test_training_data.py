"""Synthetic training data for the fine-tuning tests: bright spheres in noise (image + label files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from samadapt3d.volume import Volume


def write_spheres(folder: Path, n: int, shape=(36, 40, 40), seed: int = 0, start: int = 0, radius=(4.0, 7.0)) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for c in range(start, start + n):
        r = rng.uniform(*radius)
        centre = [rng.uniform(r + 2, s - r - 2) for s in shape]
        mask = sum((g - x) ** 2 for g, x in zip(grid, centre)) <= r * r
        image = rng.normal(0, 25, shape) + 150 * mask
        Volume(image.astype(np.float32)).save(folder / f"case{c:02d}_image.nii.gz")
        Volume(mask.astype(np.uint8)).save(folder / f"case{c:02d}_label.nii.gz")
    return folder


# ---- data: pairing, cache, crops, bad cases --------------------------------------------------------------
import csv  # noqa: E402

import pytest  # noqa: E402

from samadapt3d.errors import InputError  # noqa: E402
from samadapt3d.training.data import Augment, find_cases, load_case, sample_crop  # noqa: E402
from samadapt3d.training.loss import dice_score, nsd_score  # noqa: E402
from samadapt3d.families.sam3d import GENERIC_CT  # noqa: E402


def test_folder_and_csv_pairs_and_cache(tmp_path):
    data = write_spheres(tmp_path / "data", 2)
    cases = find_cases(data)
    assert [(c.image.name, c.label.name) for c in cases] == [
        ("case00_image.nii.gz", "case00_label.nii.gz"), ("case01_image.nii.gz", "case01_label.nii.gz")]
    with open(data / "cases.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], ["case01_image.nii.gz", "case01_label.nii.gz"]])
    assert [c.name for c in find_cases(data / "cases.csv")] == ["case01"]
    first = load_case(cases[0], "1", GENERIC_CT, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_case(cases[0], "1", GENERIC_CT, tmp_path / "cache")  # from the cache
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.mask, again.mask)
    assert first.mask.any() and first.image.dtype == np.float32


def test_crops_hold_foreground_and_augment_consistently(tmp_path):
    case = load_case(find_cases(write_spheres(tmp_path / "d", 1))[0], "1", GENERIC_CT)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        image, mask = sample_crop(case, (16, 16, 16), rng, 0.0, Augment(), need_foreground=True)
        assert image.shape == mask.shape == (16, 16, 16) and mask.any()
        # the bright sphere stays under its mask whatever the flips/rotations/zoom
        assert image[mask > 0.5].mean() > image[mask < 0.5].mean() + 1.0


def test_metrics():
    a = np.zeros((12, 12, 12), bool)
    a[3:9, 3:9, 3:9] = True
    b = np.roll(a, 1, axis=0)
    assert dice_score(a, a) == 1.0 and nsd_score(a, a, (1, 1, 1)) == 1.0
    assert dice_score(a, b) == pytest.approx(5 / 6)
    assert nsd_score(a, b, (1.0, 1.0, 1.0), 1.0) == 1.0 > nsd_score(a, b, (3.0, 1.0, 1.0), 1.0)


def test_bad_cases_are_named(tmp_path):
    from samadapt3d.volume import Volume

    data = write_spheres(tmp_path / "data", 3)
    # geometry mismatch: the label of case01 on another spacing
    label = Volume.from_file(data / "case01_label.nii.gz")
    Volume(label.array, spacing=(2.0, 1.0, 1.0)).save(data / "case01_label.nii.gz")
    cases = {c.name: c for c in find_cases(data)}
    with pytest.raises(InputError, match="case case01: the label.*grid"):
        load_case(cases["case01"], "1", GENERIC_CT)
    # empty target
    Volume(np.zeros_like(label.array)).save(data / "case02_label.nii.gz")
    with pytest.raises(InputError, match="case case02 .*empty"):
        load_case(cases["case02"], 1, GENERIC_CT)
    with pytest.raises(InputError, match="case case00 .*no segment 'liver'"):
        load_case(cases["case00"], "liver", GENERIC_CT)
    # missing file named in a CSV
    with open(data / "cases.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], ["case00_image.nii.gz", "gone_label.nii.gz"]])
    with pytest.raises(InputError, match="case case00: label file not found.*gone_label"):
        find_cases(data / "cases.csv")
    with pytest.raises(InputError, match="not found"):
        find_cases(tmp_path / "nowhere")
