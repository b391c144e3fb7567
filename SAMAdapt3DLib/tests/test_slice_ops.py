"""The slice engine's 2D mask helpers against their definitions."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from samadapt3d.engines.slice_ops import dilate, erode


def _window_any(mask: np.ndarray, radius: int) -> np.ndarray:
    """The definition: a pixel is set when any pixel within `radius` (Chebyshev) of it is, inside the slice."""
    h, w = mask.shape
    return np.array([[mask[max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1].any()
                      for j in range(w)] for i in range(h)], dtype=bool).reshape(h, w)


@settings(max_examples=150, deadline=None)
@given(mask=arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24))), radius=st.integers(0, 30))
def test_dilate_and_erode_are_the_square_window(mask, radius):
    assert np.array_equal(dilate(mask, radius), _window_any(mask, radius))
    # erosion: the complement's dilation; pixels beyond the border count as outside the complement too
    assert np.array_equal(erode(mask, radius), ~_window_any(~mask, radius))


def test_dilate_leaves_its_input_alone():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    out = dilate(mask, 1)
    assert out.sum() == 9 and mask.sum() == 1


def test_a_slices_median_is_its_own_even_when_arrays_come_and_go():
    """The 3 x 3 median is kept per slice array: a new array (possibly at a freed array's address) gets its own."""
    import SimpleITK as sitk
    from samadapt3d.engines.slice_region import smoothed

    def direct(img):
        return sitk.GetArrayFromImage(sitk.Median(sitk.GetImageFromArray(img.astype(np.float32)), [1, 1]))

    rng = np.random.default_rng(3)
    for _ in range(20):
        img = rng.random((16, 16)).astype(np.float32)
        first = smoothed(img)
        assert np.array_equal(first, direct(img)) and smoothed(img) is first
        del img, first  # the next array may reuse this one's id
    keep = rng.random((16, 16)).astype(np.float32)
    assert np.array_equal(smoothed(keep), direct(keep))
    assert not smoothed(keep).flags.writeable  # shared: callers cannot change it for the next one


def _fill_holes_whole_slice(mask: np.ndarray) -> np.ndarray:
    """The oracle: ITK's fill on the whole slice (what fill_holes did before it worked on the mask's box)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=True, foregroundValue=1)) > 0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.3, 0.5, 0.7]), st.booleans())
def test_fill_holes_on_the_masks_box_equals_the_whole_slice(seed, density, at_border):
    """Random masks with holes of every kind, also touching the image's border (a background region that reaches
    the border is not a hole)."""
    from samadapt3d.engines.slice_region import fill_holes

    rng = np.random.default_rng(seed)
    mask = np.zeros((24, 30), bool)
    r0, c0 = (0, 0) if at_border else (rng.integers(1, 8), rng.integers(1, 8))
    mask[r0:r0 + 14, c0:c0 + 18] = rng.random((14, 18)) < density
    mask[r0:r0 + 14, c0] = mask[r0:r0 + 14, c0 + 17] = True  # walls, so some regions are enclosed
    assert np.array_equal(fill_holes(mask), _fill_holes_whole_slice(mask))
    assert not fill_holes(np.zeros((5, 5), bool)).any()
