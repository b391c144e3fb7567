"""The similar-intensity region of a click (engines/slice_region.py): the object the click's intensity outlines,
holes (vessels) filled, cut from a neighbour joined by a thin duct; and the leak measure of a uniform object.
Synthetic slices only (no model): expected masks are drawn here, not computed by the code under test."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from samadapt3d.engines.slice_region import similar_filled, similar_region


def _disk(shape, centre, radius):
    rr, cc = np.ogrid[:shape[0], :shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius ** 2


def _two_organs(shape=(128, 128), neck_width=2, vessel=True):
    """Two dark disks (lungs) in bright tissue, joined by a dark duct `neck_width` px wide; a bright vessel
    inside the left one."""
    img = np.full(shape, 0.5, np.float32)
    left, right = _disk(shape, (64, 36), 22), _disk(shape, (64, 92), 22)
    img[left | right] = 0.08
    img[63 - neck_width // 2:63 - neck_width // 2 + neck_width, 36:92] = 0.08
    if vessel:
        img[_disk(shape, (60, 30), 5)] = 0.5  # 5 % of the organ
    return img, left, right


@settings(max_examples=25, deadline=None)
@given(dr=st.integers(-12, 12), dc=st.integers(-12, 12), neck=st.integers(1, 4), flip=st.booleans())
def test_region_is_the_clicked_organ_without_its_neighbour(dr, dc, neck, flip):
    img, left, right = _two_organs(neck_width=neck)
    if flip:  # the same scene mirrored: the rule has no preferred side
        img, left, right = img[:, ::-1].copy(), left[:, ::-1].copy(), right[:, ::-1].copy()
    r, c = 64 + dr, (128 - 1 - (36 + dc)) if flip else 36 + dc
    if img[r, c] > 0.3:  # the click fell on the vessel: its organ's level is what is asked for below
        return
    region = similar_region(img, r, c, 0.08, 0.1, neck=4)
    assert (region & left).sum() >= 0.97 * left.sum()  # the whole organ, the vessel filled
    assert not (region & right).any()  # not the neighbour across the duct
    assert region[r, c]


def test_region_is_empty_when_the_click_is_not_at_the_level():
    img, _, _ = _two_organs()
    assert not similar_region(img, 64, 36, 0.5, 0.1, neck=4).any()


def test_similar_filled_does_not_fill_the_body_enclosed_by_outside_air():
    """Air around a body touches the image's border: its 'hole' (the body) is not filled, so a mask that leaked
    from a lung into the body wall reads as leaking; the lung's own vessel is filled."""
    img = np.zeros((96, 96), np.float32)  # outside air
    body = _disk((96, 96), (48, 48), 40)
    img[body] = 0.5
    lung = _disk((96, 96), (48, 40), 18)
    img[lung] = 0.05
    img[_disk((96, 96), (48, 40), 4)] = 0.5  # a vessel, 5 % of the lung
    leak = lung | (_disk((96, 96), (48, 62), 14) & body) | _disk((96, 96), (48, 90), 6)  # through the wall
    assert (leak & ~body).any()  # the leak reaches the outside air
    filled = similar_filled(img, leak, 0.05, 0.1)
    assert filled[lung].mean() >= 0.98  # the vessel filled (the 3 x 3 median may move the rim by a pixel)
    assert filled[body & ~lung].mean() <= 0.01  # the body around the lung is not
