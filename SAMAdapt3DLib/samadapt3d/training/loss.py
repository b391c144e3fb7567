"""DiceCE loss (soft Dice + binary cross-entropy on logits) and the validation metrics Dice and NSD."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 smooth: float = 1e-5) -> torch.Tensor:
    """Mean over the batch of soft Dice loss + BCE, for binary logits and targets of the same shape [B, ...]."""
    logits = logits.float()
    target = target.float()
    ce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.flatten(1)
    inter = (prob * tgt).sum(1)
    dice = (2 * inter + smooth) / (prob.sum(1) + tgt.sum(1) + smooth)
    return dice_weight * (1 - dice).mean() + ce_weight * ce


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of a 3D mask with a 6-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def _distance_to(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # (D, H, W) -> ITK (x, y, z)
    # distance to the nearest voxel of the set (0 on it)
    dist = sitk.DanielssonDistanceMap(image, inputIsBinary=True, squaredDistance=False, useImageSpacing=True)
    return sitk.GetArrayFromImage(dist)


def nsd_score(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice: the share of both surfaces lying within `tolerance_mm` of the other surface."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    sp, st = _surface(pred), _surface(truth)
    to_truth, to_pred = _distance_to(st, spacing), _distance_to(sp, spacing)
    close = (to_truth[sp] <= tolerance_mm).sum() + (to_pred[st] <= tolerance_mm).sum()
    return float(close / (sp.sum() + st.sum()))
