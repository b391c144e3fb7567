"""CropEngine on model-space arrays with the toy crop model: placement, cache, growth, negatives, box."""
import threading

import numpy as np
import pytest

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.crop import CropEngine
from samadapt3d.errors import CancelledError
from test_session_toymodel import ToyCropModel


def engine_for(image, crop=(12, 12, 12), **kw):
    model = ToyCropModel(crop_size=crop)
    engine = CropEngine(model, **kw)
    engine.set_image(image.astype(np.float32))
    return engine, model


def run(engine, pos=(), neg=(), box=None, seed=None):
    return engine.run(ModelPrompts(positive=np.asarray(pos, float).reshape(-1, 3),
                                   negative=np.asarray(neg, float).reshape(-1, 3), box=box), seed)


def test_crop_at_the_image_corner_is_centred_and_padded():
    image = np.zeros((20, 20, 20))
    image[0:4, 0:4, 0:4] = 100
    engine, model = engine_for(image)
    seen = []
    encode = model.encode
    model.encode = lambda crop: (seen.append(crop.clone()), encode(crop))[1]
    prob = run(engine, pos=[(0, 0, 0)])
    assert engine.last_crops == [(-6, -6, -6)]
    assert np.array_equal(prob > 0.5, image > 50)
    crop = seen[0][0, 0].numpy()
    assert np.all(crop[:6] == 0) and np.all(crop[6:10, 6:10, 6:10] == 100)  # padding, then the image
    # the object reaches the crop faces only at the image border: no growth
    assert len(engine.last_crops) == 1


def test_crop_at_the_far_border():
    image = np.zeros((15, 17, 19))
    image[12:, 14:, 16:] = 100
    engine, _ = engine_for(image)
    prob = run(engine, pos=[(14, 16, 18)])
    assert engine.last_crops == [(9, 9, 12)]  # (8, 10, 12) centres the click; crops start on a lattice of 3
    assert np.array_equal(prob > 0.5, image > 50)


def test_cache_hit_inside_the_crop_miss_outside():
    image = np.zeros((40, 40, 40))
    image[8:12, 8:12, 8:12] = 100
    image[28:32, 28:32, 28:32] = 50
    engine, model = engine_for(image)
    run(engine, pos=[(10, 10, 10)])
    assert (engine.cache_hits, engine.cache_misses, engine.objects_decoded) == (0, 1, 1)
    run(engine, pos=[(10, 10, 10), (9, 10, 8)])  # the same lattice crop (3, 3, 3): decode only
    assert (engine.cache_hits, engine.cache_misses, engine.objects_decoded) == (1, 1, 2)
    assert model.encode_calls == 1 and model.decode_calls == 2
    prob = run(engine, pos=[(10, 10, 10), (9, 10, 8), (30, 30, 30)])  # far away: a new crop
    assert (engine.cache_hits, engine.cache_misses, engine.objects_decoded) == (1, 2, 3)
    assert np.array_equal(prob > 0.5, image > 0)
    run(engine, pos=[(10, 10, 10)])  # an undo replays from the object cache: nothing decoded
    assert model.decode_calls == 3 and model.encode_calls == 2
    engine.set_image(image.astype(np.float32))  # a new image drops the cache
    run(engine, pos=[(10, 10, 10)])
    assert engine.cache_misses == 3


def test_object_larger_than_a_crop_grows_into_merged_crops():
    image = np.zeros((16, 20, 64))
    image[6:10, 8:12, 2:60] = 100  # a bar 58 voxels long, crops of 12
    engine, _ = engine_for(image)
    prob = run(engine, pos=[(8, 10, 30)])
    assert np.array_equal(prob > 0.5, image > 50)
    assert 4 < len(engine.last_crops) <= engine.max_crops
    assert len({c[2] for c in engine.last_crops}) == len(engine.last_crops)  # grew along w only
    bounded, _ = engine_for(image, max_crops=2)
    prob = run(bounded, pos=[(8, 10, 30)])
    assert len(bounded.last_crops) == 2
    assert 0 < (prob > 0.5).sum() < (image > 50).sum()


def test_growth_in_every_direction():
    image = np.zeros((30, 30, 30))
    image[3:27, 3:27, 3:27] = 100
    engine, _ = engine_for(image, max_crops=64)
    prob = run(engine, pos=[(15, 15, 15)])
    assert np.array_equal(prob > 0.5, image > 50)


def test_negative_removes_the_connected_region_it_lands_in():
    image = np.zeros((20, 20, 30))
    image[5:10, 5:10, 3:8] = 100
    image[5:10, 5:10, 12:17] = 100
    engine, _ = engine_for(image, crop=(16, 16, 24))
    both = run(engine, pos=[(7, 7, 5), (7, 7, 14)]) > 0.5
    assert np.array_equal(both, image > 50)
    one = run(engine, pos=[(7, 7, 5), (7, 7, 14)], neg=[(7, 7, 15)]) > 0.5
    expected = image > 50
    expected[:, :, 10:] = False
    # the negative's region holds a positive click: only the voxels nearer the negative than the positive go
    kept = one[5:10, 5:10, 12:17]
    assert kept[:, :, :3].all() and not kept[:, :, 3:].any()  # w <= 14 nearer the positive at w = 14
    assert np.array_equal(one[:, :, :10], expected[:, :, :10]) and not one[:, :, 17:].any()
    only = run(engine, pos=[(7, 7, 5)], neg=[(7, 7, 14)]) > 0.5
    assert np.array_equal(only, expected)  # negative off the mask: no effect
    seeded = run(engine, neg=[(7, 7, 14)], seed=image > 50) > 0.5
    assert np.array_equal(seeded, expected)  # a negative on a seed without positives removes that blob


def test_box_places_the_crop_and_bounds_the_result():
    image = np.zeros((20, 20, 60))
    image[8:12, 8:12, 5:55] = 100
    engine, _ = engine_for(image)
    box = (np.array([6, 6, 20]), np.array([14, 14, 30]))
    prob = run(engine, box=box)  # box alone: its centre is the click
    expected = np.zeros_like(image, dtype=bool)
    expected[8:12, 8:12, 20:31] = True
    assert np.array_equal(prob > 0.5, expected)
    assert engine.last_crops[0] == (3, 3, 18)  # the lattice crop nearest centring the box centre (10, 10, 25)
    prob = run(engine, pos=[(10, 10, 22)], box=box)
    assert np.array_equal(prob > 0.5, expected)


def test_seed_is_kept_and_extended():
    image = np.zeros((20, 20, 20))
    image[2:6, 2:6, 2:6] = 100
    seed = np.zeros(image.shape, bool)
    seed[15:18, 15:18, 15:18] = True
    engine, _ = engine_for(image)
    prob = run(engine, pos=[(3, 3, 3)], seed=seed)
    assert np.array_equal(prob > 0.5, (image > 50) | seed)


def test_cancel_raises():
    engine, _ = engine_for(np.zeros((10, 10, 10)))
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        engine.run(ModelPrompts(positive=[(5, 5, 5)]), None, None, event)
