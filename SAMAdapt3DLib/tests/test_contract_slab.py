"""The interaction contract (docs/SESSION.md) for the slab engine's prompted path (Med-SA style), as properties
over random click sequences with a toy model that understands negatives but answers arbitrary, non-monotone
blobs on the slices around the clicks (so the contract cannot rest on the network)."""
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.slab import SlabEngine
from samadapt3d.families.base import SliceModel
from samadapt3d.session import InteractiveSession, make_engine
from samadapt3d.volume import Volume
from test_session_toymodel import TOY_PRESET

SHAPE = (8, 12, 14)


class ToyPromptedSlabModel(SliceModel):
    family = "toy-prompted-slab"
    prompt_kinds = frozenset({"positive", "negative"})
    engine = "slab"
    image_size = 16

    def __init__(self):
        super().__init__(TOY_PRESET)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def preprocess_slice(self, slice2d):
        raise NotImplementedError

    def embed(self, images):
        raise NotImplementedError

    def decode(self, embeddings, points=None, boxes=None, mask_input=None, multimask_output=False):
        raise NotImplementedError

    def predict_volume_prompted(self, image, positive, negative, box=None, tick=None):
        """Random blobs (seeded by the clicks) on the slices from the first to the last click, +-1."""
        self.calls += 1
        assert box is None
        clicks = np.concatenate([positive, negative]).reshape(-1, 3)
        key = int(abs(float(np.round(clicks, 3).sum()) * 1000)) % (2 ** 31) + len(negative)
        rng = np.random.default_rng(key)
        out = np.zeros(image.shape, np.float32)
        lo = max(int(np.floor(clicks[:, 0].min() + 0.5)) - 1, 0)
        hi = min(int(np.floor(clicks[:, 0].max() + 0.5)) + 1, image.shape[0] - 1)
        coarse = rng.random((hi - lo + 1, 3, 3))
        block = np.kron(coarse, np.ones((1, image.shape[1] // 3 + 1, image.shape[2] // 3 + 1)))
        out[lo:hi + 1] = block[:, : image.shape[1], : image.shape[2]]
        return out


def make():
    model = ToyPromptedSlabModel()
    engine = SlabEngine(model)
    engine.set_image(np.random.default_rng(0).random(SHAPE).astype(np.float32))
    return engine, model


def prompts_of(clicks, box=None):
    pos = [p for ok, p in clicks if ok]
    neg = [p for ok, p in clicks if not ok]
    return ModelPrompts(positive=np.reshape(pos, (-1, 3)), negative=np.reshape(neg, (-1, 3)), box=box,
                        order=tuple("positive" if ok else "negative" for ok, _ in clicks))


def voxel(p):
    return tuple(int(np.floor(v + 0.5)) for v in p)


point = st.tuples(*[st.floats(0, s - 1, allow_nan=False) for s in SHAPE])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clicks=st.lists(st.tuples(st.booleans(), point), min_size=1, max_size=7), with_box=st.booleans())
def test_slab_contract_holds_for_any_click_sequence(clicks, with_box):
    engine, model = make()
    box = (np.array([1.0, 2.0, 2.0]), np.array([6.0, 9.0, 11.0])) if with_box else None
    previous, results = None, []
    for n in range(len(clicks)):
        runs = engine.model_runs
        result = engine.run(prompts_of(clicks[: n + 1], box)) > 0.5
        positive = clicks[n][0]
        assert engine.model_runs - runs <= 1 + int(box is not None and n == 0)  # one model run per click
        latest = {voxel(q): ok for ok, q in clicks[: n + 1]}
        for v, ok in latest.items():
            assert result[v] == ok, "a positive click's voxel is in, a negative's out"
        if previous is not None:
            assert (result >= previous).all() if positive else (result <= previous).all()
        previous = result
        results.append(result)
    for n in range(len(clicks) - 1, -1, -1):  # undo replays without running the model
        calls = model.calls
        assert np.array_equal(engine.run(prompts_of(clicks[: n + 1], box)) > 0.5, results[n])
        assert model.calls == calls


def test_a_box_is_emulated_and_bounds_its_object():
    engine, _ = make()
    box = (np.array([2.0, 3.0, 3.0]), np.array([5.0, 8.0, 10.0]))
    result = engine.run(prompts_of([], box)) > 0.5
    outside = np.ones(SHAPE, bool)
    outside[2:6, 3:9, 3:11] = False
    assert not result[outside].any()


def test_the_session_drives_a_prompted_slab_model_through_the_contract():
    model = ToyPromptedSlabModel()
    assert isinstance(make_engine(model), SlabEngine)
    session = InteractiveSession(model)
    session.set_image(Volume(np.random.default_rng(1).random(SHAPE[::-1]).T.copy()))
    first = session.add_point((4, 5, 3))
    second = session.add_point((6, 6, 3), positive=False)
    assert first[3, 5, 4] and not second[3, 6, 6] and (second <= first).all()
    assert np.array_equal(session.undo(), first)
