"""A CT stored as integers is not copied to float32 when the model normalises each slice itself (LiteMedSAM's
preset: no resampling, clipping or normalisation): the model space holds the integers, or views the volume's own
array, and the slice engine reads each slice as float32. On a 512 x 512 x 300 int16 CT that is 300 MiB less.
Results are the same as from the float32 copy."""
from __future__ import annotations

import numpy as np
import pytest

from samadapt3d.preprocess import FLOAT32_EXACT_INT, ModelSpace, Preset, exact_in_float32
from samadapt3d.session import InteractiveSession
from samadapt3d.volume import Volume

from test_slice_contract import ToySliceModel, toy_volume

RAW = Preset("raw", spacing=None, orientation="LPS", clip=None, normalization="none")
LPS = np.eye(3)
RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16])
def test_integers_of_16_bits_are_exact_in_float32(dtype):
    assert exact_in_float32(np.zeros((2, 2, 2), dtype))


def test_wider_integers_are_exact_only_within_the_float32_significand():
    inside = np.array([[[-FLOAT32_EXACT_INT, FLOAT32_EXACT_INT]]], np.int32)
    outside = np.array([[[0, FLOAT32_EXACT_INT + 1]]], np.int64)
    assert exact_in_float32(inside) and exact_in_float32(inside.astype(np.int64))
    assert not exact_in_float32(outside)
    assert float(np.float32(FLOAT32_EXACT_INT + 1)) != FLOAT32_EXACT_INT + 1  # why the bound is where it is


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.bool_])
def test_floats_and_booleans_are_not_kept(dtype):
    assert not exact_in_float32(np.zeros((2, 2, 2), dtype))


def ct(direction) -> Volume:
    rng = np.random.default_rng(3)
    return Volume(rng.integers(-1024, 2000, (6, 9, 11)).astype(np.int16), spacing=(0.7, 0.7, 2.5),
                  direction=direction)


def test_a_raw_preset_views_an_int16_ct_already_in_its_orientation():
    volume = ct(LPS)
    space = ModelSpace(volume, RAW)
    assert space.image.dtype == np.int16 and np.shares_memory(space.image, volume.array)


def test_a_raw_preset_reorients_an_int16_ct_as_int16_with_the_same_values():
    volume = ct(RAS)
    raw, floats = ModelSpace(volume, RAW), ModelSpace(Volume(volume.array.astype(np.float32), volume.spacing,
                                                             volume.origin, volume.direction), RAW)
    assert raw.image.dtype == np.int16 and not np.shares_memory(raw.image, volume.array)
    assert floats.image.dtype == np.float32
    assert np.array_equal(raw.image.astype(np.float32), floats.image)


def test_a_normalising_preset_still_makes_float32():
    space = ModelSpace(ct(LPS), Preset("z", spacing=None, orientation="LPS", normalization="zscore"))
    assert space.image.dtype == np.float32


class NeighbourModel(ToySliceModel):
    slice_context = 1  # embeds a slice with its neighbours: reads the volume at once


def _session(model, array) -> InteractiveSession:
    session = InteractiveSession(model)
    session.set_image(Volume(array, spacing=(1.0, 1.0, 3.0)))
    return session


def test_the_slice_engine_reads_an_int16_volume_slice_by_slice_with_the_float32_results():
    values = toy_volume()  # small integers (0-3)
    as_int, as_float = _session(ToySliceModel(), values.astype(np.int16)), _session(ToySliceModel(), values)
    assert as_int.engine.image.dtype == np.int16 and np.shares_memory(as_int.engine.image, as_int.volume.array)
    for session in (as_int, as_float):
        session.add_point((10, 10, 3))  # object A (clicks are (i, j, k))
        session.add_point((10, 28, 3))  # object B
        session.add_point((15, 15, 4), positive=False)  # inside A
    mask = as_int.mask
    assert mask[3, 10, 10] and mask[3, 28, 10] and not mask[4, 15, 15]
    assert np.array_equal(mask, as_float.mask)
    # the slices' content keys (and so the embedding cache on disk) are those of the float32 slices
    assert as_int.engine.embeddings.content_key(0, 3, as_int.engine.embeddings.slice2d(0, 3)) == \
        as_float.engine.embeddings.content_key(0, 3, as_float.engine.embeddings.slice2d(0, 3))


def test_a_model_that_reads_neighbours_gets_float32():
    session = _session(NeighbourModel(), toy_volume().astype(np.int16))
    assert session.engine.image.dtype == np.float32
