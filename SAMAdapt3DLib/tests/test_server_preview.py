"""Previews through the server: `GET /sessions/{id}/preview` and RemoteSession(preview=...) show a running click's
mask so far, as a delta from the mask the client holds, and the result is the in-process session's."""
from __future__ import annotations

import time

import numpy as np
import pytest

from samadapt3d.client import ServerClient
from samadapt3d.engines import slices
from samadapt3d.server.state import ServerConfig
from samadapt3d.session import InteractiveSession
from samadapt3d.volume import Volume

from test_server_toymodels import serve_in_thread
from test_slice_contract import ToySliceModel
from test_slice_preview import CLICK, tall_volume

TOKEN = "preview-token"
DECODE_S = 0.02  # per box: a click's walk over the tall volume's 31 slices takes about a second


class SlowToySliceModel(ToySliceModel):
    family = "toy-slice-slow"

    def decode(self, *args, **kwargs):
        time.sleep(DECODE_S)
        return super().decode(*args, **kwargs)


def loader(name, sam_checkpoint=None, device="cpu"):
    assert name == "toy-slice-slow"
    return SlowToySliceModel().eval()


@pytest.fixture(scope="module")
def url():
    with serve_in_thread(ServerConfig(token=TOKEN, workers=2, max_sessions=4), loader) as address:
        yield address


def image() -> Volume:
    return Volume(tall_volume(), spacing=(1.0, 1.0, 3.0))


def test_a_remote_session_shows_the_servers_previews(url, monkeypatch):
    monkeypatch.setattr(slices, "PREVIEW_EVERY_S", 0.05)  # read when the server's session makes its engine
    client = ServerClient(url, token=TOKEN)
    shown: list[np.ndarray] = []
    remote = client.open_session(client.load_model("toy-slice-slow", device="cpu"), preview=shown.append)
    remote.set_image(image())
    local = InteractiveSession(SlowToySliceModel())
    local.set_image(image())

    first = remote.add_point(CLICK[::-1])
    assert np.array_equal(first, local.add_point(CLICK[::-1]))
    assert len(shown) >= 2
    for mask in shown:
        assert mask.shape == first.shape and not mask.flags.writeable and np.all(mask <= first)
    assert shown[0].sum() < first.sum()

    # the second click's previews are deltas on the mask the client holds: the first object is in every one
    shown.clear()
    second = remote.add_point((33, 3, 20))
    assert np.array_equal(second, local.add_point((33, 3, 20)))
    assert shown and all(np.all(first <= m) and np.all(m <= second) for m in shown)

    # between calls there is nothing to show; a client out of step would get the preview whole
    got = client.call("GET", f"/sessions/{remote.session_id}/preview?base=0")
    assert got["delta"] is None and got["preview"] >= 3
    remote.close()


def test_without_a_preview_callback_no_preview_is_asked_for(url, monkeypatch):
    monkeypatch.setattr(slices, "PREVIEW_EVERY_S", 0.05)
    client = ServerClient(url, token=TOKEN)
    asked = []
    call = client.call

    def counting(method, path, *args, **kwargs):
        asked.append(path)
        return call(method, path, *args, **kwargs)

    client.call = counting
    remote = client.open_session(client.load_model("toy-slice-slow", device="cpu"))
    remote.set_image(image())
    assert remote.add_point(CLICK[::-1]).any()
    assert not any("/preview" in path or "/progress" in path for path in asked)
    remote.close()
