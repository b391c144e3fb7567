"""Preprocessing presets of the released 3DSAM-adapter models (numbers from the published data code).

Orientation. The published loader reads the NIfTI voxel array without reorienting it, transposes
it to (D, H, W) with D the axial slice axis (MSD/LiTS files are stored (i, j, k) = (x, y, slice),
read as [k, j, i]; KiTS19 files are stored slice-first and read as-is), resamples to 1 mm and
crops 128³. For CT converted from DICOM, i and j run toward the patient's left and posterior and
k toward superior, i.e. ITK code "LPS" with [D, H, W] = [k, j, i]: D axial (inferior->superior),
H anterior->posterior (rows), W right->left (columns) -- the usual radiological slice display.
Training flipped every axis and rotated in-plane by 90° at random, so the networks depend on
which axis is axial (D), not on the sign of each axis; "LPS" therefore also serves KiTS.
"""
from __future__ import annotations

from pathlib import Path

from ...preprocess import Preset

ORIENTATION = "LPS"


def _ct(name: str, low: float, high: float, mean: float, std: float) -> Preset:
    return Preset(name=name, spacing=(1.0, 1.0, 1.0), orientation=ORIENTATION, clip=(low, high),
                  normalization="zscore", mean=mean, std=std)


PRESETS: dict[str, Preset] = {
    "kits": _ct("3dsam_adapter_kits", -54.0, 247.0, 59.53867, 55.457336),
    "lits": _ct("3dsam_adapter_lits", -48.0, 163.0, 60.057533, 40.198017),
    "msd_pancreas": _ct("3dsam_adapter_msd_pancreas", -39.0, 204.0, 68.45214, 63.422806),
    "msd_colon": _ct("3dsam_adapter_msd_colon", -57.0, 175.0, 65.175035, 32.651197),
}

#: For files whose task is unknown: soft-tissue window with the mean/std of the four tasks' average.
GENERIC_CT = _ct("3dsam_adapter_ct", -50.0, 200.0, 63.3, 47.9)

#: words in a file name -> preset key (the released files live in folders named by task)
_NAME_HINTS = (("kits", "kits"), ("lits", "lits"), ("pancreas", "msd_pancreas"), ("colon", "msd_colon"))


def preset_for_path(path: str | Path | None) -> Preset:
    """The preset named by a checkpoint's file name or its folder's name, else GENERIC_CT.

    (The published training writes `<snapshot>/<task>/last.pth.tar`, so the task is often the folder.)"""
    if path is None:
        return GENERIC_CT
    text = f"{Path(path).parent.name}/{Path(path).name}".lower()
    for word, key in _NAME_HINTS:
        if word in text:
            return PRESETS[key]
    return GENERIC_CT
