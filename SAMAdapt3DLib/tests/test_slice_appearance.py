"""The appearance refinement of a slice object (engines/slice_appearance.py): the band around a model's boundary
re-decided by intensity, used only where the object's histograms tell it from its surroundings."""
from __future__ import annotations

import numpy as np

from samadapt3d.engines.slice_appearance import refine_by_appearance

SEPARATION = 0.75


def _disc(shape, centre, radius):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius ** 2


def _noisy(truth: np.ndarray, inside: float, outside: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.where(truth, inside, outside) + rng.normal(0.0, 0.02, truth.shape)
    return np.clip(img, 0.0, 1.0)


def test_a_boundary_one_pixel_off_returns_to_the_object():
    shape = (48, 48)
    truth = {k: _disc(shape, (24, 24), 10 + k) for k in range(3)}
    images = {k: _noisy(truth[k], 0.8, 0.3, k) for k in truth}
    too_big = {k: _disc(shape, (24, 24), 12 + k) for k in truth}      # the model took in a ring of background
    too_small = {k: _disc(shape, (24, 24), 9 + k) for k in truth}     # ... or missed one
    for masks in (too_big, too_small):
        refined, check = refine_by_appearance(images, masks, 2, SEPARATION)
        assert check.used and check.core_inside > 0.95 and check.far_outside > 0.95
        for k in truth:
            assert (refined[k] != truth[k]).sum() <= 2, k


def test_an_object_like_its_surroundings_is_left_as_drawn():
    shape = (48, 48)
    masks = {0: _disc(shape, (24, 24), 10)}
    images = {0: np.random.default_rng(0).uniform(0.0, 1.0, shape)}  # no intensity tells inside from outside
    refined, check = refine_by_appearance(images, masks, 2, SEPARATION)
    assert not check.used
    np.testing.assert_array_equal(refined[0], masks[0])


def test_band_pieces_cut_off_from_the_core_are_dropped_and_enclosed_mask_stays():
    shape = (48, 48)
    truth = _disc(shape, (24, 24), 10)
    img = _noisy(truth, 0.8, 0.3, 1)
    img[24, 35] = 0.3
    img[24, 36] = 0.8  # a bright speck in the band, not touching the object
    vessel = _disc(shape, (24, 24), 2)
    img[vessel] = 0.3  # a dark vessel deep inside: enclosed by the object, so it stays in the mask
    refined, check = refine_by_appearance({0: img}, {0: truth.copy()}, 2, SEPARATION)
    assert check.used
    assert refined[0][vessel].all()
    assert not refined[0][24, 36]


def test_pixels_beyond_the_band_are_never_changed():
    shape = (48, 48)
    truth = _disc(shape, (24, 24), 12)
    img = _noisy(truth, 0.8, 0.3, 2)
    masks = {0: _disc(shape, (24, 24), 9)}  # too small by more than the band: only the band (2 px) may grow
    refined, check = refine_by_appearance({0: img}, masks, 2, SEPARATION)
    assert check.used
    assert not (refined[0] & ~_disc(shape, (24, 24), 9 + 2 * np.sqrt(2) + 0.01)).any()  # a square 2-px dilation
    assert refined[0][_disc(shape, (24, 24), 11)].all()


def _reference(images, masks, width, separation):
    """The refinement written out on whole slices (no windows): the oracle for the windowed one."""
    import SimpleITK as sitk
    from scipy import ndimage

    def dilate(m, r):  # square dilation, beyond the border outside
        return ndimage.binary_dilation(m, np.ones((2 * r + 1, 2 * r + 1), bool)) if r > 0 else m.copy()

    def erode(m, r):  # beyond the border inside (the complement's dilation)
        return ~dilate(~m, r)

    def hist(values):
        counts = np.bincount(np.clip((values * 64).astype(np.int64), 0, 63), minlength=64).astype(np.float64)
        counts = np.convolve(counts, (0.25, 0.5, 0.25), mode="same") + 1e-3
        return counts / counts.sum()

    def bins(img):
        return np.clip((img * 64).astype(np.int64), 0, 63)

    slices = [k for k, m in masks.items() if m.any()]
    core, band, ring, far = {}, {}, {}, {}
    for k in slices:
        m = masks[k]
        e = erode(m, width)
        core[k] = e if e.any() else m
        grown = dilate(m, width)
        band[k], ring[k], far[k] = grown & ~core[k], grown & ~m, dilate(m, 2 * width) & ~grown
    inside = hist(np.concatenate([images[k][core[k]] for k in slices]))
    outside = hist(np.concatenate([images[k][ring[k] | far[k]] for k in slices]))
    likely = {k: inside[bins(images[k])] > outside[bins(images[k])] for k in slices}
    core_in = float(np.mean(np.concatenate([likely[k][core[k]] for k in slices])))
    far_values = np.concatenate([likely[k][far[k]] for k in slices])
    far_out = 1.0 - float(np.mean(far_values)) if far_values.size else 0.0
    used = (core_in + far_out) / 2 >= separation
    out = dict(masks)
    if used:
        for k in slices:
            refined = core[k] | (band[k] & likely[k])
            labels, _ = ndimage.label(refined, np.ones((3, 3), bool))
            keep = np.unique(labels[core[k]])
            refined = np.isin(labels, keep[keep > 0])
            filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(refined.astype(np.uint8)),
                                                                fullyConnected=True, foregroundValue=1)) > 0
            out[k] = refined | (masks[k] & filled)
    return out, core_in, far_out, used


def test_the_windowed_refinement_equals_the_whole_slice_one():
    """Objects anywhere (touching the slice's border, several pieces, thin), any band width: each slice worked
    on around its mask gives the same masks and the same check as on the whole slice."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for trial in range(16):
        shape = (int(rng.integers(30, 80)), int(rng.integers(30, 80)))
        width = int(rng.integers(1, 5))
        images, masks = {}, {}
        for k in range(int(rng.integers(1, 4))):
            truth = np.zeros(shape, bool)
            for _ in range(int(rng.integers(1, 4))):
                centre = (int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1])))
                truth |= _disc(shape, centre, int(rng.integers(1, 8)))
            images[k] = _noisy(truth, 0.7, 0.3, seed=trial * 10 + k).astype(np.float32)
            edge = ndimage.binary_dilation(truth, iterations=2) & ~ndimage.binary_erosion(truth, iterations=2)
            drawn = truth ^ (edge & (rng.random(shape) < 0.3))  # the model's mask: off here and there at its edge
            masks[k] = drawn
        refined, check = refine_by_appearance(images, {k: m.copy() for k, m in masks.items()}, width, SEPARATION)
        out, core_in, far_out, used = _reference(images, masks, width, SEPARATION)
        assert (check.core_inside, check.far_outside, check.used) == (core_in, far_out, used)
        for k in masks:
            assert np.array_equal(refined[k], out[k]), (trial, k)
