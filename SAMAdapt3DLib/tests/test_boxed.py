"""BoxedArray: an array that is zero outside one box, held as that box, gives back exactly the array it was made
from; its box is the tightest that holds every nonzero element."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samadapt3d import boxed as boxed_module
from samadapt3d.boxed import BoxedArray

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.sampled_from([np.float32, np.uint8, np.bool_]))
def test_full_gives_back_the_array_and_the_box_is_tight(shape, seed, density, dtype):
    rng = np.random.default_rng(seed)
    array = (rng.uniform(size=shape) < density) * rng.uniform(0.1, 2.0, size=shape)
    array = array.astype(dtype)
    block = boxed_module.BLOCK_ELEMENTS
    boxed_module.BLOCK_ELEMENTS = 1 + seed % 40  # blocks of a few elements: several, a last partial one
    try:
        boxed = BoxedArray.of(array)
    finally:
        boxed_module.BLOCK_ELEMENTS = block
    full = boxed.full()
    assert full.dtype == array.dtype and full.shape == array.shape and np.array_equal(full, array)
    nonzero = np.argwhere(array != 0)
    if len(nonzero) == 0:
        assert boxed.data.size == 0 and boxed.nbytes == 0
    else:
        assert boxed.start == tuple(nonzero.min(0)) and boxed.data.shape == tuple(nonzero.max(0) - nonzero.min(0) + 1)
    assert not boxed.data.flags.writeable and full.flags.writeable


def test_a_view_is_copied_and_map_keeps_the_box():
    base = np.zeros((6, 8, 10), np.float32)
    base[2:4, 1:3, 7] = [[0.25, 0.5], [0.75, 1.0]]
    view = base[:, ::-1].transpose(2, 0, 1)  # a permuted, flipped view
    boxed = BoxedArray.of(view)
    base[:] = 0  # the boxed array holds its own copy
    assert boxed.start == (7, 2, 5) and boxed.data.shape == (1, 2, 2)
    expected = np.zeros((10, 6, 8), np.float32)
    expected[7, 2:4, 5:7] = [[0.5, 0.25], [1.0, 0.75]]
    assert np.array_equal(boxed.full(), expected)
    doubled = boxed.map(lambda d: d * 2)
    assert doubled.start == boxed.start and np.array_equal(doubled.full(), 2 * expected)
    assert np.array_equal(boxed.full(np.float64), expected.astype(np.float64))
    with pytest.raises(ValueError):
        boxed.map(lambda d: d[:, :1])
