"""What a long interactive session holds: the undo history's probabilities are quantised a block at a time (the
same bytes as the whole-volume formula), and the slice strategy's object memo is bounded in bytes, not in count
(a lung on a clinical CT is ~220 MiB of slices; a count bound let every click add that much); the byte-bounded LRU
that memo and the other array caches share."""
import numpy as np
import pytest

from samadapt3d import session as session_module
from samadapt3d.boxed import BoxedArray
from samadapt3d.byte_lru import ByteLRU
from samadapt3d.engines import slice_strategy
from samadapt3d.engines.slice_strategy import SliceStrategy


@pytest.mark.parametrize("shape", [(5, 7, 9), (1, 3, 3), (300, 4, 4)])
def test_history_quantisation_equals_the_whole_volume_formula(shape, monkeypatch):
    rng = np.random.default_rng(0)
    prob = rng.uniform(-0.2, 1.2, size=shape).astype(np.float32)
    prob.flat[:6] = [0.5 / 255, 1.5 / 255, 0.0, 1.0, 254.5 / 255, np.float32(0.5)]  # rounding ties and the ends
    expected = np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)
    monkeypatch.setattr(session_module, "QUANTIZE_BLOCK_VOXELS", 40)  # several blocks, a last partial one
    got = session_module._quantized(prob)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    state = session_module._State((), None, prob > 0.5, BoxedArray.of(prob), None)
    restored = session_module._Stored.pack(state).unpack().probability
    assert np.array_equal(restored.full(), expected.astype(np.float32) / 255.0)
    assert not restored.data.flags.writeable


class _Engine:
    pass


def test_object_memo_is_bounded_in_bytes_and_keeps_the_latest(monkeypatch):
    monkeypatch.setattr(slice_strategy, "MAX_OBJECT_BYTES", 3 * 1000 * 4 + 100)
    strategy = SliceStrategy(_Engine())
    made = []

    def make(n):
        def build():
            made.append(n)
            return ({k: np.full(1000, n, np.float32) for k in range(1)}, n)  # 4000 bytes each
        return build

    for n in range(6):
        strategy.memo(("click", n), make(n))
    assert made == list(range(6))
    assert strategy._objects.used_bytes <= slice_strategy.MAX_OBJECT_BYTES
    assert [key[1] for key in strategy._objects.keys()] == [3, 4, 5]  # the oldest went first
    obj, n = strategy.memo(("click", 5), make(5))  # a hit: not made again
    assert made == list(range(6)) and n == 5 and obj[0][0] == 5
    strategy.memo(("click", 0), make(0))  # evicted earlier: made again, equal
    assert made[-1] == 0 and [key[1] for key in strategy._objects.keys()] == [4, 5, 0]
    big = ({0: np.zeros(10_000, np.float32)},)
    assert strategy.memo(("box",), lambda: big) is big  # larger than the budget on its own: still kept as the latest
    assert list(strategy._objects.keys()) == [("box",)]
    strategy.reset()
    assert strategy._objects.used_bytes == 0 and not strategy._objects


def test_byte_lru_evicts_the_oldest_and_counts_a_replaced_entry_once():
    lru = ByteLRU(10)
    for key in "abc":
        lru.put(key, key.upper(), 4)  # 12 bytes > 10: "a" goes
    assert list(lru.keys()) == ["b", "c"] and lru.used_bytes == 8 and "a" not in lru
    assert lru.get("b") == "B" and list(lru.keys()) == ["c", "b"]  # a hit is the most recent
    lru.put("c", "C2", 5)  # replaced: counted once
    assert lru.used_bytes == 9 and lru.get("c") == "C2" and len(lru) == 2 and lru.newest() == "C2"
    lru.put("huge", "H", 100)  # over the bound on its own: kept, alone
    assert list(lru.keys()) == ["huge"] and lru.used_bytes == 100
    assert lru.get("missing") is None
    lru.clear()
    assert len(lru) == 0 and lru.used_bytes == 0 and lru.newest() is None


def test_object_memo_holds_each_plane_as_its_box_and_gives_fresh_full_planes():
    strategy = SliceStrategy(_Engine())
    plane = np.zeros((64, 64), np.float32)
    plane[10:14, 20:30] = 0.75
    made = []

    def build():
        made.append(1)
        return ({3: plane.copy(), 4: plane.copy()}, 3, plane > 0.5)

    first = strategy.memo(("box",), build)
    assert strategy._objects.used_bytes == 2 * 4 * 10 * 4 + 4 * 10  # two float32 boxes and one bool box
    obj, k, mask = strategy.memo(("box",), build)
    assert made == [1] and k == 3 and np.array_equal(obj[3], plane) and np.array_equal(obj[4], plane)
    assert np.array_equal(mask, plane > 0.5) and obj[3].shape == (64, 64)
    obj[3][:] = 1.0  # a caller's change stays its own
    again, _, _ = strategy.memo(("box",), build)
    assert np.array_equal(again[3], plane) and np.array_equal(first[0][4], plane)


def _prompts(clicks):
    from samadapt3d.engines.base import ModelPrompts

    pos = [p for positive, p in clicks if positive]
    neg = [p for positive, p in clicks if not positive]
    return ModelPrompts(positive=np.asarray(pos, float).reshape(-1, 3), negative=np.asarray(neg, float).reshape(-1, 3),
                        order=tuple("positive" if positive else "negative" for positive, _ in clicks))


def test_the_fold_changes_in_place_only_when_no_earlier_result_refers_to_it():
    """A click on a 512 x 512 x 300 CT no longer copies the 375 MiB fold, unless the caller still holds the earlier
    result: that result never changes under it. A cancelled in-place run is forgotten, not half-kept."""
    from test_slice_contract import make_engine, toy_volume

    from samadapt3d.errors import CancelledError

    clicks = [(True, (3, 10, 10)), (True, (3, 28, 10)), (False, (3, 5, 5))]
    fresh = [make_engine(toy_volume()).run(_prompts(clicks[:n])).copy() for n in (1, 2, 3)]
    engine = make_engine(toy_volume())

    held = engine.run(_prompts(clicks[:1]))  # held: the next run must copy
    kept = held.copy()
    second = engine.run(_prompts(clicks[:2]))
    assert np.array_equal(held, kept) and np.array_equal(held, fresh[0]) and np.array_equal(second, fresh[1])
    assert not np.shares_memory(held, second)
    del held, kept
    address = second.__array_interface__["data"][0]  # an address: holding the array itself would lend it
    del second  # nothing refers to the result: the next click works in the same array
    third = engine.run(_prompts(clicks[:3]))
    assert third.__array_interface__["data"][0] == address and np.array_equal(third, fresh[2])
    del third

    cancel = __import__("threading").Event()

    def cancel_at_once(fraction, message):
        cancel.set()
        if fraction > 0:
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        engine.run(_prompts(clicks[:3] + [(True, (3, 12, 26))]), progress=cancel_at_once, cancel=cancel)
    assert engine.strategy._last is None
    assert np.array_equal(engine.run(_prompts(clicks[:2])), fresh[1])  # recomputed from the kept objects
