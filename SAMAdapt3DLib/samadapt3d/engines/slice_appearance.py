"""The appearance refinement of a slice object (engines/slice_objects.py): the 2D model's boundary, re-decided by
intensity in a thin band around it.

A box-trained 2D model draws boundaries that are off by a pixel or two, and at a CT's typical resolution that is
a large part of a small or thin structure: measured on the slicerio CT with the true box on every slice, the
model's masks reach Dice 0.72-0.90 (spine, lungs). The object itself says what it looks like: the intensities of
its core (the mask eroded by the band's width) against those of the ring just outside it. Each pixel of the band
goes to the side whose intensity histogram is likelier there; the core stays in, all beyond the band stays out.
The refinement is used only where the two histograms tell the object apart on the object's own pixels (the mean
of its core's fraction judged "inside" and its far ring's judged "outside"): an object that looks like its
surroundings is left as the model drew it.

Images are min-max normalised slices ([0, 1], `SliceData.image01`); masks are 2D bool arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .prompts import label_components
from .slice_ops import bbox_2d, clip_box, dilate, erode
from .slice_region import fill_holes

#: histogram bins over [0, 1] (a CT window of 2048 HU: 32 HU a bin)
BINS = 64
#: a histogram's smoothing kernel over neighbouring bins, and the floor that keeps empty bins comparable
SMOOTHING = (0.25, 0.5, 0.25)
FLOOR = 1e-3
#: the ring that checks the separation reaches this many band widths beyond the mask
FAR_RING = 2


@dataclass(frozen=True)
class AppearanceCheck:
    """How well the object's histograms separate it: the fraction of its core judged inside, of its far ring
    judged outside; `used` when their mean (the balanced accuracy) reaches the config's `appearance_separation`."""

    core_inside: float
    far_outside: float
    used: bool


def _histogram(parts: Iterable[np.ndarray]) -> np.ndarray:
    """The smoothed, normalised histogram of all the values in `parts` (counted part by part: the same counts as
    of their concatenation, without it: a lung's ring holds tens of millions of values)."""
    counts = sum(np.bincount(_bins(values), minlength=BINS) for values in parts).astype(np.float64)
    counts = np.convolve(counts, SMOOTHING, mode="same") + FLOOR
    return counts / counts.sum()


def _fraction(parts: Iterable[np.ndarray]) -> tuple[int, int]:
    """(True values, values) over bool arrays."""
    true = total = 0
    for values in parts:
        true += int(np.count_nonzero(values))
        total += int(values.size)
    return true, total


def _bins(values: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(values) * BINS).astype(np.int64), 0, BINS - 1)


def refine_by_appearance(images: Mapping[int, np.ndarray], masks: Mapping[int, np.ndarray], width: int,
                         separation: float) -> tuple[dict[int, np.ndarray], AppearanceCheck]:
    """The object's masks (slice index -> bool [rows, cols]) with the pixels of the band within `width` px of each
    boundary re-decided by intensity; `images`: the same slices' normalised images (not smoothed: a median filter
    would round the corners of small objects off; the histograms' smoothing takes the noise), each read once.
    Returns the masks (unchanged when the check fails) and the check."""
    refined, check = refined_windows(images, masks, width, separation)
    out = dict(masks)
    for k, (window, inside) in refined.items():
        out[k] = np.zeros(masks[k].shape, bool)
        out[k][window] = inside
    return out, check


def refined_windows(images: Mapping[int, np.ndarray], masks: Mapping[int, np.ndarray], width: int,
                    separation: float) -> tuple[dict[int, tuple[tuple[slice, slice], np.ndarray]], AppearanceCheck]:
    """`refine_by_appearance`'s result as windows: slice index -> (window, the refined mask inside it; outside it
    the mask is empty), for the slices the check lets it change (none when it fails). Each mask is read once.

    Each slice is worked on around its mask: everything the refinement looks at lies within the far ring, so a
    window one pixel wider than it gives the same result as the whole slice (a lung's object holds a few hundred
    512 x 512 slices; their full-size intermediates were the largest memory of a click)."""
    window, image, mask, core, band, ring, far_ring = {}, {}, {}, {}, {}, {}, {}
    for k in masks:
        full = masks[k]
        if not full.any():
            continue
        window[k] = _window(full, FAR_RING * width + 1)
        m = mask[k] = np.array(full[window[k]])
        image[k] = np.array(images[k][window[k]])
        eroded = erode(m, width)
        core[k] = eroded if eroded.any() else m  # a structure thinner than the band: all of it is its core
        grown = dilate(m, width)
        band[k] = grown & ~core[k]
        ring[k] = grown & ~m
        far_ring[k] = dilate(m, FAR_RING * width) & ~grown
    slices = list(window)
    if not slices:
        return {}, AppearanceCheck(0.0, 0.0, False)
    inside = _histogram(image[k][core[k]] for k in slices)
    outside = _histogram(image[k][ring[k] | far_ring[k]] for k in slices)
    likely = {k: inside[_bins(image[k])] > outside[_bins(image[k])] for k in slices}
    true, total = _fraction(likely[k][core[k]] for k in slices)
    core_in = true / total
    true, total = _fraction(likely[k][far_ring[k]] for k in slices)
    far_out = 1.0 - true / total if total else 0.0
    check = AppearanceCheck(core_in, far_out, (core_in + far_out) / 2 >= separation)
    if not check.used:
        return {}, check
    out = {}
    for k in slices:
        refined = core[k] | (band[k] & likely[k])
        labels = label_components(refined)
        keep = np.unique(labels[core[k]])
        refined = np.isin(labels, keep[keep > 0])  # band pieces cut off from the object's core are not the object
        out[k] = window[k], refined | (mask[k] & fill_holes(refined))  # what it encloses of the model's mask stays
    return out, check


def _window(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The (non-empty) mask's bounding box widened by `margin` px on each side, within the slice."""
    r0, c0, r1, c1 = bbox_2d(mask)
    r0, c0, r1, c1 = clip_box((r0 - margin, c0 - margin, r1 + margin, c1 + margin), mask.shape)
    return slice(r0, r1 + 1), slice(c0, c1 + 1)
