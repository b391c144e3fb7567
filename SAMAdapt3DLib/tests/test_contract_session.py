"""The session half of the interaction contract (docs/SESSION.md): undo / redo exact with and without a seed,
the seed surviving undo followed by a new click, and concurrent calls serialised with no prompt lost.
A pure toy engine (each click paints or clears a 3x3x3 cube, in order, over the seed) makes the expected
mask a function of (prompts, seed) that the test computes on its own."""
import threading
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samadapt3d.session import InteractiveSession
from samadapt3d.volume import Volume
from test_session_toymodel import ToyCropModel

SHAPE = (6, 7, 8)  # [k, j, i]


class CubeEngine:
    """Each click, in order, sets (positive) or clears (negative) the 3x3x3 cube around its voxel."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.runs = 0

    def set_image(self, image, spacing=None):
        self.shape = image.shape

    def run(self, prompts, seed=None, progress=None, cancel=None):
        self.runs += 1
        if self.delay:
            time.sleep(self.delay)  # long enough for another thread to try its call meanwhile
        out = np.zeros(self.shape, np.float32) if seed is None else seed.astype(np.float32)
        for positive, point in prompts.clicks():
            d, h, w = np.floor(point + 0.5).astype(int)
            out[max(d - 1, 0):d + 2, max(h - 1, 0):h + 2, max(w - 1, 0):w + 2] = 1.0 if positive else 0.0
        return out


def expected_mask(prompts, seed):
    """The same rule in (i, j, k) on the [k, j, i] grid (identity geometry: model (d, h, w) = (k, j, i))."""
    has_model_prompt = any(kind == "positive" for kind, _ in prompts) or (seed is not None and prompts)
    out = np.zeros(SHAPE, bool) if seed is None else seed.copy()
    if not has_model_prompt:
        return out
    for kind, (i, j, k) in prompts:
        out[max(k - 1, 0):k + 2, max(j - 1, 0):j + 2, max(i - 1, 0):i + 2] = kind == "positive"
    return out


def new_session(engine=None):
    s = InteractiveSession(ToyCropModel(), engine=engine or CubeEngine())
    s.set_image(Volume(np.zeros(SHAPE, np.float32)))
    return s


voxel = st.tuples(st.integers(0, SHAPE[2] - 1), st.integers(0, SHAPE[1] - 1), st.integers(0, SHAPE[0] - 1))
operation = st.one_of(
    st.tuples(st.sampled_from(["positive", "negative"]), voxel),
    st.tuples(st.sampled_from(["undo", "redo", "reset", "drop seed"]), st.none()),
    st.tuples(st.just("seed"), st.integers(0, 2 ** 31 - 1)),
    st.tuples(st.just("remove"), st.integers(-3, 3)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=12))
def test_history_follows_a_reference_model_exactly(ops):
    s = new_session()
    state = ((), None)  # (prompts as (kind, ijk) tuples, seed)
    undo, redo = [], []

    def change(new):
        nonlocal state
        undo.append(state)
        redo.clear()
        state = new

    for op, arg in ops:
        prompts, seed = state
        if op in ("positive", "negative"):
            s.add_point(arg, positive=op == "positive")
            change((prompts + ((op, arg),), seed))
        elif op == "undo":
            s.undo()
            if undo:
                redo.append(state)
                state = undo.pop()
        elif op == "redo":
            s.redo()
            if redo:
                undo.append(state)
                state = redo.pop()
        elif op == "reset":
            empty = not prompts and seed is None and not expected_mask(prompts, seed).any()
            s.reset()
            if not empty:
                change(((), None))
        elif op == "seed":
            new_seed = np.random.default_rng(arg).random(SHAPE) < 0.3
            s.set_seed_mask(new_seed)
            change(((), new_seed))
        elif op == "drop seed":
            s.set_seed_mask(None)
            change(((), None))
        elif op == "remove":
            if -len(prompts) <= arg < len(prompts):
                s.remove_prompt(arg)
                kept = list(prompts)
                del kept[arg]
                change((tuple(kept), seed))
        prompts, seed = state
        assert [(p.kind, tuple(int(v) for v in p.ijk)) for p in s.prompts] == list(prompts)
        assert (s.seed_mask is None) == (seed is None)
        if seed is not None:
            assert np.array_equal(s.seed_mask, seed)
        assert np.array_equal(s.mask, expected_mask(prompts, seed)), (op, arg)
        assert s.can_undo == bool(undo) and s.can_redo == bool(redo)


def test_the_seed_survives_undo_followed_by_a_new_click():
    s = new_session()
    seed = np.zeros(SHAPE, bool)
    seed[0:2, 0:2, 0:2] = True
    s.set_seed_mask(seed)
    s.add_point((6, 5, 4), positive=False)
    s.undo()
    mask = s.add_point((5, 5, 4))
    assert np.array_equal(s.seed_mask, seed) and (mask & seed).sum() == seed.sum()
    assert np.array_equal(mask, expected_mask((("positive", (5, 5, 4)),), seed))
    s.undo()
    s.undo()  # back before the seed
    assert s.seed_mask is None and not s.mask.any()
    s.redo()
    assert np.array_equal(s.add_point((1, 1, 1), positive=False), expected_mask((("negative", (1, 1, 1)),), seed))


def test_concurrent_calls_are_serialised_and_no_prompt_is_lost():
    engine = CubeEngine(delay=0.02)
    s = new_session(engine)
    clicks = [(i, i % 7, i % 6) for i in range(8)]
    start = threading.Barrier(len(clicks))

    def click(ijk):
        start.wait()
        s.add_point(ijk)

    threads = [threading.Thread(target=click, args=(c,)) for c in clicks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(tuple(int(v) for v in p.ijk) for p in s.prompts) == sorted(clicks)
    assert engine.runs == len(clicks)
    assert np.array_equal(s.mask, expected_mask(tuple(("positive", c) for c in clicks), None))
    for n in range(len(clicks)):  # one history entry per click
        assert s.can_undo
        s.undo()
    assert not s.can_undo and s.prompts == []


def test_concurrent_undo_and_clicks_keep_a_consistent_history():
    s = new_session(CubeEngine(delay=0.005))
    s.add_point((1, 1, 1))
    barrier = threading.Barrier(4)

    def work(n):
        barrier.wait()
        for m in range(3):
            if (n + m) % 2:
                s.undo()
            else:
                s.add_point((n, m, 2))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # whatever the interleaving, the mask is the one the current prompts give
    prompts = tuple(("positive", tuple(int(v) for v in p.ijk)) for p in s.prompts)
    assert np.array_equal(s.mask, expected_mask(prompts, None))
