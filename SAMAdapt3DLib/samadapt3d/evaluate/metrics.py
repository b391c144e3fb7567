"""Metrics of the CVPR 2025 interactive protocol: Dice, normalised surface Dice (NSD) and the areas under the
Dice / NSD curves over the corrective clicks.

NSD at tolerance tau (mm): the surface of a mask is its border voxels (foreground voxels with a face
neighbour in the background, the image edge counting as background); NSD = (border voxels of the prediction
within tau of the truth's border + border voxels of the truth within tau of the prediction's border) / (all
border voxels of both), distances between voxel centres in mm. The challenge scores NSD 0 where Dice <= 0.2
(`NSD_MIN_DICE`). This is the voxel form of the surfel-based surface Dice of the challenge's reference code.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: the challenge's NSD tolerance
NSD_TOLERANCE_MM = 2.0
#: NSD is scored 0 when Dice is at most this (the challenge rule)
NSD_MIN_DICE = 0.2


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2 |P & T| / (|P| + |T|); 1.0 when both are empty."""
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def border(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one of their 6 face neighbours in the background (or outside the image)."""
    m = np.asarray(mask, bool)
    padded = np.pad(m, 1, constant_values=False)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return m & ~inner


def distance_to(mask: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) from every voxel centre to the nearest voxel of `mask` (non-empty), [k, j, i]."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(mask, np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_kji[::-1]))  # SimpleITK spacing is (i, j, k)
    # outside the object: distance to its nearest voxel centre; the object's own voxels: <= 0 -> clipped to 0
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0)


def nsd(prediction: np.ndarray, truth: np.ndarray, spacing_kji: Sequence[float],
        tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice (see the module docstring); 1.0 when both are empty, 0.0 when one is."""
    bp, bt = border(prediction), border(truth)
    n_p, n_t = int(bp.sum()), int(bt.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    near_p = int((distance_to(bt, spacing_kji)[bp] <= tolerance_mm).sum())
    near_t = int((distance_to(bp, spacing_kji)[bt] <= tolerance_mm).sum())
    return (near_p + near_t) / (n_p + n_t)


def scored_nsd(prediction: np.ndarray, truth: np.ndarray, spacing_kji: Sequence[float],
               dice_value: float | None = None) -> float:
    """NSD as the challenge scores it: 0 when Dice <= NSD_MIN_DICE."""
    d = dice(prediction, truth) if dice_value is None else dice_value
    return 0.0 if d <= NSD_MIN_DICE else nsd(prediction, truth, spacing_kji)


def curve_auc(values: Sequence[float]) -> float:
    """Trapezoid area under a curve sampled at unit steps (the 5 click steps: at most 4.0)."""
    v = np.asarray(values, dtype=np.float64)
    return float(((v[1:] + v[:-1]) / 2.0).sum()) if len(v) > 1 else 0.0
