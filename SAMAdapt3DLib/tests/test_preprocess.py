"""Model space: exact reorientation (checked against SimpleITK's DICOMOrient), resampling, crops."""
import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from samadapt3d.preprocess import (AxisMap, ModelSpace, Preset, closest_orientation, extract_crop, paste_max,
                                   parse_orientation)
from samadapt3d.volume import Volume

PERMS = list(itertools.permutations(range(3)))
CODES = ["".join(c) for c in itertools.product("LR", "PA", "SI")]
CODES = sorted({"".join(p) for code in CODES for p in itertools.permutations(code)})


def signed_permutation(perm, signs):
    m = np.zeros((3, 3))
    for c, (p, s) in enumerate(zip(perm, signs)):
        m[p, c] = s
    return m


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PERMS), st.tuples(*[st.sampled_from([-1, 1])] * 3), st.sampled_from(CODES),
       st.tuples(*[st.integers(2, 6)] * 3))
def test_axis_map_matches_dicom_orient(perm, signs, code, shape):
    arr = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    vol = Volume(arr, (0.5, 1.0, 2.0), (5, -3, 7), signed_permutation(perm, signs))
    mine = AxisMap.to_orientation(vol, code)
    out = mine.forward_volume(vol)
    ref = Volume.from_sitk(sitk.DICOMOrient(vol.to_sitk(), code))
    assert np.array_equal(out.array, ref.array)
    assert out.same_geometry(ref, tol=1e-9)
    assert closest_orientation(out.direction) == code
    assert np.array_equal(mine.inverse_array(out.array), arr)
    pts = np.array([[0, 0, 0], [1.5, 0.25, 1]])
    assert np.allclose(mine.inverse_index(mine.forward_index(pts)), pts)
    # the same voxel is the same physical point in both
    assert np.allclose(out.index_to_physical(mine.forward_index(pts)), vol.index_to_physical(pts))


def test_parse_orientation_rejects_bad_codes():
    assert parse_orientation("RAS") == ((0, -1.0), (1, -1.0), (2, 1.0))
    for bad in ("LP", "LLS", "XYZ"):
        with pytest.raises(ValueError):
            parse_orientation(bad)


def test_oblique_direction_maps_to_nearest_axes():
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[0, c, -s], [0, s, c], [-1, 0, 0]])  # i -> I, j ~ L, k ~ P
    assert closest_orientation(direction) == "ILP"
    vol = Volume(np.zeros((2, 3, 4)), direction=direction)
    out = AxisMap.to_orientation(vol, "LPS").forward_volume(vol)
    assert np.allclose(out.index_to_physical([1, 1, 1]), vol.index_to_physical(
        AxisMap.to_orientation(vol, "LPS").inverse_index([1, 1, 1])[0]))


def test_model_space_without_resampling_is_exact():
    rng = np.random.default_rng(2)
    arr = rng.normal(size=(5, 6, 7)).astype(np.float32)
    vol = Volume(arr, (1, 1, 1), (0, 0, 0), signed_permutation((2, 0, 1), (1, -1, -1)))
    space = ModelSpace(vol, Preset("t", spacing=(1, 1, 1), orientation="LPS", normalization="none"))
    assert not space.resampled
    assert np.array_equal(space.from_model(space.to_model(arr)), arr)
    ijk = np.array([[1, 2, 3], [6, 0, 4]])
    dhw = space.index_to_model(ijk)
    for (i, j, k), (d, h, w) in zip(ijk, dhw.astype(int)):
        assert space.image[d, h, w] == arr[k, j, i]
    assert np.allclose(space.model_to_index(dhw), ijk)
    # view axes follow the permutation: an ijk axis and its model axis have the same length
    for axis in range(3):
        assert vol.size_ijk[axis] == space.shape[space.axis_to_model(axis)]


def test_a_model_mask_comes_back_on_the_same_voxels():
    """mask_from_model (the previews' path, no float copy): each model voxel's value lands on the image voxel that
    index_to_model maps to it, on a permuted and flipped grid; resampled, it is the probability's threshold."""
    rng = np.random.default_rng(3)
    arr = rng.normal(size=(5, 6, 7)).astype(np.float32)
    vol = Volume(arr, (1, 1, 1), (0, 0, 0), signed_permutation((2, 0, 1), (1, -1, -1)))
    space = ModelSpace(vol, Preset("t", spacing=(1, 1, 1), orientation="LPS", normalization="none"))
    model_mask = rng.random(space.shape) > 0.5
    back = space.mask_from_model(model_mask)
    assert back.dtype == np.bool_ and back.shape == arr.shape
    for i, j, k in np.ndindex(*vol.size_ijk):
        d, h, w = space.index_to_model([[i, j, k]])[0].round().astype(int)
        assert back[k, j, i] == model_mask[d, h, w]
    coarse = Volume(np.zeros((10, 40, 40), np.float32), (0.5, 0.5, 2.0))
    resampled = ModelSpace(coarse, Preset("t", spacing=(1.0, 1.0, 1.0), orientation="LPS", normalization="none"))
    blob = np.zeros(resampled.shape, bool)
    blob[5:15, 4:12, 6:16] = True
    assert np.array_equal(resampled.mask_from_model(blob), resampled.from_model(blob.astype(np.float32)) > 0.5)


def test_model_space_resampling_covers_the_same_extent_and_round_trips():
    arr = np.zeros((10, 40, 40), np.float32)
    arr[3:7, 10:30, 12:28] = 1.0
    vol = Volume(arr, (0.5, 0.5, 2.0), (10, 20, 30))
    space = ModelSpace(vol, Preset("t", spacing=(1.0, 1.0, 1.0), orientation="LPS", normalization="none"))
    assert space.resampled and space.shape == (20, 20, 20)
    assert np.allclose(space.grid.spacing, 1.0)
    back = space.from_model(space.image) > 0.5
    assert back.shape == arr.shape
    dice = 2 * (back & (arr > 0)).sum() / (back.sum() + (arr > 0).sum())
    assert dice > 0.9
    # physical points land on the same place
    p = np.array([[20, 20, 5]])
    assert np.allclose(space.grid.index_to_physical(space.index_to_model(p)[:, ::-1]), vol.index_to_physical(p))


def test_normalisation_is_applied_in_model_space():
    arr = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    space = ModelSpace(Volume(arr), Preset("t", spacing=None, orientation=None, clip=(5, 20), normalization="minmax"))
    assert space.image.dtype == np.float32
    assert space.image.min() == 0.0 and space.image.max() == 1.0


def test_extract_crop_pads_at_borders_and_paste_max_clips():
    arr = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    crop = extract_crop(arr, (-2, 3, 4), (4, 4, 4), pad_value=-1)
    assert crop.shape == (4, 4, 4)
    assert np.all(crop[:2] == -1) and np.all(crop[:, 3:] == -1) and np.all(crop[:, :, 3:] == -1)
    assert np.array_equal(crop[2:, :3, :3], arr[0:2, 3:6, 4:7])
    assert np.all(extract_crop(arr, (10, 10, 10), (2, 2, 2), 7) == 7)
    target = np.zeros((5, 6, 7), np.float32)
    paste_max(target, np.ones((4, 4, 4), np.float32), (-2, 4, 5))
    assert target.sum() == 2 * 2 * 2 and target[0:2, 4:6, 5:7].all()


def test_resampling_back_only_near_the_object_equals_the_full_resampling():
    from samadapt3d.preprocess import resample_array

    rng = np.random.default_rng(5)
    vol = Volume(np.zeros((20, 30, 26), np.float32), (0.7, 0.9, 2.2), (1, 2, 3), np.diag([1, -1, -1]))
    space = ModelSpace(vol, Preset("t", spacing=(1.0, 1.0, 1.0), orientation="RAS", normalization="none"))
    prob = np.zeros(space.shape, np.float32)
    prob[10:20, 5:9, 12:15] = rng.uniform(0.2, 1.0, (10, 4, 3))
    full = space.axis_map.inverse_array(resample_array(prob, space.grid, space.oriented, linear=True))
    assert np.allclose(space.from_model(prob), full, atol=1e-6)
    assert not space.from_model(np.zeros(space.shape, np.float32)).any()


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(PERMS), st.tuples(*[st.sampled_from([-1, 1])] * 3), st.sampled_from(CODES),
       st.tuples(*[st.integers(1, 6)] * 3), st.integers(0, 2**32 - 1), st.floats(0.0, 0.6))
def test_a_boxed_probability_comes_back_on_the_same_voxels(perm, signs, code, shape, seed, density):
    """boxed_from_model (the session's path, only the box re-oriented) holds what from_model gives, in the
    tightest box, on every axis map; voxel by voxel against index_to_model."""
    rng = np.random.default_rng(seed)
    vol = Volume(np.zeros(shape, np.float32), (1, 1, 1), (0, 0, 0), signed_permutation(perm, signs))
    space = ModelSpace(vol, Preset("t", spacing=None, orientation=code, normalization="none"))
    assert not space.resampled
    prob = ((rng.random(space.shape) < density) * rng.uniform(0.1, 1.0, space.shape)).astype(np.float32)
    boxed = space.boxed_from_model(prob)
    back = boxed.full()
    assert back.shape == vol.array.shape and not boxed.data.flags.writeable
    for i, j, k in np.ndindex(*vol.size_ijk):
        d, h, w = space.index_to_model([[i, j, k]])[0].round().astype(int)
        assert back[k, j, i] == prob[d, h, w]
    nonzero = np.argwhere(back != 0)
    if len(nonzero):
        assert boxed.start == tuple(nonzero.min(axis=0)) and boxed.data.shape == tuple(np.ptp(nonzero, axis=0) + 1)
    else:
        assert boxed.data.size == 0


def test_a_boxed_probability_on_a_resampled_grid_is_the_resampled_one():
    coarse = Volume(np.zeros((10, 40, 40), np.float32), (0.5, 0.5, 2.0))
    space = ModelSpace(coarse, Preset("t", spacing=(1.0, 1.0, 1.0), orientation="LPS", normalization="none"))
    blob = np.zeros(space.shape, np.float32)
    blob[5:15, 4:12, 6:16] = 0.8
    assert np.array_equal(space.boxed_from_model(blob).full(), space.from_model(blob))
