"""The interaction contract (docs/SESSION.md) for the crop engine, as properties over random click sequences,
with the honest toy model, a model that answers random blobs (so the contract cannot rest on the network) and
a tiny random 3DSAM-adapter."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.crop import CropEngine
from test_session_toymodel import ToyCropModel

SHAPE = (14, 16, 18)


class RandomBlobCropModel(ToyCropModel):
    """Whatever blobs a seeded noise field gives for this crop and click: may miss the click, may cover anything."""

    family = "toy-random"

    def decode(self, features, points):
        self.decode_calls += 1
        key = int(abs(float(points.sum()) * 1000) + abs(float(features.sum()))) % (2 ** 31)
        g = torch.Generator().manual_seed(key)
        coarse = torch.randn((1, 1, 3, 3, 3), generator=g)
        field = F.interpolate(coarse, size=tuple(features.shape[2:]), mode="trilinear", align_corners=False)
        return torch.sigmoid(4 * field).expand(features.shape[0], 1, *features.shape[2:]).clone()


def phantom():
    arr = np.zeros(SHAPE, np.float32)
    arr[2:6, 3:9, 4:7] = 100
    arr[8:12, 10:14, 11:16] = 200
    arr[1:4, 10:15, 2:9] = 300
    return arr


def make_engine(kind):
    model = {"toy": lambda: ToyCropModel(crop_size=(8, 8, 8)), "random": lambda: RandomBlobCropModel(crop_size=(8, 8, 8))}[kind]()
    engine = CropEngine(model, max_crops=8)
    engine.set_image(phantom())
    return engine, model


def prompts_of(clicks, box=None):
    pos = [p for positive, p in clicks if positive]
    neg = [p for positive, p in clicks if not positive]
    return ModelPrompts(positive=np.reshape(pos, (-1, 3)), negative=np.reshape(neg, (-1, 3)), box=box,
                        order=tuple("positive" if positive else "negative" for positive, _ in clicks))


point = st.tuples(*[st.floats(0, s - 1, allow_nan=False) for s in SHAPE])
click = st.tuples(st.booleans(), point)


def voxel(p):
    return tuple(int(np.floor(v + 0.5)) for v in p)


def check_contract(engine, model, clicks, seed=None, box=None):
    previous = None if seed is None else seed.copy()
    results = []
    for n in range(len(clicks)):
        decoded = engine.objects_decoded
        result = engine.run(prompts_of(clicks[: n + 1], box), seed) > 0.5
        positive, p = clicks[n]
        box_first = box is not None and n == 0  # the box's own object comes with the first run
        assert engine.objects_decoded - decoded <= int(positive) + int(box_first)  # one object per new positive
        latest = {voxel(q): ok for ok, q in clicks[: n + 1]}  # two clicks on one voxel: the latest wins
        for v, ok in latest.items():
            assert result[v] == ok, "a positive click's voxel is in the result, a negative's out"
        if previous is not None:
            if positive:
                assert (result >= previous).all(), "a positive never removes"
            else:
                assert (result <= previous).all(), "a negative never adds"
        previous = result
        results.append(result)
    for n in range(len(clicks) - 1, -1, -1):  # undo: replaying a prefix gives the same result, decoding nothing
        decoded = model.decode_calls
        assert np.array_equal(engine.run(prompts_of(clicks[: n + 1], box), seed) > 0.5, results[n])
        assert model.decode_calls == decoded
    return results


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["toy", "random"]), clicks=st.lists(click, min_size=1, max_size=7),
       seed_value=st.one_of(st.none(), st.integers(0, 2 ** 31 - 1)))
def test_contract_holds_for_any_click_sequence(kind, clicks, seed_value):
    engine, model = make_engine(kind)
    seed = None if seed_value is None else np.random.default_rng(seed_value).random(SHAPE) < 0.2
    check_contract(engine, model, clicks, seed)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["toy", "random"]), points=st.lists(point, min_size=2, max_size=4), data=st.data())
def test_positive_clicks_give_the_union_of_their_objects_in_any_order(kind, points, data):
    engine, _ = make_engine(kind)
    union = np.zeros(SHAPE, bool)
    for p in points:
        union |= engine.run(prompts_of([(True, p)]), None) > 0.5
    order = data.draw(st.permutations(points))
    assert np.array_equal(engine.run(prompts_of([(True, p) for p in order]), None) > 0.5, union)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["toy", "random"]), clicks=st.lists(click, min_size=1, max_size=4))
def test_contract_with_a_box(kind, clicks):
    engine, model = make_engine(kind)
    box = (np.array([1.0, 2.0, 2.0]), np.array([9.0, 12.0, 14.0]))
    check_contract(engine, model, clicks, box=box)
    only_box = engine.run(prompts_of([], box), None) > 0.5
    outside = np.ones(SHAPE, bool)
    outside[1:10, 2:13, 2:15] = False
    assert not only_box[outside].any()  # the box's own object stays inside it


def test_negatives_cost_no_decoding_and_scale_linearly():
    engine, model = make_engine("toy")
    clicks = [(True, (3.0, 5.0, 5.0))] + [(False, (3.0 + (n % 3) * 0.5, 3.0 + n % 6, 4.0 + n % 3)) for n in range(40)]
    engine.run(prompts_of(clicks[:1]), None)
    decodes = model.decode_calls
    engine.run(prompts_of(clicks), None)
    assert model.decode_calls == decodes  # 40 negatives: no decoder run at all


def test_tiny_random_3dsam_adapter_obeys_the_contract():
    from test_evaluate_models import tiny_sam3d

    model = tiny_sam3d()
    engine = CropEngine(model, max_crops=1)
    image = np.random.default_rng(0).normal(size=(20, 24, 24)).astype(np.float32)
    engine.set_image(image)
    rng = np.random.default_rng(1)
    clicks = [(bool(rng.random() < 0.6), tuple(rng.uniform(0, s - 1) for s in image.shape)) for _ in range(3)]
    clicks[0] = (True, clicks[0][1])
    model.decode_calls = 0

    class Counting:
        decode_calls = 0

    counter = Counting()
    decode = model.decode

    def counted(*args, **kw):
        counter.decode_calls += 1
        return decode(*args, **kw)

    model.decode = counted
    check_contract(engine, counter, clicks)
