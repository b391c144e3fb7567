"""Training data: image/label pairs -> cached model-space arrays -> augmented crops.

A data set is a folder or a CSV file. A CSV has a header with `image` and `label` columns (paths relative
to the CSV's folder). In a folder, every label file (`*_label.*`, `*_seg.*`, `*.seg.nrrd`, or a file of the
same name in a `labels/` folder next to `images/`) is paired with its image. The target is one segment
(name, case-insensitive, or label value) of each label file.

Each case is mapped into the model's preset space (axis order, spacing, intensity) once and cached as
`.npz` in a cache folder, keyed by the files' paths, sizes and modification times, the target and the
preset, so a second run (or a resumed one) starts at once.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, SAMAdapt3DError
from ..labels import read_labels
from ..preprocess import ModelSpace, Preset, extract_crop
from ..volume import Volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")
_LABEL_MARKERS = ("_label", "_labels", "_seg", "_mask", "_gt")


@dataclass(frozen=True)
class Case:
    image: Path
    label: Path

    @property
    def name(self) -> str:
        stem = _stem(self.image)
        return stem[: -len("_image")] if stem.endswith("_image") else stem


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_cases(data: str | os.PathLike) -> list[Case]:
    """The (image, label) pairs of a folder or CSV; every path is checked to exist."""
    data = Path(data).expanduser()
    if not data.exists():
        raise InputError(f"training data not found: {data}")
    cases = _cases_from_csv(data) if data.is_file() else _cases_from_folder(data)
    if not cases:
        raise InputError(f"no image/label pairs found in {data} (a CSV with image,label columns, or a folder "
                         f"with NAME.nii.gz + NAME_label.nii.gz / NAME.seg.nrrd, or images/ + labels/)")
    for case in cases:
        for path, what in ((case.image, "image"), (case.label, "label")):
            if not path.is_file():
                raise InputError(f"case {case.name}: {what} file not found: {path}")
    return cases


def _cases_from_csv(path: Path) -> list[Case]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"image", "label"} <= set(rows[0]):
        raise InputError(f"{path}: the CSV needs 'image' and 'label' columns, has {sorted(rows[0])}")
    root = path.parent
    return [Case(root / r["image"].strip(), root / r["label"].strip()) for r in rows if r.get("image")]


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _cases_from_folder(folder: Path) -> list[Case]:
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        cases = []
        for image in sorted(p for p in (folder / "images").iterdir() if _is_image_file(p)):
            matches = [p for p in (folder / "labels").iterdir() if _is_image_file(p) and _stem(p) == _stem(image)]
            if not matches:
                raise InputError(f"case {image.name}: no label file named {_stem(image)}.* in {folder / 'labels'}")
            cases.append(Case(image, matches[0]))
        return cases
    files = sorted(p for p in folder.iterdir() if _is_image_file(p))
    by_stem = {_stem(p): p for p in files}
    cases = []
    for path in files:
        stem = _stem(path)
        for marker in _LABEL_MARKERS:
            if stem.endswith(marker) and stem[: -len(marker)] + "_image" in by_stem:
                cases.append(Case(by_stem[stem[: -len(marker)] + "_image"], path))
            elif stem.endswith(marker) and stem[: -len(marker)] in by_stem:
                cases.append(Case(by_stem[stem[: -len(marker)]], path))
        if path.name.lower().endswith(".seg.nrrd") and not any(stem.endswith(m) for m in _LABEL_MARKERS):
            if stem in by_stem and by_stem[stem] != path:
                cases.append(Case(by_stem[stem], path))
    return cases


# ---- one case in model space ----------------------------------------------------------------------
@dataclass
class CaseArrays:
    name: str
    image: np.ndarray  # [D, H, W] float32, preset-normalised
    mask: np.ndarray  # [D, H, W] bool
    spacing: tuple[float, float, float]  # mm along (D, H, W)


def _cache_key(case: Case, target: str, preset: Preset) -> str:
    parts = [target, json.dumps(preset.to_dict(), sort_keys=True)]
    for path in (case.image, case.label):
        st = path.stat()
        parts += [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def load_case(case: Case, target: str, preset: Preset, cache_dir: str | os.PathLike | None = None) -> CaseArrays:
    """Image and target mask of a case in the preset's model space; errors name the case."""
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{case.name}-{_cache_key(case, target, preset)}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return CaseArrays(case.name, z["image"], z["mask"], tuple(float(s) for s in z["spacing"]))
    try:
        volume = Volume.from_file(case.image)
        labels = read_labels(case.label)
        if not labels.mask(None).any():
            raise InputError(f"the label file is empty (no labelled voxel, so no target {target!r})")
        mask = labels.mask(target)
    except SAMAdapt3DError as exc:
        raise InputError(f"case {case.name} ({case.image.name}, {case.label.name}): {exc}") from exc
    if not labels.grid.same_geometry(volume):
        raise InputError(f"case {case.name}: the label {case.label.name} does not lie on the image's grid "
                         f"(image size {volume.size_ijk}, spacing {tuple(np.round(volume.spacing, 4))}; label size "
                         f"{labels.grid.size_ijk}, spacing {tuple(np.round(labels.grid.spacing, 4))}); resample "
                         f"it onto the image first")
    if not mask.any():
        raise InputError(f"case {case.name}: the target {target!r} is empty in {case.label.name}")
    space = ModelSpace(volume, preset)
    arrays = CaseArrays(case.name, np.ascontiguousarray(space.image, np.float32), space.mask_to_model(mask),
                        tuple(float(s) for s in space.grid.spacing[::-1]))
    if not arrays.mask.any():
        raise InputError(f"case {case.name}: the target {target!r} vanishes when resampled to the model's spacing")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.partial.npz")
        np.savez(tmp, image=arrays.image, mask=arrays.mask, spacing=np.asarray(arrays.spacing))
        os.replace(tmp, cache)
    return arrays


def load_cases(cases: list[Case], target: str, preset: Preset, cache_dir=None) -> list[CaseArrays]:
    return [load_case(c, target, preset, cache_dir) for c in cases]


# ---- crops and augmentation -----------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    flip: bool = True
    rot90: bool = True  # in-plane (H, W) only: the slice axis stays the slice axis
    intensity_shift: float = 0.1  # +- this much of the crop's standard deviation
    intensity_scale: float = 0.1  # x (1 +- this)
    zoom: tuple[float, float] = (0.85, 1.15)

    @classmethod
    def none(cls) -> "Augment":
        return cls(flip=False, rot90=False, intensity_shift=0.0, intensity_scale=0.0, zoom=(1.0, 1.0))


def sample_crop(arrays: CaseArrays, size: tuple[int, int, int], rng: np.random.Generator, positive_fraction: float,
                augment: Augment, need_foreground: bool) -> tuple[np.ndarray, np.ndarray]:
    """One training crop (image float32, mask float32, both [D, H, W] of `size`).

    With probability `positive_fraction` the crop is centred on a random foreground voxel, else anywhere
    (`need_foreground`: retried until it holds some foreground, for models prompted by clicks inside it)."""
    zoom = float(rng.uniform(*augment.zoom)) if augment.zoom != (1.0, 1.0) else 1.0
    region = np.maximum(np.round(np.asarray(size) / zoom).astype(int), 1)
    fg = np.argwhere(arrays.mask)
    shape = np.asarray(arrays.image.shape)
    for attempt in range(20):
        if rng.random() < positive_fraction or attempt == 19:
            centre = fg[rng.integers(len(fg))]
        else:
            centre = np.array([rng.integers(s) for s in shape])
        start = centre - region // 2
        whole = region >= shape  # an axis that fits whole (LiteMedSAM's slices) is not shifted
        start[whole] = ((shape - region) // 2)[whole]
        mask = extract_crop(arrays.mask, start, region, False)
        if mask.any() or not need_foreground:
            break
    image = extract_crop(arrays.image, start, region, float(arrays.image.min()))
    return augment_crop(image, mask, size, rng, augment)


def augment_crop(image: np.ndarray, mask: np.ndarray, size, rng: np.random.Generator,
                 augment: Augment) -> tuple[np.ndarray, np.ndarray]:
    if tuple(image.shape) != tuple(size):
        img = F.interpolate(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None], size=tuple(size),
                            mode="trilinear", align_corners=False)
        msk = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=tuple(size), mode="nearest")
        image, mask = img[0, 0].numpy(), msk[0, 0].numpy() > 0.5
    if augment.flip:
        for axis in range(3):
            if rng.random() < 0.5:
                image, mask = np.flip(image, axis), np.flip(mask, axis)
    if augment.rot90 and size[1] == size[2]:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k, axes=(1, 2)), np.rot90(mask, k, axes=(1, 2))
    image = np.ascontiguousarray(image, np.float32)
    if augment.intensity_shift or augment.intensity_scale:
        std = float(image.std()) or 1.0
        image = (image * (1.0 + rng.uniform(-1, 1) * augment.intensity_scale)
                 + rng.uniform(-1, 1) * augment.intensity_shift * std).astype(np.float32)
    return image, np.ascontiguousarray(mask, np.float32)


class CropDataset(torch.utils.data.Dataset):
    """Item i of epoch e is a crop drawn with its own generator seeded by (seed, e, i): the same crop on every
    run, rank and worker, which makes resumed and distributed runs repeat exactly."""

    def __init__(self, cases: list[CaseArrays], size: tuple[int, int, int], samples: int, seed: int,
                 positive_fraction: float = 0.67, augment: Augment = Augment(), need_foreground: bool = True) -> None:
        self.cases = cases
        self.size = tuple(int(s) for s in size)
        self.samples = int(samples)
        self.seed = int(seed)
        self.epoch = 0
        self.positive_fraction = positive_fraction
        self.augment = augment
        self.need_foreground = need_foreground

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        case = self.cases[index % len(self.cases)]
        image, mask = sample_crop(case, self.size, rng, self.positive_fraction, self.augment, self.need_foreground)
        return (torch.from_numpy(image)[None], torch.from_numpy(mask)[None],
                torch.tensor(case.spacing, dtype=torch.float64))
