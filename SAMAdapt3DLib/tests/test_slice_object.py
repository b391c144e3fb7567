"""How the slice strategy holds an object and cuts a mask, within boxes rather than whole slices / volumes
(issue 17's 3 GB on a 512 x 512 x 300 CT): `SliceObject` keeps each slice as the box of its nonzero pixels and
gives back exactly what was written; a negative click's detached part (`with_detached`) is worked out inside the
mask's bounding box and equals the same rule applied to the whole volume (written here with scipy)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from samadapt3d.engines.slice_objects import SliceObject
from samadapt3d.engines.slice_strategy import with_detached

SHAPE = (64, 80)


def soft_plane(rng: np.random.Generator) -> np.ndarray:
    """Probabilities in (0, 1) inside rows 10-29, cols 20-59, zero elsewhere (a box object's slice)."""
    p = np.zeros(SHAPE, np.float32)
    p[10:30, 20:60] = rng.uniform(0.01, 0.99, (20, 40)).astype(np.float32)
    return p


def test_a_box_object_gives_back_exactly_what_was_written_and_holds_only_its_box():
    rng = np.random.default_rng(0)
    obj = SliceObject(mask_only=False)
    planes = {3: soft_plane(rng), 7: soft_plane(rng)}
    for k, p in planes.items():
        obj[k] = p
    for k, p in planes.items():
        np.testing.assert_array_equal(obj[k], p)  # soft values under 0.5 too
        np.testing.assert_array_equal(obj.mask(k), p > 0.5)
    assert obj.nbytes == 2 * 20 * 40 * 4  # float32, the box only
    assert sorted(obj) == [3, 7] and len(obj) == 2


def test_a_click_object_keeps_only_its_mask_values():
    rng = np.random.default_rng(1)
    p = soft_plane(rng)
    obj = SliceObject(mask_only=True)
    obj[0] = p
    expected = np.where(p > 0.5, p, 0.0)
    np.testing.assert_array_equal(obj[0], expected)
    rows, cols = np.nonzero(p > 0.5)
    box_size = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert obj.nbytes == box_size * 4
    empty = SliceObject(mask_only=True)
    empty[1] = np.full(SHAPE, 0.4, np.float32)  # nothing above 0.5: nothing held
    assert empty.nbytes == 0 and not empty[1].any() and empty[1].shape == SHAPE


def test_a_read_slice_is_a_new_array_and_a_copy_is_independent():
    obj = SliceObject(mask_only=False)
    obj[0] = soft_plane(np.random.default_rng(2))
    before = obj[0]
    read = obj[0]
    read[:] = 1.0  # changing what was read changes nothing held
    np.testing.assert_array_equal(obj[0], before)
    other = obj.copy()
    other[0] = np.zeros(SHAPE, np.float32)
    del other[0]
    np.testing.assert_array_equal(obj[0], before)
    assert 0 in obj and 0 not in other


def whole_volume_detached(evidence: np.ndarray, mask: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """The rule over the whole volume: the components (26-connected) of mask minus cut that touch the cut
    (26-neighbourhood, slices 0 and n - 1 not neighbours) and hold no evidence join the cut."""
    rest = mask & ~cut
    labels, _ = ndimage.label(rest, np.ones((3, 3, 3), bool))
    touching = ndimage.binary_dilation(cut, np.ones((3, 3, 3), bool))
    out = cut.copy()
    for lab in np.unique(labels[touching & rest]):
        if lab and not (evidence & (labels == lab)).any():
            out |= labels == lab
    return out


def test_detached_parts_equal_the_whole_volume_rule():
    rng = np.random.default_rng(3)
    for trial in range(20):
        shape = (12, 30, 34)
        mask = ndimage.binary_opening(rng.random(shape) < 0.55, iterations=1)
        lo, hi = sorted(rng.integers(0, shape[0], 2))
        mask[:lo] = False
        mask[hi + 1:] = False  # a mask on some slices only, so its box is smaller than the volume
        if trial % 4 == 0:
            mask[0] |= rng.random(shape[1:]) < 0.5  # on the first and the last slice: they are not neighbours
            mask[-1] |= rng.random(shape[1:]) < 0.5
        if not mask.any():
            continue
        cut = np.zeros(shape, bool)
        ks, rs, cs = np.nonzero(mask)
        pick = rng.integers(len(ks))
        k = ks[pick]
        cut[k] = ndimage.binary_dilation(np.pad(np.ones((1, 1), bool), ((rs[pick], shape[1] - rs[pick] - 1),
                                                                        (cs[pick], shape[2] - cs[pick] - 1))),
                                         iterations=4) & mask[k]
        evidence = np.zeros(shape, bool)
        held = np.flatnonzero((mask & ~cut).ravel())
        if len(held):
            evidence.ravel()[rng.choice(held, min(3, len(held)), replace=False)] = True
        expected = whole_volume_detached(evidence, mask, cut)
        got = with_detached(cut.copy(), mask, evidence)
        np.testing.assert_array_equal(got, expected, err_msg=f"trial {trial}")


def test_a_cut_on_the_last_slice_leaves_a_piece_on_the_first_slice():
    mask = np.zeros((6, 10, 10), bool)
    mask[0, 2:5, 2:5] = True  # a piece on slice 0, no evidence in it
    mask[3:6, 2:5, 2:5] = True
    evidence = np.zeros_like(mask)
    evidence[3, 3, 3] = True
    cut = np.zeros_like(mask)
    cut[5] = mask[5]
    got = with_detached(cut.copy(), mask, evidence)
    np.testing.assert_array_equal(got, cut)  # slice 0 is no neighbour of slice 5: its piece stays
