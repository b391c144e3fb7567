"""Prompt helpers shared by every engine, so that all engines break ties the same way (docs/SESSION.md).

- Click rounding: a continuous click (d, h, w) — or (row, col) on a slice — lands on the voxel
  ``floor(x + 0.5)`` along every axis (halves round up, the same in every engine; numpy's `np.round`
  would round halves to even).
- Negative split: inside one connected object holding both a negative click and positive clicks, a
  voxel goes to the negative (is cut) only when it is strictly nearer to the negative than to every
  positive click; ties go to the positive. So a positive's voxel is never cut by a negative elsewhere (two
  clicks on one voxel: engines.compose lets the latest win).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def click_voxel(point: Sequence[float], shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The voxel (integer index per axis) a continuous click lands on: floor(x + 0.5), clipped to `shape`."""
    return tuple(int(v) for v in click_voxels(np.asarray(point, dtype=np.float64)[None], shape)[0])


def click_voxels(points, shape: Sequence[int] | None = None) -> np.ndarray:
    """`click_voxel` for an array of points [N, dims] -> int64 [N, dims]."""
    pts = np.asarray(points, dtype=np.float64)
    dims = pts.shape[-1] if pts.ndim > 1 else (len(shape) if shape is not None else 3)
    pts = pts.reshape(-1, dims)
    voxels = np.floor(pts + 0.5).astype(np.int64)
    if shape is not None:
        voxels = np.clip(voxels, 0, np.asarray(shape, dtype=np.int64) - 1)
    return voxels


def nearer_to_negative(coords: np.ndarray, negative: Sequence[float], positives) -> np.ndarray:
    """For voxel coordinates [M, dims]: True where the voxel is strictly nearer to `negative` than to every
    positive click (Euclidean, in voxels); ties go to the positive. No positives: every voxel is True."""
    coords = np.asarray(coords, dtype=np.float64)
    d_neg = ((coords - np.asarray(negative, dtype=np.float64)) ** 2).sum(axis=1)
    pos = np.asarray(positives, dtype=np.float64).reshape(-1, coords.shape[1])
    if len(pos) == 0:
        return np.ones(len(coords), dtype=bool)
    d_pos = np.min([((coords - p) ** 2).sum(axis=1) for p in pos], axis=0)
    return d_neg < d_pos


def label_components(mask: np.ndarray) -> np.ndarray:
    """Connected components of a 2D or 3D bool mask, full connectivity (8 / 26 neighbours); 0 = background."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True))


def negative_cut(mask: np.ndarray, negative_voxel: Sequence[int], positive_voxels,
                 labels: np.ndarray | None = None) -> np.ndarray:
    """The voxels a negative click removes from `mask` (bool, same shape): nothing when it lands outside the
    mask; else the connected object it lands in, or, when positive clicks lie in that object, only the
    object's voxels nearer to the negative than to each of them (`nearer_to_negative`)."""
    cut = np.zeros(mask.shape, dtype=bool)
    neg = tuple(int(v) for v in negative_voxel)
    if not mask[neg]:
        return cut
    labels = label_components(mask) if labels is None else labels
    label = labels[neg]
    region = labels == label
    inside = [tuple(int(v) for v in p) for p in np.asarray(positive_voxels).reshape(-1, mask.ndim)
              if labels[tuple(int(v) for v in p)] == label]
    if not inside:
        return region
    coords = np.argwhere(region)
    drop = coords[nearer_to_negative(coords, neg, inside)]
    cut[tuple(drop.T)] = True
    return cut
