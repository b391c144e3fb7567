"""`samadapt3d serve` through its client, served in this process on loopback: every session operation gives the
in-process InteractiveSession's masks voxel for voxel; many clients at once; cancel; expiry; `auto`."""
import threading
import time

import numpy as np
import pytest

from samadapt3d.automatic import segment_all_classes
from samadapt3d.client import ServerClient, ServerError
from samadapt3d.client import wire
from samadapt3d.errors import CancelledError, InputError, ModelNotFoundError, SAMAdapt3DError
from samadapt3d.models import load_model
from samadapt3d.server.state import ServerConfig
from samadapt3d.session import InteractiveSession, Prompt
from samadapt3d.volume import Volume
from test_server_toymodels import SLOW_ENCODE_S, FastToyCropModel, SlowToyCropModel, ToyClassModel, serve_in_thread
from test_session import phantom
from test_session_toymodel import ToyCropModel
from test_volume import rotation

TOKEN = "test-token"
TOYS = {"toy-crop": ToyCropModel, "toy-slow": SlowToyCropModel, "toy-fast": FastToyCropModel,
        "toy-classes": ToyClassModel}


def toy_loader(name, sam_checkpoint=None, device="cpu"):
    if name in TOYS:
        return TOYS[name]().eval()
    return load_model(name, sam_checkpoint=sam_checkpoint, device=device)


@pytest.fixture(scope="module")
def url():
    with serve_in_thread(ServerConfig(token=TOKEN, workers=4, max_sessions=16), toy_loader) as address:
        yield address


@pytest.fixture
def client(url):
    return ServerClient(url, token=TOKEN)


def volume():
    return Volume(phantom(), (0.9, 1.2, 2.5), (-20, 30, 5), rotation((0.2, -0.1, 0.3)) @ np.diag([1, -1, 1]))


def both(client, model="toy-crop", vol=None):
    """(remote session, in-process session) on the same image."""
    vol = volume() if vol is None else vol
    remote = client.open_session(client.load_model(model, device="cpu"))
    remote.set_image(vol)
    local = InteractiveSession(TOYS[model]())
    local.set_image(vol)
    return remote, local


def assert_same(remote, local, returned=None):
    if returned is not None:
        assert np.array_equal(returned[0], returned[1])
        assert returned[0].dtype == bool and not returned[0].flags.writeable
    assert np.array_equal(remote.mask, local.mask)
    assert remote.prompts == local.prompts
    assert (remote.can_undo, remote.can_redo) == (local.can_undo, local.can_redo)
    assert (remote.seed_mask is None) == (local.seed_mask is None)
    if local.seed_mask is not None:
        assert np.array_equal(remote.seed_mask, local.seed_mask)
    assert (remote.probability is None) == (local.probability is None) == (not remote.has_probability)
    assert remote.has_probability == local.has_probability
    if local.probability is not None:
        assert remote.probability.dtype == np.float32 and np.array_equal(remote.probability, local.probability)


def test_every_session_operation_matches_the_in_process_session(client):
    remote, local = both(client)
    vol = remote.volume
    ras = vol.index_to_physical([12.0, 12.0, 10.0], "ras")
    steps = [
        lambda s: s.add_point((5, 5, 3)),
        lambda s: s.add_point(ras, space="ras"),
        lambda s: s.add_point(vol.index_to_physical([12, 12, 10], "lps"), positive=False, space="lps", view_axis=2),
        lambda s: s.set_box((3, 2, 1), (8, 9, 5)),
        lambda s: s.undo(), lambda s: s.undo(), lambda s: s.redo(),
        lambda s: s.clear_box(), lambda s: s.clear_box(), lambda s: s.remove_prompt(0),
        lambda s: s.set_seed_mask((vol.array == 300).astype(np.float32)),
        lambda s: s.add_point((5, 5, 3)), lambda s: s.add_point((5, 4, 10), positive=False),
        lambda s: s.undo(), lambda s: s.reset(), lambda s: s.undo(), lambda s: s.redo(), lambda s: s.undo(),
        lambda s: s.segment([(5, 5, 3)], [(12, 12, 10)], box=((3, 2, 1), (8, 9, 5))),
        lambda s: s.segment([(13, 11, 9)], seed=vol.array == 100),
        lambda s: s.set_seed_mask(None), lambda s: s.undo(),
    ]
    for n, step in enumerate(steps):
        assert_same(remote, local, (step(remote), step(local)))
    assert remote.mask.any() and len(remote.prompts) == 1
    session_id = remote.session_id
    client.health()  # asking the same server again does not look like a restart
    assert_same(remote, local, (remote.undo(), local.undo()))
    assert remote.session_id == session_id
    assert np.array_equal(remote.to_index(ras, "ras"), local.to_index(ras, "ras"))
    assert remote.box_to_index((1, 1, 1), (30, 4, 4)) == local.box_to_index((1, 1, 1), (30, 4, 4))
    assert remote.prepare() == local.prepare() == 0
    assert remote.prepare(background=True) == local.prepare(background=True) == 0  # the option reaches the server
    assert not remote.busy


def test_a_click_sends_only_the_changed_box(client):
    vol = Volume(np.pad(phantom(), ((0, 40), (0, 40), (0, 40))))  # mostly empty: a click changes a small box
    remote, local = both(client, vol=vol)
    answer = client.call("POST", f"/sessions/{remote.session_id}/point", {"coord": [5, 5, 3], "base": remote._version})
    k0, k1, j0, j1, i0, i1 = answer["delta"]["box"]
    expected = np.argwhere(local.add_point((5, 5, 3)))
    assert (k0, j0, i0) == tuple(expected.min(axis=0)) and (k1, j1, i1) == tuple(expected.max(axis=0) + 1)
    assert len(answer["delta"]["mask"]["bits"]) < 200  # bits of the box only, compressed


def test_mask_deltas_rebuild_any_mask_and_their_box_is_tight():
    rng = np.random.default_rng(0)
    shape = (9, 10, 16)
    old = rng.random(shape) > 0.7
    old[:2] = old[-3:] = False  # empty planes at both ends, as most masks have
    for _ in range(20):
        new = old.copy()
        lo = rng.integers(0, shape)
        hi = lo + rng.integers(1, 4, 3)
        new[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] ^= True
        old_planes = old.reshape(shape[0], -1).any(axis=1)
        sent = wire.mask_delta(old, new, old_planes)
        assert np.array_equal(sent.planes, new.reshape(shape[0], -1).any(axis=1))
        delta = wire.MaskDelta.from_json(sent.to_json(), new.size)
        assert np.array_equal(delta.apply(old, shape), new)
        tracked, planes = delta.apply_tracked(old, shape, old_planes)  # copies only the occupied planes
        assert np.array_equal(tracked, new) and np.array_equal(planes, sent.planes)
        changed = np.argwhere(old != new)
        assert delta.box == (*sum(zip(changed.min(0), changed.max(0) + 1), ()),)
        assert np.array_equal(wire.MaskDelta.from_json(wire.mask_delta(None, new).to_json(), new.size)
                              .apply(None, shape), new)
        old = new
    assert wire.mask_delta(old, old).box is None


def test_inflate_stops_at_the_declared_size():
    bomb = wire.deflate(bytes(50_000_000))  # 50 MB of zeros in ~50 kB
    started = time.perf_counter()
    with pytest.raises(InputError, match="more than the declared"):
        wire.inflate(bomb, 1000)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(InputError, match="truncated"):
        wire.inflate(wire.deflate(b"abc" * 1000)[:-6], 3000)
    assert wire.inflate(wire.deflate(b"abc" * 1000), 3000) == b"abc" * 1000


def test_re_uploading_an_image_sends_nothing(client, monkeypatch):
    array = (np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) * 3)
    first = client.upload_image(array)
    puts = []
    real = client.transport.request
    monkeypatch.setattr(client.transport, "request", lambda m, *a, **k: (puts.append(m), real(m, *a, **k))[1])
    assert client.upload_image(array.copy()) == first
    assert "PUT" not in puts
    assert client.upload_image(array + 1) != first and "PUT" in puts


def test_progress_reaches_the_callback_and_cancel_stops_a_run(client):
    remote, _ = both(client, model="toy-slow")
    seen = []
    remote.progress = lambda fraction, message: seen.append((fraction, message))
    mask = remote.add_point((5, 5, 3))
    assert mask.any() and seen and all(0.0 <= f <= 1.0 for f, _ in seen)
    before = (remote.mask.copy(), remote.prompts)
    errors = []
    worker = threading.Thread(target=lambda: _catch(errors, remote.add_point, (12, 12, 10)))
    started = time.perf_counter()
    worker.start()
    while not client.call("GET", f"/sessions/{remote.session_id}/progress")["busy"]:
        assert time.perf_counter() - started < 5
        time.sleep(0.02)
    health_started = time.perf_counter()
    client.health()  # the server answers while a model runs
    assert time.perf_counter() - health_started < 0.5
    remote.cancel()
    worker.join(10)
    assert len(errors) == 1 and isinstance(errors[0], CancelledError)
    assert time.perf_counter() - started < 2 * SLOW_ENCODE_S + 1
    assert np.array_equal(remote.mask, before[0]) and remote.prompts == before[1]


def _catch(errors, fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)


def test_eight_clients_twenty_prompts_each_lose_and_cross_nothing(url):
    vol = volume()
    rng = np.random.default_rng(5)
    size = np.asarray(vol.size_ijk)
    plans = [[(tuple(int(v) for v in rng.integers(0, size)), bool(rng.random() > 0.3)) for _ in range(20)]
             for _ in range(8)]
    expected = []
    for plan in plans:
        local = InteractiveSession(FastToyCropModel())
        local.set_image(vol)
        mask = [local.add_point(ijk, positive=pos) for ijk, pos in plan][-1]
        prompts = [Prompt("positive" if pos else "negative", tuple(float(v) for v in ijk)) for ijk, pos in plan]
        expected.append((mask, prompts))
    results, errors = [None] * 8, []

    def user(n):
        try:
            c = ServerClient(url, token=TOKEN)
            s = c.open_session(c.load_model("toy-fast", device="cpu"))
            s.set_image(vol)
            masks = [s.add_point(ijk, positive=pos) for ijk, pos in plans[n]]
            results[n] = (masks[-1], s.prompts, sum(m.any() for m in masks))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(n,)) for n in range(8)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and time.perf_counter() - started < 60
    for (mask, prompts, nonempty), (want_mask, want_prompts) in zip(results, expected):
        assert prompts == want_prompts and len(prompts) == 20
        assert np.array_equal(mask, want_mask) and nonempty > 0


def test_auto_gives_the_in_process_label_map(client):
    vol = volume()
    labels, names = client.auto(client.load_model("toy-classes", device="cpu"), vol)
    want, want_names = segment_all_classes(ToyClassModel(), vol)
    assert names == want_names == ("hundred", "two-hundred")
    assert labels.dtype == want.dtype and np.array_equal(labels, want)
    assert set(np.unique(labels)) == {0, 1, 2}
    with pytest.raises(InputError, match="prompted"):
        client.auto(client.load_model("toy-crop", device="cpu"), vol)
    with pytest.raises(SAMAdapt3DError, match="fixed classes"):
        client.open_session(client.load_model("toy-classes", device="cpu"))


def test_models_info_and_unknown_model(client):
    model_id = client.load_model("toy-crop", device="cpu")
    assert client.load_model("toy-crop", device="cpu") == model_id  # loaded once
    listed = client.models()
    assert "litemedsam" in listed["builtin"]
    assert any(m["model_id"] == model_id and m["family"] == "toy-crop" for m in listed["loaded"])
    info = client.info()
    assert info["device"]["resolved"] == "cpu" and info["memory"]["rss_bytes"] > 0 and info["version"]
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        client.load_model("no-such-model")
    with pytest.raises(ServerError, match="unknown model"):
        client.open_session("0123456789abcdef")


def test_expired_and_evicted_sessions_are_rebuilt_by_the_client():
    config = ServerConfig(token=None, idle_timeout=1.0, max_sessions=2)
    with serve_in_thread(config, toy_loader) as address:
        client = ServerClient(address)
        remote, local = both(client)
        assert_same(remote, local, (remote.add_point((5, 5, 3)), local.add_point((5, 5, 3))))
        time.sleep(1.5)
        with pytest.raises(ServerError, match="expired after 1 s idle") as info:
            client.call("GET", f"/sessions/{remote.session_id}/progress")
        assert info.value.status == 410
        old_id = remote.session_id
        assert_same(remote, local, (remote.add_point((12, 12, 10)), local.add_point((12, 12, 10))))
        assert remote.session_id != old_id  # rebuilt from its image and prompts
        others = [client.open_session(client.load_model("toy-crop", device="cpu")) for _ in range(2)]
        with pytest.raises(ServerError, match="make room|expired") as info:
            client.call("GET", f"/sessions/{remote.session_id}/progress")
        assert info.value.status == 410 and len(client.sessions()) == 2 and others
        assert_same(remote, local, (remote.undo(), local.undo()))  # rebuilt again, same state after undo
