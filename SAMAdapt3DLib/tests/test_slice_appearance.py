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
