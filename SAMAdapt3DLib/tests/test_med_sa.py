"""Med-SA: our model against a straightforward computation of the published algorithm.

Reference = segment-anything's blocks (norm1, attention, mlp) with the adapters written out and the
depth branch gathered token by token: in every block, each group of `d` consecutive batch items
(after the window partition, as published) forms, per token position, a d-long sequence folded
into Med-SA's dh x dw grid and run through the same attention.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.slab import SlabEngine, segment_volume_prompted
from samadapt3d.errors import CheckpointError, InputError
from samadapt3d.families import med_sa
from samadapt3d.models import load_model
from samadapt3d.sam.build_sam import SAM_SIZES
from samadapt3d.session import InteractiveSession
from samadapt3d.volume import Volume

SIZE = "vit_tiny"
S = 48  # grid 3 with window 4: the window partition pads


@pytest.fixture(scope="module")
def files(tmp_path_factory, randomise):
    torch.manual_seed(3)
    tmp = tmp_path_factory.mktemp("med_sa")
    model = med_sa.MedSAModel(SIZE, image_size=S)
    randomise(model, 0.1)
    state = model.state_dict()
    # newer Med-SA naming: rel_h / rel_w
    published = {k.replace("rel_pos_h", "rel_h").replace("rel_pos_w", "rel_w"): v for k, v in state.items()}
    assert "image_encoder.blocks.0.Depth_Adapter.D_fc1.weight" in published
    path = tmp / "Medical-SAM-Adapter.pth"
    torch.save({"epoch": 100, "state_dict": published, "best_tol": 0.1}, path)
    old = tmp / "old_naming.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, old)
    return path, old, state


def _reference(sam_reference, state, slices):
    modeling = sam_reference.modeling
    s = SAM_SIZES[SIZE]
    enc = sam_reference.encoder(SIZE, S)
    enc_state = {k[14:]: v for k, v in state.items() if k.startswith("image_encoder.") and "_Adapter" not in k}
    pos = enc_state.pop("pos_embed")
    enc.load_state_dict({**enc_state, "pos_embed": enc.pos_embed}, strict=True)
    grid = S // s.patch_size
    pos = F.interpolate(pos.permute(0, 3, 1, 2), (grid, grid), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    wp, wu = modeling.image_encoder.window_partition, modeling.image_encoder.window_unpartition

    def adapter(x, i, name):
        p = lambda n: state[f"image_encoder.blocks.{i}.{name}_Adapter.{n}"]  # noqa: E731
        return F.gelu(x @ p("D_fc1.weight").T + p("D_fc1.bias")) @ p("D_fc2.weight").T + p("D_fc2.bias")

    dh, dw = {2: (1, 2), 3: (1, 3), 4: (1, 4)}[slices]

    def encode(x):
        x = enc.patch_embed(x) + pos
        for i, blk in enumerate(enc.blocks):
            shortcut = x
            if blk.window_size > 0:
                h, w = x.shape[1:3]
                x, pad = wp(x, blk.window_size)
            n, hh, ww, c = x.shape
            xd = torch.zeros_like(x)
            for g in range(n // slices):
                for r in range(hh):
                    for q in range(ww):
                        seq = blk.norm1(x[g * slices:(g + 1) * slices, r, q])  # [d, c]
                        out = adapter(blk.attn(seq.reshape(1, dh, dw, c)), i, "Depth").reshape(slices, c)
                        xd[g * slices:(g + 1) * slices, r, q] = out
            a = blk.attn(blk.norm1(x))
            x = a + adapter(a, i, "Space") + xd
            if blk.window_size > 0:
                x = wu(x, blk.window_size, pad, (h, w))
            x = shortcut + x
            xn = blk.norm2(x)
            x = x + blk.mlp(xn) + 0.5 * adapter(xn, i, "MLP")
        return enc.neck(x.permute(0, 3, 1, 2))

    prompt, decoder = sam_reference.prompt_and_decoder(SIZE, S, 1, state)

    def run(stack, coords, labels):  # stack [d, S, S]; coords [d, N, 2] in SAM (x, y)
        x = torch.as_tensor(stack)[:, None].repeat(1, 3, 1, 1)  # no pixel mean/std
        with torch.no_grad():
            emb = encode(x)
            logits = []
            for k in range(len(stack)):  # each slice decoded with its own points
                sparse, dense = prompt(points=(coords[k:k + 1], labels[k:k + 1]), boxes=None, masks=None)
                logits.append(decoder(emb[k:k + 1], prompt.get_dense_pe(), sparse, dense, multimask_output=False)[0])
            logits = torch.cat(logits)
            logits = F.interpolate(logits, (S, S), mode="bilinear", align_corners=False)
            return torch.sigmoid(logits[:, 0])

    return run


@pytest.mark.parametrize("slices", [2, 4])
def test_same_output_as_published_algorithm(files, sam_reference, slices):
    path, _, state = files
    model = load_model(path)
    assert isinstance(model, med_sa.MedSAModel) and model.image_size == S
    stack = np.random.rand(slices, S, S).astype(np.float32)
    rows_cols = np.tile(np.array([[[10.0, 20.0]]], dtype=np.float32), (slices, 1, 1))
    labels = np.ones((slices, 1), dtype=np.int64)
    ours = model.predict_stack(stack, rows_cols, labels)
    expected = _reference(sam_reference, state, slices)(
        torch.from_numpy(stack), torch.from_numpy(rows_cols), torch.from_numpy(labels))
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-3)
    # The depth branch mixes slices (through the global blocks).
    other = stack.copy()
    other[0] = np.random.rand(S, S)
    assert not torch.allclose(model.predict_stack(other, rows_cols, labels)[1], ours[1])


def test_depth_grid_follows_published_search():
    assert [med_sa.depth_grid(d) for d in (1, 2, 4, 6, 9, 12)] == [(1, 1), (1, 2), (1, 4), (2, 3), (1, 9), (3, 4)]


def test_old_naming_and_prompted_volume(files):
    _, old, state = files
    model = load_model(old)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    vol = np.random.rand(6, 30, 30).astype(np.float32)
    prompts = ModelPrompts(positive=[[2, 10, 12]], negative=[[3, 20, 5]])
    prob = segment_volume_prompted(model, vol, prompts)
    assert prob.shape == vol.shape and prob.dtype == np.float32
    assert prob[2:4].max() > 0 and prob[0].max() == 0 and prob[5].max() == 0
    with pytest.raises(InputError):
        segment_volume_prompted(model, vol, ModelPrompts())
    with pytest.raises(InputError):
        segment_volume_prompted(model, vol, ModelPrompts(positive=[[9, 1, 1]]))


def test_refuses_bad_files(files, tmp_path):
    path, _, state = files
    broken = {k: v for k, v in state.items() if k != "image_encoder.blocks.2.MLP_Adapter.D_fc2.bias"}
    with pytest.raises(CheckpointError, match="blocks.2.MLP_Adapter.D_fc2.bias"):
        med_sa.load({"state_dict": broken})
    bad = dict(state)
    bad["image_encoder.blocks.0.Space_Adapter.D_fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="Space_Adapter.D_fc1.weight"):
        med_sa.load({"state_dict": bad})
    assert not med_sa.detect({"w_a_000": 1})


def test_interactive_session_runs_med_sa(files):
    """Med-SA through the same InteractiveSession as the other families: clicks in the volume's
    index space reach the model as (d, h, w) prompts; undo restores the previous mask."""
    path, _, _ = files
    model = load_model(path)
    rng = np.random.default_rng(0)
    volume = Volume(rng.random((6, 30, 30)).astype(np.float32), spacing=(0.8, 0.8, 2.0))
    session = InteractiveSession(model)
    assert isinstance(session.engine, SlabEngine)
    session.set_image(volume)
    first = session.add_point((12, 10, 2))  # (i, j, k)
    space = session.space
    expected = segment_volume_prompted(model, space.image, session.model_prompts(session.prompts))
    np.testing.assert_array_equal(first, space.from_model(expected, linear=True) > 0.5)
    assert first[2].any() and not first[0].any()  # the clicked slice and its stack only
    second = session.add_point((5, 20, 3), positive=False)
    assert [p.kind for p in session.prompts] == ["positive", "negative"]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(session.undo(), first)
    with pytest.raises(InputError, match="box"):
        session.set_box((0, 0, 0), (10, 10, 3))
