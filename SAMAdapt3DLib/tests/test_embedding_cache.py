"""The slice embedding cache (engines/embedding_cache.py) with a tiny counting SliceModel: memory LRU, compact
entries, the on-disk store (across processes, corrupt files, size bound) and the background prefetch."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from samadapt3d.engines.embedding_cache import (
    CACHE_DIR_ENV, DISK_CACHE_ENV, DiskEmbeddingStore, SliceEmbeddingCache, outward_order, user_cache_dir)
from samadapt3d.engines.slices import SliceEngine

TINY_MODEL = textwrap.dedent('''
    import numpy as np, torch
    from samadapt3d.families.base import SliceModel
    from samadapt3d.preprocess import Preset
    from samadapt3d.runtime import EncoderRuntime

    class Tiny(SliceModel, EncoderRuntime):
        """Embedding = 4x4 average pool of the slice, 8 channels; counts its encoder calls."""
        image_size = 16

        def __init__(self, exact=True, identity="tiny-v1", delay=0.0):
            super().__init__(Preset(name="tiny"))
            self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))
            self.exact, self.identity, self.delay, self.calls = exact, identity, delay, []

        def preprocess_slice(self, slice2d):
            return torch.as_tensor(np.asarray(slice2d, np.float32))[None].expand(3, -1, -1), slice2d.shape

        def embed(self, images):
            import time
            time.sleep(self.delay)
            self.calls.append(images.shape)
            pooled = torch.nn.functional.avg_pool2d(images[:, :1], 4)
            return pooled * self.scale[None, :, None, None]

        def decode(self, embeddings, points=None, boxes=None, mask_input=None, multimask_output=False):
            raise NotImplementedError

        def embedding_identity(self):
            return self.identity

        def embeddings_exact(self):
            return self.exact
''')
_namespace: dict = {}
exec(compile(TINY_MODEL, "tiny_model", "exec"), _namespace)
Tiny = _namespace["Tiny"]


def _volume(depth=6, seed=0):
    return np.random.default_rng(seed).normal(size=(depth, 16, 16)).astype(np.float32)


def test_memory_hits_and_byte_bound():
    model = Tiny()
    cache = SliceEmbeddingCache(model, memory_bytes=10**9)
    cache.set_image(_volume())
    first = cache.get(0, 2)
    again = cache.get(0, 2)
    assert again is first and len(model.calls) == 1 and cache.stats["cache_hits"] == 1
    small = SliceEmbeddingCache(Tiny(), memory_bytes=int(first.nbytes * 2.5))
    small.set_image(_volume())
    for k in range(6):
        small.get(0, k)
    assert small.used_bytes <= first.nbytes * 2.5 and not small.cached(0, 0) and small.cached(0, 5)


def test_same_pixels_reuse_the_embedding_after_set_image():
    model = Tiny()
    cache = SliceEmbeddingCache(model)
    vol = _volume()
    cache.set_image(vol)
    cache.get(0, 3)
    cache.set_image(vol[::-1].copy())  # the same slices in another order
    cache.get(0, 2)
    assert len(model.calls) == 1


def test_inexact_embeddings_are_kept_compact_and_decoded_as_float32():
    exact, compact = Tiny(exact=True), Tiny(exact=False)
    vol = _volume()
    a, b = SliceEmbeddingCache(exact), SliceEmbeddingCache(compact)
    a.set_image(vol), b.set_image(vol)
    da, db = a.get(0, 1), b.get(0, 1)
    assert da.packed.dtype == torch.float32 and db.packed.dtype == torch.float16
    assert db.embedding.dtype == torch.float32
    assert db.packed.nbytes * 2 == da.packed.nbytes
    assert torch.allclose(da.embedding, db.embedding, rtol=1e-3, atol=1e-3)


def test_disk_store_skips_the_encoder_for_a_new_cache(tmp_path):
    vol = _volume()
    first = SliceEmbeddingCache(Tiny(), disk=DiskEmbeddingStore(tmp_path))
    first.set_image(vol)
    expected = [first.get(0, k).embedding for k in range(6)]
    model = Tiny()
    second = SliceEmbeddingCache(model, disk=DiskEmbeddingStore(tmp_path))
    second.set_image(vol)
    got = [second.get(0, k).embedding for k in range(6)]
    assert model.calls == [] and second.stats["disk_hits"] == 6 and second.stats["embedded"] == 0
    assert all(torch.equal(x, y) for x, y in zip(expected, got))
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_disk_entries_are_keyed_by_model_identity(tmp_path):
    vol = _volume()
    a = SliceEmbeddingCache(Tiny(identity="weights-a"), disk=DiskEmbeddingStore(tmp_path))
    a.set_image(vol)
    a.get(0, 0)
    other = Tiny(identity="weights-b")
    b = SliceEmbeddingCache(other, disk=DiskEmbeddingStore(tmp_path))
    b.set_image(vol)
    b.get(0, 0)
    assert len(other.calls) == 1  # another model (or precision) never reads a's entry
    unpersisted = Tiny(identity=None)
    c = SliceEmbeddingCache(unpersisted, disk=DiskEmbeddingStore(tmp_path / "c"))
    c.set_image(vol)
    c.get(0, 0)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_disk_entries_are_ignored_and_replaced(tmp_path, damage):
    vol = _volume()
    writer = SliceEmbeddingCache(Tiny(), disk=DiskEmbeddingStore(tmp_path))
    writer.set_image(vol)
    good = writer.get(0, 0).embedding
    (path,) = list(tmp_path.rglob("*.emb"))
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[-5] ^= 0xFF
    else:
        raw = bytearray(b"not an embedding")
    path.write_bytes(bytes(raw))
    model = Tiny()
    reader = SliceEmbeddingCache(model, disk=DiskEmbeddingStore(tmp_path))
    reader.set_image(vol)
    assert torch.equal(reader.get(0, 0).embedding, good) and len(model.calls) == 1
    fresh = SliceEmbeddingCache(Tiny(), disk=DiskEmbeddingStore(tmp_path))
    fresh.set_image(vol)
    fresh.get(0, 0)
    assert fresh.stats["disk_hits"] == 1  # the re-embedded entry was written back


def test_disk_store_stays_within_its_bound(tmp_path):
    entry = SliceEmbeddingCache(Tiny(), disk=DiskEmbeddingStore(tmp_path))
    entry.set_image(_volume(1))
    entry.get(0, 0)
    size = next(tmp_path.rglob("*.emb")).stat().st_size
    store = DiskEmbeddingStore(tmp_path / "bounded", max_bytes=size * 5)
    cache = SliceEmbeddingCache(Tiny(), disk=store)
    cache.set_image(_volume(40, seed=1))
    for k in range(40):
        cache.get(0, k)
    store.prune()
    files = list((tmp_path / "bounded").rglob("*.emb"))
    assert 0 < len(files) <= 5 and sum(f.stat().st_size for f in files) <= size * 5


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert user_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert user_cache_dir() == tmp_path / "xdg" / "samadapt3d"
    monkeypatch.setenv(DISK_CACHE_ENV, "off")
    assert DiskEmbeddingStore.default() is None


def test_outward_order_covers_every_slice_once():
    assert list(outward_order(2, 6)) == [2, 3, 1, 4, 0, 5]
    assert sorted(outward_order(9, 10)) == list(range(10))
    assert list(outward_order(0, 1)) == [0]


def test_prefetch_embeds_outward_and_stops_when_cancelled():
    model = Tiny(delay=0.01)
    cache = SliceEmbeddingCache(model)
    vol = _volume(30, seed=2)
    cache.set_image(vol)
    done = threading.Event()
    cache.prefetch(0, 12, on_done=lambda n: done.set())
    assert done.wait(10)
    assert len(model.calls) == 30 and all(cache.cached(0, k) for k in range(30))
    slow = Tiny(delay=0.05)
    cache2 = SliceEmbeddingCache(slow)
    cache2.set_image(vol)
    cache2.prefetch(0, 0)
    time.sleep(0.12)
    cache2.get(0, 29)  # the caller's slice is served between two prefetched ones
    cache2.stop_prefetch()
    count = len(slow.calls)
    time.sleep(0.15)
    assert len(slow.calls) == count < 30 and not cache2.prefetching() and cache2.cached(0, 29)


def test_engine_uses_the_disk_store_across_processes(tmp_path):
    """A second process on the same image embeds no slice (what repeated CLI calls and a server restart do)."""
    vol_path = tmp_path / "vol.npy"
    np.save(vol_path, _volume(5, seed=3))
    script = TINY_MODEL + textwrap.dedent(f'''
        from samadapt3d.engines.embedding_cache import DiskEmbeddingStore
        from samadapt3d.engines.slices import SliceEngine
        torch.manual_seed(0)
        engine = SliceEngine(Tiny())  # the default: the user's store
        engine.set_image(np.load({str(vol_path)!r}))
        engine.warm_up(axis=0)
        print("embedded", engine.stats["embedded"], "disk", engine.stats["disk_hits"])
    ''')
    env = {**os.environ, CACHE_DIR_ENV: str(tmp_path / "cache")}
    env.pop(DISK_CACHE_ENV, None)
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert runs[0].stdout.split() == ["embedded", "5", "disk", "0"]
    assert runs[1].stdout.split() == ["embedded", "0", "disk", "5"]


def test_engine_default_store_is_the_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(DISK_CACHE_ENV, raising=False)
    engine = SliceEngine(Tiny())
    engine.set_image(_volume(3))
    engine.warm_up(axis=0)
    assert engine.stats["embedded"] == 3 and len(list((tmp_path / "embeddings").rglob("*.emb"))) == 3
    off = SliceEngine(Tiny(), disk_cache=None)
    off.set_image(_volume(3, seed=5))
    off.warm_up(axis=0)
    assert off.stats["embedded"] == 3 and len(list((tmp_path / "embeddings").rglob("*.emb"))) == 3


def test_get_many_embeds_missing_slices_in_one_batch(tmp_path):
    vol = _volume(6, seed=6)
    single = SliceEmbeddingCache(Tiny(exact=False))
    single.set_image(vol)
    expected = [single.get(0, k).embedding for k in range(6)]
    model = Tiny(exact=False)
    cache = SliceEmbeddingCache(model, disk=DiskEmbeddingStore(tmp_path))
    cache.set_image(vol)
    cache.get(0, 1)
    got = cache.get_many(0, [0, 1, 2, 3])
    assert [tuple(c) for c in model.calls] == [(1, 3, 16, 16), (3, 3, 16, 16)]  # slice 1 was cached
    assert all(torch.equal(g.embedding, e) for g, e in zip(got, expected[:4]))
    again = SliceEmbeddingCache(Tiny(exact=False), disk=DiskEmbeddingStore(tmp_path))
    again.set_image(vol)
    again.get_many(0, [0, 1, 2, 3, 4])
    assert again.stats["disk_hits"] == 4 and again.stats["embedded"] == 1


class _Ordered(Tiny):
    """Tiny that records which slice it embeds (the test volumes hold slice k's number in every pixel)."""

    def __init__(self, delay=0.0):
        super().__init__(delay=delay)
        self.order = []

    def embed(self, images):
        self.order.extend(int(round(float(v))) for v in images[:, 0].mean(dim=(1, 2)))
        return super().embed(images)


def _numbered(depth):
    return np.broadcast_to(np.arange(depth, dtype=np.float32)[:, None, None], (depth, 16, 16)).copy()


def _wait_idle(cache, timeout=20.0):
    start = time.monotonic()
    while cache.prefetching():
        assert time.monotonic() - start < timeout, "prefetch did not finish"
        time.sleep(0.01)


def test_engine_prefetch_pauses_for_a_run_and_restarts_from_the_click():
    from samadapt3d.engines.base import ModelPrompts

    model = _Ordered(delay=0.02)
    engine = SliceEngine(model, disk_cache=None)
    engine.set_image(_numbered(40))
    seen = {}

    def run(axis, prompts, seed, progress, cancel, preview=None):  # the strategy, replaced: what the run sees
        seen["prefetching"] = engine.embeddings.prefetching()
        count = len(model.order)
        time.sleep(0.15)
        seen["embedded during the run"] = len(model.order) - count
        engine.slice_data(axis, 30)  # the click's own slice: embedded by the run itself
        return np.zeros(engine.image.shape, np.float32)

    engine.strategy.run = run
    engine.prefetch(axis=0, centre=0)
    time.sleep(0.1)
    engine.run(ModelPrompts(positive=[[30.0, 8.0, 8.0]]))
    assert seen == {"prefetching": False, "embedded during the run": 0}
    after_click = model.order.index(30) + 1
    _wait_idle(engine.embeddings)
    assert model.order[:3] == [0, 1, 2]  # from the given centre (0) outward
    # after the click: outward from slice 30 (31, 29, 32, ...), skipping what is cached
    assert model.order[after_click:after_click + 4] == [31, 29, 32, 28]
    assert sorted(model.order) == list(range(40))  # every slice once
    engine.set_image(_numbered(40) + 100)  # a new image: no prefetch until asked again
    engine.run(ModelPrompts(positive=[[5.0, 8.0, 8.0]]))
    assert not engine.embeddings.prefetching()


def test_prefetch_stops_when_the_memory_budget_is_full():
    model = _Ordered()
    probe = SliceEmbeddingCache(model)
    probe.set_image(_numbered(30))
    entry = probe.get(0, 0).nbytes
    model.order.clear()
    cache = SliceEmbeddingCache(model, memory_bytes=6 * entry)
    cache.set_image(_numbered(30))
    cache.prefetch(0, 15)
    _wait_idle(cache)
    assert model.order == [15, 16, 14, 17, 13, 18]  # then full: nothing evicted, the centre stays
    assert all(cache.cached(0, k) for k in (13, 14, 15, 16, 17, 18))


def test_session_prepare_in_the_background_returns_at_once():
    from samadapt3d.session import InteractiveSession
    from samadapt3d.volume import Volume

    model = _Ordered(delay=0.03)
    session = InteractiveSession(model, engine=SliceEngine(model, disk_cache=None))
    session.set_image(Volume(_numbered(20), spacing=(1.0, 1.0, 3.0)))  # k (array axis 0) the acquisition axis
    start = time.monotonic()
    assert session.prepare(background=True) == 0
    assert time.monotonic() - start < 0.5 * 60 * 0.03  # did not embed the volume first
    _wait_idle(session.engine.embeddings)
    engine = session.engine  # the preset resamples (1 mm) and normalises: every model slice, whatever its number
    axis = engine.default_axis()
    assert engine.image.shape[axis] == 60 and all(engine.embeddings.cached(axis, k) for k in range(60))
    session.set_image(Volume(_numbered(20) + 50, spacing=(1.0, 1.0, 3.0)))
    assert not session.engine.embeddings.prefetching()


def test_prefetch_builds_the_model_backends_first():
    class Warming(_Ordered):
        def warm_backends(self):
            self.order.append("warm")

    model = Warming()
    cache = SliceEmbeddingCache(model)
    cache.set_image(_numbered(5))
    cache.prefetch(0, 2)
    _wait_idle(cache)
    assert model.order == ["warm", 2, 3, 1, 4, 0]


def _min_max(slice2d):
    """The base SliceModel's rule written out: min-max to [0, 1]."""
    s = np.asarray(slice2d, np.float64)
    return (s - s.min()) / (s.max() - s.min())


def test_an_entry_holds_its_embedding_only_and_its_normalised_slice_is_read_from_the_image():
    vol = (np.random.default_rng(3).integers(-1000, 2000, (5, 16, 12))).astype(np.int16)  # a CT-like int16 volume
    cache = SliceEmbeddingCache(Tiny())
    cache.set_image(vol)
    for axis, index in [(0, 1), (1, 7), (2, 11), (2, 0)]:
        data = cache.get(axis, index)
        assert data.nbytes == data.packed.numel() * data.packed.element_size()
        image01 = data.image01
        assert image01.dtype == np.float32 and not image01.flags.writeable
        np.testing.assert_allclose(image01, _min_max(np.take(vol, index, axis=axis)), atol=1e-6)
    assert cache.used_bytes == sum(cache.get(a, k).nbytes for a, k in [(0, 1), (1, 7), (2, 11), (2, 0)])


def test_a_kept_entry_found_again_in_a_reordered_copy_reads_its_slice_there():
    vol = _volume(depth=6, seed=4)
    cache = SliceEmbeddingCache(Tiny())
    cache.set_image(vol)
    old = cache.get(0, 1)
    cache.set_image(vol[::-1].copy())  # slice 1 is now slice 4
    with pytest.raises(RuntimeError):
        old.image01  # not bound to the new image until looked up there
    again = cache.get(0, 4)
    assert again is old
    np.testing.assert_allclose(again.image01, _min_max(vol[1]), atol=1e-6)


def test_normalised_slices_kept_stay_within_their_bound():
    from samadapt3d.engines.embedding_cache import NormalisedSlices

    vol = _volume(depth=40, seed=5)
    cache = SliceEmbeddingCache(Tiny())
    cache._normalised = NormalisedSlices(Tiny.normalize_slice, cache.slice2d, max_bytes=3 * 16 * 16 * 4)
    cache.set_image(vol)
    for k in range(40):
        np.testing.assert_allclose(cache.get(0, k).image01, _min_max(vol[k]), atol=1e-6)
    assert cache._normalised._recent.used_bytes <= 3 * 16 * 16 * 4
    np.testing.assert_allclose(cache.get(0, 0).image01, _min_max(vol[0]), atol=1e-6)  # computed again


class _Releasing(_Ordered):
    """_Ordered that records, at each release_memory, how many slices it had embedded."""

    def __init__(self, delay=0.0):
        super().__init__(delay=delay)
        self.released = []

    def release_memory(self):
        self.released.append(len(self.order))


def test_the_encoder_gives_its_memory_back_when_nothing_is_left_to_embed():
    from samadapt3d.engines.base import ModelPrompts

    model = _Releasing()
    cache = SliceEmbeddingCache(model)
    cache.set_image(_numbered(12))
    cache.prefetch(0, 6)
    _wait_idle(cache)
    assert model.released == [12]  # after the last slice, once
    full = _Releasing()
    small = SliceEmbeddingCache(full, memory_bytes=3 * 8 * 4 * 4 * 4)  # three float32 [1, 8, 4, 4] entries
    small.set_image(_numbered(12))
    small.prefetch(0, 6)
    _wait_idle(small)
    assert full.released == [3]  # the budget full: nothing more to embed
    slow = _Releasing(delay=0.05)
    stopped = SliceEmbeddingCache(slow)
    stopped.set_image(_numbered(30))
    stopped.prefetch(0, 0)
    time.sleep(0.1)
    stopped.stop_prefetch()  # what a click does: it embeds next, so nothing is given back
    assert slow.released == []

    engine_model = _Releasing()
    engine = SliceEngine(engine_model, disk_cache=None)
    engine.set_image(_numbered(20))
    engine.strategy.run = lambda axis, prompts, *rest: np.zeros(engine.image.shape, np.float32)
    engine.run(ModelPrompts(positive=[[5.0, 8.0, 8.0]]))
    assert engine_model.released == [0]  # a run without background embedding: given back after it
    engine.prefetch(axis=0, centre=0)
    _wait_idle(engine.embeddings)
    count = len(engine_model.released)
    engine.run(ModelPrompts(positive=[[5.0, 8.0, 8.0]]))  # the prefetch restarts after the run instead
    _wait_idle(engine.embeddings)
    assert engine_model.released[count:] == [20]  # given back by the restarted prefetch, when it is done
