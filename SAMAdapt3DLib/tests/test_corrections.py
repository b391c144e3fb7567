"""Corrections of the slice strategy (engines/slice_strategy.py) after a box, with the toy box model of
test_slice_contract (a box gives the dominant intensity's largest region inside it): a positive click beyond the
box's in-plane extent, a positive click past the end of the mask, a negative click on a part that looks unlike
the rest of the mask, and what a correction adds keeping to the click's tissue."""
from __future__ import annotations

import numpy as np

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.slice_strategy import _Fold, _Walk
from test_slice_contract import make_engine, run


def test_a_positive_click_beyond_the_box_in_plane_extent_adds_the_object_there():
    """The box is the bounding box of the middle slice; the object is wider on slice 5: a click there, outside
    the box's columns, adds that part (the box's slices still bound)."""
    volume = np.zeros((8, 40, 40), np.float32)
    volume[1:7, 10:30, 10:30] = 1.0
    volume[5, 10:30, 30:34] = 1.0  # wider on slice 5 only (by a fifth of the box)
    engine = make_engine(volume)
    box = (np.array([1.0, 10.0, 10.0]), np.array([6.0, 29.0, 29.0]))
    boxed = run(engine, [], box=box)
    assert not boxed[:, :, 30:].any()
    clicked = run(engine, [(True, (5, 20, 32))], box=box)
    assert clicked[5, 10:30, 30:34].all()
    assert not clicked[0].any() and not clicked[7].any()  # outside the box's slices: nothing
    np.testing.assert_array_equal(clicked[4], boxed[4])  # the correction walked on only while it added
    assert not (boxed & ~clicked).any()


def test_a_positive_click_past_the_mask_end_reopens_the_walk_while_it_tapers():
    """The walk stops where the tissue intensity changes (slices 5-6 are brighter, same object by the labels); a
    click on slice 5 re-prompts it with slice 4's box and walks on to slice 6, but not to slice 7, where the
    bright tissue widens (an object tapers toward its end: a leak), and adds nothing elsewhere."""
    volume = np.zeros((9, 40, 40), np.float32)
    volume[1:5, 10:20, 10:20] = 1.0
    volume[5:7, 11:19, 11:19] = 1.8
    volume[7, 5:30, 5:30] = 1.8
    engine = make_engine(volume)
    box = (np.array([1.0, 9.0, 9.0]), np.array([7.0, 20.0, 20.0]))
    boxed = run(engine, [], box=box)
    assert boxed[1:5, 10:20, 10:20].all() and not boxed[5:].any()
    clicked = run(engine, [(True, (5, 15, 15))], box=box)
    assert clicked[5:7, 11:19, 11:19].all()
    assert not clicked[7].any()
    assert not (clicked & (volume == 0)).any()


def test_a_correction_keeps_to_the_click_tissue():
    """`keep_alike`: of what a correction adds, the pixels nearer the click's intensity than the rest's stay."""
    volume = np.zeros((4, 20, 20), np.float32)
    volume[:, 2:10, 2:10] = 1.0
    volume[:, 2:10, 10:16] = 3.0
    engine = make_engine(volume)
    walk = _Walk(engine.strategy, 0, ModelPrompts(positive=np.zeros((0, 3)), negative=np.zeros((0, 3))), None, None)
    added = np.zeros((20, 20), np.float32)
    added[2:10, 2:16] = 0.9  # the model's mask took both tissues
    obj = {1: added}
    walk.keep_alike(obj, np.zeros(volume.shape, bool), (1, 5, 5))
    assert (obj[1][2:10, 2:10] > 0.5).all()
    assert not (obj[1][2:10, 10:16] > 0.5).any()


def _cut_walk(volume):
    engine = make_engine(volume)
    box = (np.array([0.0, 2.0, 2.0]), np.array([5.0, 17.0, 17.0]))
    prompts = ModelPrompts(positive=np.zeros((0, 3)), negative=np.zeros((0, 3)), box=box)
    return engine, _Walk(engine.strategy, 0, prompts, None, None)


def test_a_negative_on_an_unlike_part_cuts_that_part_along_the_slices_without_decoding():
    """A mask of bone (1.0) around a darker core (3.0 in the toy's units: another tissue), slices 0-5: a negative on
    the core removes the core on every slice it continues and keeps all of the rest; no decoder run."""
    volume = np.zeros((6, 20, 20), np.float32)
    volume[:, 3:17, 3:17] = 1.0
    volume[:, 8:12, 8:12] = 3.0
    engine, walk = _cut_walk(volume)
    mask = volume > 0
    fold = _Fold((), mask.astype(np.float32), np.zeros(mask.shape, bool))
    cut = np.zeros(mask.shape, bool)
    before = engine.stats.get("decoded", 0)
    assert walk.appearance_cut(fold, mask, cut, 2, 10, 10, mask[2])
    assert engine.stats.get("decoded", 0) == before
    np.testing.assert_array_equal(cut, volume == 3.0)


def test_a_negative_on_a_homogeneous_mask_is_not_an_appearance_cut():
    """Nothing in the component looks different: the appearance cut declines (the model's shrunk-box cut runs)."""
    volume = np.zeros((6, 20, 20), np.float32)
    volume[:, 3:17, 3:17] = 1.0
    _, walk = _cut_walk(volume)
    mask = volume > 0
    fold = _Fold((), mask.astype(np.float32), np.zeros(mask.shape, bool))
    assert not walk.appearance_cut(fold, mask, np.zeros(mask.shape, bool), 2, 10, 10, mask[2])


def test_an_appearance_cut_stops_at_a_positive_click():
    """The unlike part is cut along the slices, but not on a slice where a positive click holds it."""
    volume = np.zeros((6, 20, 20), np.float32)
    volume[:, 3:17, 3:17] = 1.0
    volume[:, 8:12, 8:12] = 3.0
    _, walk = _cut_walk(volume)
    mask = volume > 0
    fold = _Fold((), mask.astype(np.float32), np.zeros(mask.shape, bool), positives=[(4, 9, 9)])
    cut = np.zeros(mask.shape, bool)
    assert walk.appearance_cut(fold, mask, cut, 1, 10, 10, mask[1])
    assert cut[1][volume[1] == 3.0].all() and cut[3][volume[3] == 3.0].all()
    assert not cut[4:].any()
    assert not cut[volume == 1.0].any()
