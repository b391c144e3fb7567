"""Intensity regions of one slice for the slice strategy (engines/slice_objects.py): the connected pixels of
similar intensity around a click, or near the previous slice's mask, as a box the model can be prompted with.

Images are a slice min-max normalised to [0, 1] (`SliceData.image01`); masks are 2D bool arrays."""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np

from .prompts import label_components
from .slice_ops import bbox_2d, dilate, erode

#: the smoothing before thresholding: a 3 x 3 median (noise and one-pixel specks do not split a region)
MEDIAN_RADIUS = 1
#: closing radius (px) before the holes are filled: small notches (vessels at a border) do not split a region
CLOSING_RADIUS = 2


#: smoothed slices kept (a click's walk asks for the same slice's several times: stops, retries, continuation)
SMOOTHED_MEMO = 64
_smoothed_memo: OrderedDict[int, tuple[weakref.ref, np.ndarray]] = OrderedDict()
_smoothed_lock = threading.Lock()


def smoothed(img01: np.ndarray) -> np.ndarray:
    """The slice after a 3 x 3 median (read-only; the cache's slices are never modified, so it is kept for each
    slice array while that array lives)."""
    key = id(img01)
    with _smoothed_lock:
        hit = _smoothed_memo.get(key)
        if hit is not None and hit[0]() is img01:
            _smoothed_memo.move_to_end(key)
            return hit[1]
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(img01, np.float32))
    out = sitk.GetArrayFromImage(sitk.Median(image, [MEDIAN_RADIUS] * 2))
    out.flags.writeable = False
    with _smoothed_lock:
        _smoothed_memo[key] = (weakref.ref(img01), out)
        while len(_smoothed_memo) > SMOOTHED_MEMO:
            _smoothed_memo.popitem(last=False)
    return out


def level_at(img01: np.ndarray, r: int, c: int, radius: int) -> float:
    """The median intensity of the (2 radius + 1)^2 pixels around (r, c): a click on a vessel reads its organ."""
    return float(np.median(img01[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1]))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes (background not connected to the image's border) filled. Filled on the mask's
    bounding box with one pixel of background around it, which gives the same holes: a lung's box is a fraction
    of a 512 x 512 slice, and a click's walk fills a thousand masks."""
    import SimpleITK as sitk

    mask = np.asarray(mask, bool)
    out = np.zeros(mask.shape, bool)
    box = bbox_2d(mask)
    if box is None:
        return out
    r0, c0, r1, c1 = box[0], box[1], box[2] + 1, box[3] + 1
    crop = np.pad(mask[r0:r1, c0:c1], 1).astype(np.uint8)
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(crop), fullyConnected=True,
                                                        foregroundValue=1))
    out[r0:r1, c0:c1] = filled[1:-1, 1:-1] > 0
    return out


def _closed(mask: np.ndarray) -> np.ndarray:
    """Holes filled, then notches closed (after the neck split: a closing before it could bridge two organs)."""
    return fill_holes(erode(dilate(fill_holes(mask), CLOSING_RADIUS), CLOSING_RADIUS) | mask)


def _split_necks(region: np.ndarray, r: int, c: int, neck: int) -> np.ndarray:
    """The part of `region` around (r, c) once necks narrower than 2 `neck` px are cut (two organs joined by a
    thin duct); the region itself when it is thinner than that everywhere."""
    if neck <= 0:
        return region
    core = erode(region, neck)
    if not core.any():
        return region
    labels = label_components(core)
    sizes = np.bincount(labels.ravel())
    big = sizes >= (2 * neck + 1) ** 2  # a core piece smaller than one neck-wide square is a speck
    big[0] = False
    if not big.any():
        return region
    # the click's piece: the first big core piece reached from the click inside the region (geodesic nearest)
    reached = np.zeros(region.shape, bool)
    reached[r, c] = True
    for _ in range(region.size):
        hit = np.unique(labels[reached & big[labels]])
        if hit.size:
            break
        grown = dilate(reached, 1) & region
        if grown.sum() == reached.sum():
            return region
        reached = grown
    keep = max(hit, key=lambda lab: int(sizes[lab]))
    return dilate(labels == keep, neck) & region


def similar_region(img01: np.ndarray, r: int, c: int, level: float, tolerance: float, neck: int) -> np.ndarray:
    """The connected pixels around (r, c) whose smoothed intensity is within `tolerance` of `level`, holes filled,
    split at necks (see `_split_necks`); empty when the click's own pixel is not similar."""
    similar = np.abs(smoothed(img01) - level) < tolerance
    if not similar[r, c]:
        return np.zeros(img01.shape, bool)
    labels = label_components(similar)
    return _closed(_split_necks(fill_holes(labels == labels[r, c]), r, c, neck))


def region_near(img01: np.ndarray, near: np.ndarray, level: float, tolerance: float) -> np.ndarray:
    """The similar-intensity regions (holes filled) that overlap `near` (the previous slice's mask, grown)."""
    similar = np.abs(smoothed(img01) - level) < tolerance
    labels = label_components(similar & dilate(near, CLOSING_RADIUS))
    if not labels.any():
        return np.zeros(img01.shape, bool)
    return _closed(labels > 0)


def similar_filled(img01: np.ndarray, mask: np.ndarray, level: float, tolerance: float) -> np.ndarray:
    """The similar-intensity regions that `mask` touches, each with its holes filled unless it reaches the image's
    border (the air around a body would fill the body): what an object of uniform intensity may cover."""
    labels = label_components(np.abs(smoothed(img01) - level) < tolerance)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    out = np.zeros(img01.shape, bool)
    for lab in np.unique(labels[mask]):
        if lab:
            part = labels == lab
            out |= part if lab in border else fill_holes(part)
    return out
