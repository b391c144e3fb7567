"""The default LiteMedSAM on the real slicerio chest CT through `samadapt3d serve`: one click gives the in-process
session's mask voxel for voxel. The prompt is a box around the right lung on a few of its slices: on CPU a box
costs about a third of a click (whose engine tries several candidate boxes), so the case stays short."""
import importlib.util

import numpy as np
import pytest

from samadapt3d.client import ServerClient
from samadapt3d.server.state import ServerConfig
from samadapt3d.session import InteractiveSession
from samadapt3d.volume import Volume
from test_server_toymodels import require, serve_in_thread

#: slices k0..k1 (exclusive) of the CT kept around the click
SLICES = (10, 14)


@pytest.fixture(scope="module")
def model():
    require(importlib.util.find_spec("slicerio") is not None, "slicerio (the chest CT) is not installed")
    from samadapt3d.families import litemedsam
    from samadapt3d.models import load_model

    try:
        litemedsam.wheel_checkpoint_path()
    except Exception as exc:  # noqa: BLE001
        require(False, f"the LiteMedSAM weights are not installed: {exc}")
    return load_model("litemedsam", device="cpu")


def test_a_box_on_the_chest_ct_matches_the_in_process_session(model):
    from samadapt3d.demo import dice, load_demo_case

    ct, labels = load_demo_case()
    k0, k1 = SLICES
    volume = Volume(ct.array[k0:k1], ct.spacing, ct.index_to_physical([0, 0, k0]), ct.direction)
    lung = labels["right lung"][k0:k1]
    kji = np.argwhere(lung)
    box = (tuple(kji.min(axis=0)[::-1]), tuple(kji.max(axis=0)[::-1]))  # (i, j, k) corners of the label
    local = InteractiveSession(model)
    local.set_image(volume)
    want = local.set_box(*box)
    with serve_in_thread(ServerConfig(token="t"), lambda name, **kw: model) as url:
        client = ServerClient(url, token="t")
        remote = client.open_session(client.load_model("litemedsam", device="cpu"))
        remote.set_image(volume)
        got = remote.set_box(*box)
        assert np.array_equal(got, want) and np.array_equal(remote.probability, local.probability)
    assert dice(got, lung) > 0.6  # the lung, not noise
