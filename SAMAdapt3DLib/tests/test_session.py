"""InteractiveSession: exact geometry under any orientation, prompts, undo/redo, seed, cancel, progress,
bad inputs. Uses the toy crop model (test_session_toymodel.py), whose mask on a piecewise-constant
image is exactly the clicked object."""
import itertools
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.errors import CancelledError, InputError
from samadapt3d.preprocess import Preset
from samadapt3d.session import InteractiveSession, Prompt
from samadapt3d.volume import Volume
from test_session_toymodel import ToyCropModel
from test_volume import rotation

CODES = sorted({"".join(p) for code in itertools.product("LR", "PA", "SI") for p in itertools.permutations(code)})


def phantom(shape=(14, 16, 18)):
    """Two blocks and a ball of distinct intensities, asymmetric so flips matter."""
    arr = np.zeros(shape, np.float32)
    arr[2:6, 3:9, 4:7] = 100
    arr[8:12, 10:14, 11:16] = 200
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    arr[(k - 10) ** 2 + (j - 4) ** 2 + (i - 5) ** 2 <= 5] = 300
    return arr


def session_for(volume, crop=(12, 12, 12), preset=None, **kw):
    model = ToyCropModel(crop_size=crop) if preset is None else ToyCropModel(crop_size=crop, preset=preset)
    s = InteractiveSession(model, **kw)
    s.set_image(volume)
    return s


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(code=st.sampled_from(CODES), angles=st.tuples(*[st.floats(-0.35, 0.35)] * 3),
       spacing=st.tuples(*[st.floats(0.3, 3.0)] * 3), flips=st.tuples(*[st.sampled_from([-1, 1])] * 3),
       which=st.sampled_from([(4, 6, 3), (13, 12, 10), (5, 4, 10)]),
       orientation=st.sampled_from(["LPS", "RAS", None]))
def test_reoriented_volume_gives_the_same_mask_moved_with_it(code, angles, spacing, flips, which, orientation):
    arr = phantom()
    direction = rotation(angles) @ np.diag(flips)  # oblique and flipped
    a = Volume(arr, spacing, (12.5, -40, 7), direction)
    b = Volume.from_sitk(sitk.DICOMOrient(a.to_sitk(), code))  # the same physical image, other axes
    preset = Preset("toy", spacing=None, orientation=orientation, normalization="none")
    click = a.index_to_physical(np.asarray(which, float), "ras")  # clicked in world (RAS) coordinates
    mask_a = session_for(a, preset=preset).add_point(click, space="ras")
    mask_b = session_for(b, preset=preset).add_point(click, space="ras")
    i, j, k = which
    expected = _component(arr, (k, j, i))
    assert np.array_equal(mask_a, expected)
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(b.to_sitk(mask_b.astype(np.uint8)), _code_of(a))) > 0
    assert np.array_equal(back, expected)


def _component(arr, kji):
    return arr == arr[kji]  # each phantom object is one connected block of one value


def _code_of(volume):
    from samadapt3d.preprocess import closest_orientation

    return closest_orientation(volume.direction)


def test_lps_ras_and_ijk_clicks_agree():
    vol = Volume(phantom(), (0.8, 1.1, 2.0), (3, 4, 5), rotation((0.1, 0.2, -0.3)))
    ijk = np.array([5.0, 6.0, 3.0])
    masks = [session_for(vol).add_point(vol.index_to_physical(ijk, sp) if sp != "ijk" else ijk, space=sp)
             for sp in ("ijk", "lps", "ras")]
    assert masks[0].any() and all(np.array_equal(masks[0], m) for m in masks[1:])


def test_resampling_preset_lands_on_the_object():
    """0.5 x 0.5 x 2 mm, flipped -> a 1 mm RAS model grid and back. A model that keeps partial-volume
    voxels (sigma 40: the 75 % voxels in, the 25 % out) gives exactly the object; a strict one
    (sigma 10) loses at most the half-covered end slices along the 2 mm axis, nothing else."""
    arr = np.zeros((12, 40, 44), np.float32)
    arr[3:9, 10:30, 8:36] = 100
    truth = arr > 50
    vol = Volume(arr, (0.5, 0.5, 2.0), (0, 0, 0), np.diag([-1, 1, -1]))
    preset = Preset("toy", spacing=(1.0, 1.0, 1.0), orientation="RAS", normalization="none")
    s = InteractiveSession(ToyCropModel(crop_size=(16, 16, 16), preset=preset, sigma=40.0))
    s.set_image(vol)
    assert s.space.resampled and s.space.shape == (24, 20, 22)
    assert np.array_equal(s.add_point((20, 20, 6)), truth)
    assert s.probability.shape == arr.shape and s.probability.dtype == np.float32 and s.has_probability
    strict = session_for(vol, crop=(16, 16, 16), preset=preset).add_point((20, 20, 6))
    inner = truth.copy()
    inner[3] = inner[8] = False
    assert not (strict & ~truth).any() and (strict | ~inner).all()


class SpyEngine:
    def __init__(self):
        self.calls = []

    def set_image(self, image, spacing=None):
        self.image = image

    def run(self, prompts, seed=None, progress=None, cancel=None):
        self.calls.append(prompts)
        if progress:
            progress(0.5, "half")
        out = np.zeros(self.image.shape, np.float32)
        for d, h, w in np.floor(prompts.positive + 0.5).astype(int):
            out[d, h, w] = 1.0
        return out


def test_prompts_and_view_axis_reach_the_engine_in_model_coordinates():
    # i -> S, j -> L, k -> A: model (LPS) axes are (W, H, D) = (j, k reversed, i)
    direction = np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], float)
    vol = Volume(np.zeros((4, 5, 6), np.float32), direction=direction)
    spy = SpyEngine()
    s = InteractiveSession(ToyCropModel(), engine=spy)
    s.set_image(vol)
    mask = s.add_point((1, 2, 3), view_axis=2)
    p = spy.calls[-1]
    assert isinstance(p, ModelPrompts)
    assert np.allclose(p.positive, [[1, 3 - 3, 2]])  # (d, h, w) = (i, 3 - k, j)
    assert p.view_axis == 1  # the k axis is model H
    assert mask[3, 2, 1] and mask.sum() == 1  # the model voxel maps back onto the clicked voxel
    s.set_box((0, 0, 0), (5, 4, 3))
    lo, hi = spy.calls[-1].box
    assert np.allclose(lo, 0) and np.allclose(hi, [5, 3, 4])


def test_prompt_list_remove_undo_redo_reset():
    arr = phantom()
    s = session_for(Volume(arr))
    assert not s.can_undo and not s.mask.any() and s.probability is None and not s.has_probability
    m1 = s.add_point((5, 5, 3)).copy()
    m2 = s.add_point((12, 12, 10)).copy()
    assert np.array_equal(m2, (arr == 100) | (arr == 200))
    s.add_point((4, 8, 5), positive=False)  # cuts the voxels of block 100 strictly nearer to it than to (5, 5, 3)
    k, j, i = np.indices(arr.shape)
    nearer = (i - 4) ** 2 + (j - 8) ** 2 + (k - 5) ** 2 < (i - 5) ** 2 + (j - 5) ** 2 + (k - 3) ** 2
    assert np.array_equal(s.mask, m2 & ~((arr == 100) & nearer))
    assert [p.kind for p in s.prompts] == ["positive", "positive", "negative"]
    assert s.prompts[0] == Prompt("positive", (5.0, 5.0, 3.0))
    assert np.array_equal(s.remove_prompt(2), m2)
    assert np.array_equal(s.undo(), m2 & ~((arr == 100) & nearer)) and s.can_redo
    assert np.array_equal(s.undo(), m2)
    assert np.array_equal(s.undo(), m1)
    assert np.array_equal(s.redo(), m2)
    s.add_point((4, 10, 10))  # a new change clears redo
    assert not s.can_redo
    assert not s.reset().any() and s.prompts == []
    assert s.undo().any()
    s.set_image(Volume(arr))  # a new image clears prompts and history
    assert s.prompts == [] and not s.can_undo and not s.can_redo


def test_box_prompts():
    arr = np.zeros((10, 12, 40), np.float32)
    arr[3:7, 4:8, 2:38] = 100
    s = session_for(Volume(arr))
    mask = s.set_box((10, 2, 1), (20, 9, 8))
    expected = np.zeros_like(mask)
    expected[3:7, 4:8, 10:21] = True
    assert np.array_equal(mask, expected)
    assert [p.kind for p in s.prompts] == ["box"] and s.prompts[0].ijk_end == (20.0, 9.0, 8.0)
    s.set_box((12, 2, 1), (14, 9, 8))  # replaces the box
    assert len(s.prompts) == 1 and s.mask[:, :, 12:15].any() and not s.mask[:, :, 15:].any()
    assert not s.clear_box().any() and s.prompts == []
    with pytest.raises(InputError, match="empty box"):
        s.set_box((3, 3, 3), (3, 3, 8))
    with pytest.raises(InputError, match="outside"):
        s.set_box((50, 50, 50), (60, 60, 60))


def test_seed_mask_refine_and_undo():
    arr = phantom()
    s = session_for(Volume(arr))
    seed = arr == 300
    assert np.array_equal(s.set_seed_mask(seed), seed)
    assert np.array_equal(s.add_point((5, 5, 3)), seed | (arr == 100))
    assert np.array_equal(s.add_point((5, 4, 10), positive=False), arr == 100)  # the seed blob is cut away
    s.undo()
    s.undo()
    assert np.array_equal(s.mask, seed)
    s.undo()
    assert not s.mask.any()
    with pytest.raises(InputError, match="shape"):
        s.set_seed_mask(np.zeros((2, 2, 2), bool))


def test_point_outside_and_other_bad_prompts_leave_the_state_unchanged():
    vol = Volume(phantom(), (2, 2, 2))
    s = session_for(vol)
    before = s.add_point((5, 5, 3)).copy()
    for bad in [dict(coord=(18, 0, 0)), dict(coord=(0, -1, 0)), dict(coord=(0, 0, np.nan)), dict(coord=(1, 2)),
                dict(coord=(1000, 0, 0), space="lps"), dict(coord=(0, 0, 0), space="xyz"),
                dict(coord=(1, 1, 1), view_axis=3)]:
        with pytest.raises(InputError):
            s.add_point(**bad)
    with pytest.raises(InputError):
        s.remove_prompt(5)
    assert np.array_equal(s.mask, before) and len(s.prompts) == 1


def test_image_validation():
    s = InteractiveSession(ToyCropModel())
    with pytest.raises(InputError, match="no image"):
        s.add_point((0, 0, 0))
    arr = phantom()
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = np.inf
    with pytest.raises(InputError, match=r"4 non-finite voxels \(3 NaN, 1 Inf\)"):
        s.set_image(Volume(arr))
    with pytest.raises(InputError):
        s.set_image(np.zeros((3, 3, 3)))
    assert s.volume is None


def test_progress_is_reported_from_zero_to_one():
    seen = []
    s = session_for(Volume(phantom()), progress=lambda f, m: seen.append((f, m)))
    seen.clear()
    s.add_point((5, 5, 3))
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert all(isinstance(m, str) for _, m in seen)


class BlockingModel(ToyCropModel):
    def __init__(self):
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def encode(self, crop):
        self.started.set()
        assert self.release.wait(10)
        return super().encode(crop)


def test_cancel_from_another_thread_leaves_the_state_unchanged():
    arr = phantom()
    model = BlockingModel()
    s = InteractiveSession(model)
    s.set_image(Volume(arr))
    model.release.set()
    first = s.add_point((5, 5, 3)).copy()
    model.release.clear()
    model.started.clear()
    errors = []

    def worker():
        try:
            s.add_point((12, 12, 10))
        except CancelledError as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    assert model.started.wait(10)
    assert s.busy
    s.cancel()
    model.release.set()
    thread.join(10)
    assert len(errors) == 1
    assert np.array_equal(s.mask, first) and len(s.prompts) == 1 and not s.can_redo
    assert not s.busy
    s.cancel()  # nothing running: a no-op
    assert np.array_equal(s.add_point((12, 12, 10)), (arr == 100) | (arr == 200))


def test_segment_one_shot():
    arr = phantom()
    s = session_for(Volume(arr))
    mask = s.segment(positive=[(5, 5, 3), (5, 4, 10)], negative=[(12, 12, 10)])
    assert np.array_equal(mask, (arr == 100) | (arr == 300))  # the negative lands outside: nothing to cut
    assert [p.kind for p in s.prompts] == ["positive", "positive", "negative"]


def test_prompt_free_class_models_are_refused_clearly():
    from samadapt3d.errors import SAMAdapt3DError
    from samadapt3d.session import make_engine

    model = ToyCropModel()
    model.class_names = ("liver", "spleen")
    with pytest.raises(SAMAdapt3DError, match="without prompts"):
        make_engine(model)
    with pytest.raises(TypeError):
        make_engine(object())


def test_history_is_compact_and_bounded():
    arr = phantom()
    s = session_for(Volume(arr), max_undo=3)
    s.add_point((5, 5, 3))
    prob = s.probability.copy()
    for _ in range(5):
        s.add_point((12, 12, 10))
    assert len(s._undo) == 3
    assert all(stored.mask_bits.nbytes <= arr.size // 8 + 1 for stored in s._undo)
    s.undo(), s.undo(), s.undo()
    assert not s.can_undo
    s = session_for(Volume(arr))
    s.add_point((5, 5, 3))
    s.add_point((12, 12, 10))
    s.undo()
    assert np.array_equal(s.mask, arr == 100) and np.abs(s.probability - prob).max() <= 0.5 / 255 + 1e-7
    with pytest.raises(ValueError):
        s.mask[0, 0, 0] = True  # masks handed out are read-only
