"""Previews of a running click (SliceEngine.run_previewing, InteractiveSession(preview=...)): the mask so far, grown
around the click both ways in turn, never changing the result; a cancel from a preview leaves the session as it was.

The toy model is test_slice_contract's (a box gives the boxed object's part inside it). The volume is tall, so a
click's walk has many slices to go each way.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from samadapt3d.engines.base import ModelPrompts, Previewing
from samadapt3d.engines.slices import SliceEngine
from samadapt3d.errors import CancelledError
from samadapt3d.session import InteractiveSession
from samadapt3d.volume import Volume

from test_slice_contract import ToySliceModel

SLICES, SIDE = 41, 40
FIRST, LAST = 5, 35  # the object's slices
CLICK = (20, 20, 20)


def tall_volume() -> np.ndarray:
    """A block of intensity 1 on slices 5-35 whose in-plane size changes with the slice (a section that grows and
    shrinks, as an organ's does), and a block of intensity 2 beside it that the click must not take."""
    v = np.zeros((SLICES, SIDE, SIDE), np.float32)
    for k in range(FIRST, LAST + 1):
        half = 6 + (k % 5)
        v[k, 20 - half:20 + half, 20 - half:20 + half] = 1.0
    v[10:30, 2:6, 2:38] = 2.0
    return v


def engine_for(volume: np.ndarray, every_s: float) -> SliceEngine:
    engine = SliceEngine(ToySliceModel(), disk_cache=None)
    engine.set_image(volume, spacing=(3.0, 1.0, 1.0))
    engine.preview_every_s = every_s
    return engine


def click_prompts() -> ModelPrompts:
    return ModelPrompts(positive=np.asarray([CLICK], float))


def test_the_slice_engine_declares_previews():
    assert isinstance(engine_for(tall_volume(), 0.0), Previewing)


def test_previews_grow_around_the_click_and_never_change_the_result():
    volume = tall_volume()
    shown: list[np.ndarray] = []
    engine = engine_for(volume, 0.0)  # a preview at every slice of the walk
    prob = engine.run_previewing(click_prompts(), None, None, None, shown.append).copy()
    plain = engine_for(volume, 0.0).run(click_prompts())
    assert np.array_equal(prob, plain)
    final = prob > 0.5
    truth = volume == 1.0
    assert (final & truth).sum() / truth.sum() > 0.95 and not (final & (volume == 2.0)).any()

    assert len(shown) >= 10
    before = np.zeros_like(final)
    for mask in shown:
        assert mask.shape == volume.shape and mask.dtype == np.bool_
        assert mask[CLICK[0]].any()
        assert np.all(before <= mask) and np.all(mask <= final)  # it only grows, and only into the result
        before = mask
        slices = np.flatnonzero(mask.any(axis=(1, 2)))
        above, below = CLICK[0] - slices.min(), slices.max() - CLICK[0]
        assert abs(above - below) <= 1, (above, below)  # both ways in turn, a slice each
    assert shown[-1].any(axis=(1, 2)).sum() >= 0.8 * (LAST - FIRST + 1)


def test_the_first_preview_comes_at_once_and_the_next_are_spaced_in_time():
    shown: list[np.ndarray] = []
    engine_for(tall_volume(), 3600.0).run_previewing(click_prompts(), None, None, None, shown.append)
    # the clicked slice as soon as it is decoded; the walk then takes far less than the interval
    assert len(shown) == 1
    assert np.flatnonzero(shown[0].any(axis=(1, 2))).tolist() == [CLICK[0]]


def _session(volume: np.ndarray, preview) -> InteractiveSession:
    model = ToySliceModel()
    engine = engine_for(volume, 0.0)
    session = InteractiveSession(model, engine=engine, preview=preview)
    session.set_image(Volume(volume, spacing=(1.0, 1.0, 3.0)))
    return session


def test_a_session_shows_previews_on_the_volume_grid_and_keeps_its_result():
    volume = tall_volume()
    shown: list[np.ndarray] = []
    session = _session(volume, shown.append)
    ijk = CLICK[::-1]
    mask = session.add_point(ijk)
    assert shown and all(m.shape == volume.shape and not m.flags.writeable for m in shown)
    assert all(np.all(m <= mask) for m in shown)
    assert shown[0].sum() < mask.sum()  # previews come before the end
    plain = _session(volume, None)
    assert np.array_equal(plain.add_point(ijk), mask)


def test_a_cancel_from_a_preview_leaves_the_session_as_it_was():
    volume = tall_volume()
    armed, calls = [False], []
    session = None

    def cancel_on_third(mask):
        calls.append(int(mask.sum()))
        if armed[0] and len(calls) == 3:
            session.cancel()

    session = _session(volume, cancel_on_third)
    first = session.add_point(CLICK[::-1])
    armed[0], calls[:] = True, []
    with pytest.raises(CancelledError):
        session.add_point((33, 3, 20))  # the other block: a new object, walked over 20 slices
    assert len(calls) == 3
    assert np.array_equal(session.mask, first) and len(session.prompts) == 1 and not session.busy
    assert session.undo().sum() == 0  # the history holds the first click only


def test_a_cancel_from_another_thread_during_previews():
    """The GUI thread cancels while the worker walks: the worker stops at its next slice; nothing is kept."""
    volume = tall_volume()
    shown, cancelled = threading.Event(), threading.Event()

    def wait_for_the_cancel(mask):
        shown.set()
        cancelled.wait(5)

    session = _session(volume, wait_for_the_cancel)
    gui = threading.Thread(target=lambda: (shown.wait(5), session.cancel(), cancelled.set()))
    gui.start()
    with pytest.raises(CancelledError):
        session.add_point(CLICK[::-1])
    gui.join(5)
    assert session.mask.sum() == 0 and session.prompts == [] and not session.busy
