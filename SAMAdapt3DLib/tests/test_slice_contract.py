"""The interaction contract (docs/SESSION.md) of SliceEngine, as properties, with a toy box-prompted 2D model.

ToySliceModel: the "embedding" is the slice itself; a box prompt gives the largest connected region, inside the
box, of the intensity that covers most of the box's non-zero pixels (logits +6 there, -6 elsewhere; predicted
IoU 0.9). On a piecewise-constant image that is the boxed object's part inside the box, as a box-trained
network would give. Volumes here: blocks of distinct intensities on a zero background.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.slices import SliceEngine
from samadapt3d.families.base import SliceModel
from samadapt3d.preprocess import Preset


class ToySliceModel(SliceModel):
    family = "toy-slice"
    image_size = 32
    prompt_kinds = frozenset({"box"})

    def __init__(self) -> None:
        super().__init__(Preset("toy-slice", spacing=None, orientation=None, normalization="none"))
        self.scale = nn.Parameter(torch.ones(()))
        self.decode_calls = 0

    def preprocess_slice(self, slice2d):
        t = torch.from_numpy(np.ascontiguousarray(slice2d, dtype=np.float32))
        return t[None].expand(3, *t.shape), None

    @staticmethod
    def normalize_slice(slice2d):
        return np.asarray(slice2d, np.float32) / 4.0  # a fixed window (as a CT window), not per slice

    def embed(self, images):
        return images[:, :1] * self.scale

    @staticmethod
    def box_to_model(transform, r0, c0, r1, c1):
        return np.array([c0, r0, c1, r1], dtype=np.float64)

    @staticmethod
    def mask_to_slice(transform, logits):
        return logits

    def decode(self, embeddings, points=None, boxes=None, mask_input=None, multimask_output=False):
        image = embeddings[0, 0].detach().numpy()
        out = []
        for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).round().astype(int):
            self.decode_calls += 1
            inside = np.zeros(image.shape, bool)
            inside[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
            out.append(np.where(self.box_mask(image, inside), 6.0, -6.0))
        logits = torch.as_tensor(np.stack(out), dtype=torch.float32)[:, None]
        return logits, torch.full((len(out), 1), 0.9)

    def box_mask(self, image: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """What a box (`inside`: its pixels) gives: the largest piece of its most common non-zero value."""
        values, counts = np.unique(image[inside & (image > 0)], return_counts=True)
        if not len(values):
            return np.zeros(image.shape, bool)
        return largest_component(inside & (image == values[np.argmax(counts)]))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D mask (empty for an empty mask)."""
    labels, count = ndimage.label(mask, np.ones((3, 3)))
    if not count:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def toy_volume() -> np.ndarray:
    """8 x 40 x 40: objects A (1.0, slices 1-6), B (2.0, slices 2-5, beside A on the same slices), C (3.0, a thin
    plate on slices 3-4 touching A: a structure next to A), zero background."""
    v = np.zeros((8, 40, 40), np.float32)
    v[1:7, 4:18, 4:18] = 1.0
    v[2:6, 22:34, 6:16] = 2.0
    v[3:5, 4:18, 18:24] = 3.0
    return v


OBJECTS = {"A": 1.0, "B": 2.0, "C": 3.0}


@pytest.fixture(scope="module")
def volume():
    return toy_volume()


def make_engine(volume) -> SliceEngine:
    engine = SliceEngine(ToySliceModel(), disk_cache=None)
    engine.set_image(volume, spacing=(3.0, 1.0, 1.0))
    return engine


def run(engine, clicks, box=None) -> np.ndarray:
    """clicks: [(positive, (d, h, w))] in order -> bool mask."""
    pos = [p for positive, p in clicks if positive]
    neg = [p for positive, p in clicks if not positive]
    prompts = ModelPrompts(positive=np.asarray(pos, float).reshape(-1, 3), negative=np.asarray(neg, float).reshape(-1, 3),
                           box=box, order=tuple("positive" if positive else "negative" for positive, _ in clicks))
    if prompts.empty:
        return np.zeros(engine.image.shape, bool)
    return engine.run(prompts) > 0.5


def deep_voxels(volume, value):
    """Voxels of an object at least 2 px inside it in its slice (a click "inside", not on its rim)."""
    inside = np.stack([ndimage.binary_erosion(s == value, np.ones((5, 5))) for s in volume])
    return np.argwhere(inside)


click = st.tuples(st.booleans(), st.tuples(st.integers(0, 7), st.integers(0, 39), st.integers(0, 39)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(click, min_size=1, max_size=6))
def test_each_click_obeys_the_contract(volume, clicks):
    """Clicks anywhere, added one by one: a positive's voxel is in and nothing is removed; a negative's voxel is
    out (unless a positive sits on it) and nothing is added."""
    engine = make_engine(volume)
    before = np.zeros(volume.shape, bool)
    for n, (positive, p) in enumerate(clicks):
        after = run(engine, clicks[:n + 1])
        positives = {q for pos, q in clicks[:n + 1] if pos}
        if positive:
            assert after[p]
            assert not (before & ~after).any(), "a positive click removed voxels"
        else:
            assert not (after & ~before).any(), "a negative click added voxels"
            assert after[p] == (p in positives)
        for q in positives:
            assert after[q]
        before = after


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.permutations(["A", "B"]), st.integers(2, 5), st.data())
def test_positives_on_separate_objects_give_their_union_in_any_order(volume, order, k, data):
    """Two positives on one slice (or on different slices), in either order: the union of each alone."""
    engine = make_engine(volume)
    same_slice = data.draw(st.booleans(), label="same slice")
    pts = {}
    for name in order:
        candidates = [tuple(int(v) for v in q) for q in deep_voxels(volume, OBJECTS[name]) if not same_slice or q[0] == k]
        pts[name] = data.draw(st.sampled_from(candidates), label=name)
    alone = {name: run(make_engine(volume), [(True, pts[name])]) for name in pts}
    for name in pts:
        assert alone[name][volume == OBJECTS[name]].mean() > 0.9  # each click finds its object
    both = run(engine, [(True, pts[name]) for name in order])
    np.testing.assert_array_equal(both, alone["A"] | alone["B"])


def test_a_second_positive_on_the_same_slice_keeps_the_first_object(volume):
    engine = make_engine(volume)
    a, b = (3, 10, 10), (3, 28, 10)
    first = run(engine, [(True, a)])
    both = run(engine, [(True, a), (True, b)])
    assert not (first & ~both).any()
    assert both[volume == 2.0].all() and both[volume == 1.0].all()


def test_many_positives_give_every_object(volume):
    engine = make_engine(volume)
    rng = np.random.default_rng(0)
    inside = np.argwhere(volume > 0)
    clicks = [(True, tuple(int(v) for v in inside[i])) for i in rng.choice(len(inside), 60, replace=False)]
    mask = run(engine, clicks)
    assert mask[volume > 0].mean() > 0.95 and not mask[volume == 0].any()


def test_negative_outside_the_mask_changes_nothing():
    volume = toy_volume()
    engine = make_engine(volume)
    base = run(engine, [(True, (3, 10, 10))])
    after = run(engine, [(True, (3, 10, 10)), (False, (3, 30, 30))])
    np.testing.assert_array_equal(base, after)


def test_negative_on_another_object_inside_a_box_result_removes_it_and_keeps_the_rest():
    """A box over A and its neighbour C gives A (the dominant object); a positive on C adds C; a negative on C
    then removes (most of) C and keeps A."""
    volume = toy_volume()
    engine = make_engine(volume)
    box = (np.array([1.0, 3.0, 3.0]), np.array([6.0, 19.0, 25.0]))
    a_only = run(engine, [], box=box)
    assert a_only[volume == 1.0].mean() > 0.9
    with_c = run(engine, [(True, (3, 10, 20))], box=box)
    assert with_c[volume == 3.0].mean() > 0.9
    cut = run(engine, [(True, (3, 10, 20)), (False, (4, 10, 21))], box=box)
    assert cut[volume == 1.0].mean() > 0.9  # A stays
    assert cut[volume == 3.0].mean() < 0.6


def test_leak_along_the_axis_is_cut_beyond_the_negative():
    """One object spanning slices 0-7; the positive on slice 1, a negative on slice 5: slices 5-7 go, 0-4 stay."""
    volume = np.zeros((8, 24, 24), np.float32)
    volume[:, 6:18, 6:18] = 1.0
    engine = make_engine(volume)
    full = run(engine, [(True, (1, 12, 12))])
    assert full[volume > 0].all()
    cut = run(engine, [(True, (1, 12, 12)), (False, (5, 12, 12))])
    assert cut[:5][volume[:5] > 0].all()
    assert not cut[5:].any()


def test_cost_per_click_is_bounded_and_n_negatives_cost_o_n(volume):
    """Negatives added one by one: each costs at most one click search plus one propagation (no re-decoding of
    what earlier clicks did), so the total grows linearly."""
    engine = make_engine(volume)
    model = engine.model
    rng = np.random.default_rng(1)
    clicks = [(True, (3, 10, 10))]
    run(engine, clicks)
    per_click = []
    inside = np.argwhere(volume >= 0)
    for _ in range(60):
        d, h, w = (int(v) for v in inside[rng.integers(len(inside))])
        clicks.append((False, (d, h, w)))
        before = model.decode_calls
        run(engine, clicks)
        per_click.append(model.decode_calls - before)
    bound = 4 * 9 + 2 * 2 * volume.shape[0] + 4  # click search (9 boxes x 4 rounds) + 2 directions x refit + shrink
    assert max(per_click) <= bound
    repeat_before = model.decode_calls
    run(engine, clicks)  # the same prompts again: the fold is reused, nothing decoded
    assert model.decode_calls == repeat_before


def _domed_volume() -> np.ndarray:
    """A uniform object A (1.0) on slices 1-6 whose last two slices are mostly taken by another tissue D (3.5):
    there A is a 4-px crescent beside D, as a lung's base is beside the liver's dome."""
    v = np.zeros((8, 40, 40), np.float32)
    v[1:7, 4:18, 4:18] = 1.0
    v[5:7, 4:18, 4:14] = 3.5
    return v


@pytest.mark.parametrize("continuation", [True, False])
def test_a_uniform_object_goes_on_by_its_own_intensity_where_the_model_turns_to_another_tissue(continuation):
    """Inside a box over A, the toy model gives D on slices 5-6 (D fills most of the box there). With the uniform
    continuation, A's crescent is kept there and D is not taken; without it, the walk stops at slice 5."""
    import dataclasses

    volume = _domed_volume()
    engine = make_engine(volume)
    engine.config = dataclasses.replace(engine.config, uniform_continuation=continuation)
    box = (np.array([1.0, 4.0, 4.0]), np.array([6.0, 17.0, 17.0]))
    mask = run(engine, [], box=box)
    assert mask[1:5][volume[1:5] == 1.0].mean() > 0.9
    assert mask[volume == 3.5].mean() < 0.02  # not the other tissue (a corner pixel of the smoothing at most)
    crescent = volume[5:7] == 1.0
    if continuation:
        assert mask[5:7][crescent].mean() > 0.9
    else:
        assert not mask[5:7].any()
