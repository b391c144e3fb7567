"""Med-SA, both decoder generations, against a straightforward computation of the published algorithm.

The checkpoints are built here from segment-anything's own modules (the names Medical-SAM-Adapter's
fork keeps) plus the adapters, with random weights, in each published key layout:
- "segment-anything" (init commit b5cd427): `...mlp.lin1/lin2`, `rel_pos_h/w`;
- "residual" (e987d64 on; `rel_h/w` since 30acfda): `...mlp.layers.0.0` / `...mlp.fc` (EfficientSAM style).
Reference = segment-anything's encoder blocks with the adapters written out and the depth branch gathered
token by token (each group of `chunk` consecutive batch items, after the window partition, as published);
segment-anything's mask decoder for the first generation, and for the second the same decoder around a
two-way transformer written below from the published two_way_transformer.py (residual self-attention,
query positional encoding kept in the tokens after the first layer); the published pre/post-processing
(torchvision Resize = bilinear, no antialias; SAM pixel mean/std since ddecab9; bilinear / nearest logits).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.slab import SlabEngine, segment_volume_prompted
from samadapt3d.errors import CheckpointError, InputError
from samadapt3d.families import med_sa
from samadapt3d.models import load_model
from samadapt3d.session import InteractiveSession
from samadapt3d.volume import Volume

SIZE = "vit_tiny"  # SAM_SIZES["vit_tiny"]: width 48, 4 blocks (global 1, 3), window 4, decoder width 32, 4 heads
WIDTH, BLOCKS, NATIVE_GRID = 48, 4, 8
S = 48  # model input: grid 3 with window 4, so the window partition pads
SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
SAM_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
GRIDS = {2: (1, 2), 3: (1, 3), 4: (1, 4), 8: (2, 4)}  # Med-SA's closest_numbers(d) for the depths used here
SA, RESIDUAL = "segment-anything", "residual"


def _published_state(sam_reference, layout: str, side: int = S) -> dict:
    """A full Med-SA state dict in the layout `layout` writes for a `side`² input, random weights."""
    torch.manual_seed(3 if layout == SA else 4)
    enc = sam_reference.encoder(SIZE, side)
    prompt, decoder = sam_reference.prompt_and_decoder(SIZE, side, 3)  # published: 4 mask tokens
    state = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
    state["image_encoder.pos_embed"] = torch.zeros(1, NATIVE_GRID, NATIVE_GRID, WIDTH)  # SAM's grid, resized at run time
    for i in range(BLOCKS):
        for name in ("MLP", "Space", "Depth"):
            p = f"image_encoder.blocks.{i}.{name}_Adapter."
            state.update({p + "D_fc1.weight": torch.zeros(WIDTH // 4, WIDTH), p + "D_fc1.bias": torch.zeros(WIDTH // 4),
                          p + "D_fc2.weight": torch.zeros(WIDTH, WIDTH // 4), p + "D_fc2.bias": torch.zeros(WIDTH)})
    state.update({f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()})
    state.update({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()})
    state = {k: v.float() + 0.1 * torch.randn_like(v.float()) for k, v in state.items()}
    if layout == RESIDUAL:
        renamed = {}
        for k, v in state.items():
            k = k.replace(".attn.rel_pos_", ".attn.rel_")  # 30acfda on
            if k.startswith("mask_decoder.transformer.layers."):  # models/common/mlp.py's MLPBlock
                k = k.replace(".mlp.lin1.", ".mlp.layers.0.0.").replace(".mlp.lin2.", ".mlp.fc.")
            renamed[k] = v
        state = renamed
    return state


@pytest.fixture(scope="module")
def published(tmp_path_factory, sam_reference):
    """{layout: (path, state)} of checkpoints saved as the published train.py saves them."""
    tmp = tmp_path_factory.mktemp("med_sa")
    out = {}
    for layout in (SA, RESIDUAL):
        state = _published_state(sam_reference, layout)
        path = tmp / f"{layout}.pth"
        torch.save({"epoch": 3, "model": "sam", "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
                    "best_tol": 0.5, "path_helper": {"ckpt_path": "logs/x"}}, path)
        out[layout] = (path, state)
    return out


# ---- the published algorithm, written out -------------------------------------------------------

def _attention(p: dict, prefix: str, q, k, v, heads: int = 4):
    lin = lambda x, n: x @ p[f"{prefix}.{n}.weight"].T + p[f"{prefix}.{n}.bias"]  # noqa: E731
    q, k, v = lin(q, "q_proj"), lin(k, "k_proj"), lin(v, "v_proj")
    split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (attn @ v).transpose(1, 2).flatten(2)
    return lin(out, "out_proj")


class ResidualTwoWay(torch.nn.Module):
    """Medical-SAM-Adapter's models/common/MaskDecoder/two_way_transformer.py, from the state dict."""

    def __init__(self, state: dict, depth: int = 2) -> None:
        super().__init__()
        self.p = {k[len("mask_decoder.transformer."):]: v for k, v in state.items()
                  if k.startswith("mask_decoder.transformer.")}
        self.depth = depth

    def _norm(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.p[f"{name}.weight"], self.p[f"{name}.bias"])

    def forward(self, image_embedding, image_pe, point_embedding):
        p = self.p
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for i in range(self.depth):
            pre = f"layers.{i}"
            if i > 0:  # skip_first_layer_pe only in the first layer; the sum stays in the queries
                queries = queries + point_embedding
            queries = self._norm(queries + _attention(p, f"{pre}.self_attn", queries, queries, queries), f"{pre}.norm1")
            q, k = queries + point_embedding, keys + key_pe
            queries = self._norm(queries + _attention(p, f"{pre}.cross_attn_token_to_image", q, k, keys), f"{pre}.norm2")
            hidden = torch.relu(queries @ p[f"{pre}.mlp.layers.0.0.weight"].T + p[f"{pre}.mlp.layers.0.0.bias"])
            queries = self._norm(queries + hidden @ p[f"{pre}.mlp.fc.weight"].T + p[f"{pre}.mlp.fc.bias"], f"{pre}.norm3")
            q, k = queries + point_embedding, keys + key_pe
            keys = self._norm(keys + _attention(p, f"{pre}.cross_attn_image_to_token", k, q, queries), f"{pre}.norm4")
        q, k = queries + point_embedding, keys + key_pe
        queries = self._norm(queries + _attention(p, "final_attn_token_to_image", q, k, keys), "norm_final_attn")
        return queries, keys


def _reference(sam_reference, state: dict, layout: str, chunk: int | None, pixel_norm: bool, upsample: str,
               side: int = S):
    """run(stack [d, H, W] in [0, 1], coords [d, N, 2] (row, col) used as SAM's (x, y), labels [d, N]) -> prob."""
    modeling = sam_reference.modeling
    state = {k.replace(".attn.rel_h", ".attn.rel_pos_h").replace(".attn.rel_w", ".attn.rel_pos_w"): v
             for k, v in state.items()}
    enc = sam_reference.encoder(SIZE, side)
    enc_state = {k[14:]: v for k, v in state.items() if k.startswith("image_encoder.") and "_Adapter" not in k}
    pos = enc_state.pop("pos_embed")
    enc.load_state_dict({**enc_state, "pos_embed": enc.pos_embed}, strict=True)
    grid = side // 16
    pos = F.interpolate(pos.permute(0, 3, 1, 2), (grid, grid), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    wp, wu = modeling.image_encoder.window_partition, modeling.image_encoder.window_unpartition

    def adapter(x, i, name):
        p = lambda n: state[f"image_encoder.blocks.{i}.{name}_Adapter.{n}"]  # noqa: E731
        return F.gelu(x @ p("D_fc1.weight").T + p("D_fc1.bias")) @ p("D_fc2.weight").T + p("D_fc2.bias")

    def encode(x):
        x = enc.patch_embed(x) + pos
        for i, blk in enumerate(enc.blocks):
            shortcut = x
            if blk.window_size > 0:
                h, w = x.shape[1:3]
                x, pad = wp(x, blk.window_size)
            n, hh, ww, c = x.shape
            group = chunk or n  # published without -chunk: the whole batch (all windows of all slices)
            dh, dw = GRIDS[group]
            xd = torch.zeros_like(x)
            for g in range(n // group):
                for r in range(hh):
                    for q in range(ww):
                        seq = blk.norm1(x[g * group:(g + 1) * group, r, q])  # [group, c]
                        xd[g * group:(g + 1) * group, r, q] = adapter(
                            blk.attn(seq.reshape(1, dh, dw, c)), i, "Depth").reshape(group, c)
            a = blk.attn(blk.norm1(x))
            x = a + adapter(a, i, "Space") + xd
            if blk.window_size > 0:
                x = wu(x, blk.window_size, pad, (h, w))
            x = shortcut + x
            xn = blk.norm2(x)
            x = x + blk.mlp(xn) + 0.5 * adapter(xn, i, "MLP")
        return enc.neck(x.permute(0, 3, 1, 2))

    if layout == SA:
        prompt, decoder = sam_reference.prompt_and_decoder(SIZE, side, 3, state)
    else:
        prompt, _ = sam_reference.prompt_and_decoder(SIZE, side, 3)
        prompt.load_state_dict({k[15:]: v for k, v in state.items() if k.startswith("prompt_encoder.")})
        decoder = modeling.MaskDecoder(num_multimask_outputs=3, transformer=ResidualTwoWay(state), transformer_dim=32,
                                       iou_head_depth=3, iou_head_hidden_dim=32)
        decoder.load_state_dict({k[13:]: v for k, v in state.items()
                                 if k.startswith("mask_decoder.") and ".transformer." not in k}, strict=True)

    def run(stack, coords, labels):
        x = torch.as_tensor(stack)[:, None].repeat(1, 3, 1, 1)
        x = F.interpolate(x, (side, side), mode="bilinear", align_corners=False)  # torchvision 0.13 Resize on a tensor
        if pixel_norm:
            x = (x - SAM_MEAN) / SAM_STD  # net.preprocess on the [0, 1] slices of the 3D path
        with torch.no_grad():
            emb = encode(x)
            logits = []
            for k in range(len(stack)):  # each slice with its own points (segment-anything decodes one image)
                sparse, dense = prompt(points=(coords[k:k + 1], labels[k:k + 1]), boxes=None, masks=None)
                logits.append(decoder(emb[k:k + 1], prompt.get_dense_pe(), sparse, dense, multimask_output=False)[0])
            logits = torch.cat(logits)
            size = tuple(stack.shape[-2:])
            logits = (F.interpolate(logits, size, mode="nearest") if upsample == "nearest"
                      else F.interpolate(logits, size, mode="bilinear", align_corners=False))
            return torch.sigmoid(logits[:, 0])

    return run


def _stack(slices: int, side: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    stack = rng.random((slices, side, side)).astype(np.float32)
    rows_cols = np.tile(np.array([[[10.0, 20.0], [30.0, 5.0]]], dtype=np.float32), (slices, 1, 1))
    labels = np.tile(np.array([[1, 0]]), (slices, 1))
    return stack, rows_cols, labels


# ---- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [SA, RESIDUAL])
def test_published_layouts_load_strictly(published, layout):
    path, state = published[layout]
    model = load_model(path)
    assert isinstance(model, med_sa.MedSAModel) and model.layout == layout and model.image_size == S
    assert model.chunk == 96 and model.eval_chunk is None  # the published 3D default (README: -chunk 96)
    ours = model.state_dict()
    renamed = {k.replace(".attn.rel_h", ".attn.rel_pos_h").replace(".attn.rel_w", ".attn.rel_pos_w"): v
               for k, v in state.items()}
    assert sorted(ours) == sorted(renamed)  # every published key used, none added
    for k, v in renamed.items():
        torch.testing.assert_close(ours[k], v, rtol=0, atol=0)
    expected = {SA: ("bilinear", "none", "bilinear"), RESIDUAL: ("bilinear", "sam", "bilinear")}[layout]
    assert (model.processing.resize, model.processing.pixel_norm, model.processing.upsample) == expected


@pytest.mark.parametrize("layout,slices,chunk,options", [
    (SA, 2, 2, {}),
    (SA, 4, 2, {"chunk": 2}),
    (RESIDUAL, 4, 4, {"chunk": "4"}),
    (RESIDUAL, 4, 2, {"chunk": 2, "pixel_norm": "none", "upsample": "nearest"}),  # code of 2024-01..2025-04
])
def test_same_output_as_published_algorithm(published, sam_reference, layout, slices, chunk, options):
    path, state = published[layout]
    model = load_model(path, options=options)
    stack, rows_cols, labels = _stack(slices)
    ours = model.predict_stack(stack, rows_cols, labels)
    norm = options.get("pixel_norm", "sam" if layout == RESIDUAL else "none") == "sam"
    expected = _reference(sam_reference, state, layout, chunk, norm, options.get("upsample", "bilinear"))(
        torch.from_numpy(stack), torch.from_numpy(rows_cols), torch.from_numpy(labels))
    assert ours.shape == (slices, 40, 40)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    # the depth branch mixes the slices of a group (through the global blocks), and only those
    other = stack.copy()
    other[0] = np.random.default_rng(9).random(other.shape[1:])
    changed = model.predict_stack(other, rows_cols, labels)
    assert not torch.equal(changed[1], ours[1])  # (slightly: SAM's pixel std flattens [0, 1] slices)
    if chunk < slices:
        torch.testing.assert_close(changed[chunk:], ours[chunk:], atol=0, rtol=0)


def test_no_chunk_groups_every_window_of_the_stack(sam_reference):
    """chunk=None (published without -chunk): each block's whole batch is one depth sequence, so in windowed
    blocks all windows of all slices (80² input: grid 5, window 4 -> 4 windows per slice, 8 in a 2-slice
    stack, folded 2 x 4)."""
    state = _published_state(sam_reference, SA, side=80)
    model = med_sa.load({"state_dict": state}, chunk="none")
    assert model.chunk is None and model.image_size == 80
    stack, rows_cols, labels = _stack(2, side=60)
    expected = _reference(sam_reference, state, SA, None, False, "bilinear", side=80)(
        torch.from_numpy(stack), torch.from_numpy(rows_cols), torch.from_numpy(labels))
    torch.testing.assert_close(model.predict_stack(stack, rows_cols, labels), expected, atol=1e-4, rtol=0)


def test_attention_in_pieces_gives_the_same_stack(published, monkeypatch):
    path, _ = published[RESIDUAL]
    model = load_model(path, options={"chunk": 2})
    stack, rows_cols, labels = _stack(4)
    whole = model.predict_stack(stack, rows_cols, labels)
    monkeypatch.setattr(med_sa, "ATTENTION_BUDGET", 1)  # one item per piece
    model.clear_stack_cache()
    torch.testing.assert_close(model.predict_stack(stack, rows_cols, labels), whole, atol=1e-6, rtol=0)


def test_further_clicks_on_a_stack_only_decode(published, monkeypatch):
    path, _ = published[SA]
    model = load_model(path, options={"chunk": 2})
    calls = []
    encode = model.image_encoder.forward_slices
    monkeypatch.setattr(model.image_encoder, "forward_slices", lambda *a: calls.append(1) or encode(*a))
    stack, rows_cols, labels = _stack(2)
    first = model.predict_stack(stack, rows_cols, labels)
    moved = model.predict_stack(stack, rows_cols + 3, labels)
    assert len(calls) == 1 and not torch.equal(first, moved)
    other = stack.copy()
    other[1, 0, 0] += 0.5
    model.predict_stack(other, rows_cols, labels)
    assert len(calls) == 2  # another stack is encoded
    fresh = load_model(path, options={"chunk": 2}).predict_stack(stack, rows_cols + 3, labels)
    torch.testing.assert_close(moved, fresh, atol=0, rtol=0)


def test_processing_overrides_change_the_input(published):
    path, _ = published[RESIDUAL]
    stack, rows_cols, labels = _stack(2)
    base = load_model(path, options={"chunk": 2}).predict_stack(stack, rows_cols, labels)
    plain = load_model(path, options={"chunk": 2, "pixel_norm": "none"}).predict_stack(stack, rows_cols, labels)
    assert (plain - base).abs().max() > 1e-3
    for option in ({"resize": "bicubic"}, {"pixel_norm": "sam255"}):
        other = load_model(path, options={"chunk": 2, "pixel_norm": "none", **option})
        assert (other.predict_stack(stack, rows_cols, labels) - plain).abs().max() > 1e-3, option
    nearest = load_model(path, options={"chunk": 2, "upsample": "nearest"}).predict_stack(stack, rows_cols, labels)
    assert (nearest - base).abs().max() > 1e-3


def test_unknown_decoder_layout_is_refused_with_its_keys(published):
    _, state = published[SA]
    odd = {k.replace(".mlp.lin1.", ".mlp.dense_in."): v for k, v in state.items()}
    with pytest.raises(CheckpointError, match=r"unknown Med-SA mask decoder layout.*layers\.0\.mlp\.dense_in\.bias"):
        med_sa.load({"state_dict": odd})
    gone = {k: v for k, v in state.items() if ".transformer.layers.0.mlp." not in k}
    with pytest.raises(CheckpointError, match="missing keys: mask_decoder.transformer.layers.0.mlp.lin1.weight"):
        med_sa.load({"state_dict": gone})


def test_chunk_from_config_options_and_refusals(published, tmp_path):
    path, state = published[SA]
    assert med_sa.load({"state_dict": state, "config": {"chunk": 2, "evl_chunk": 4}}).chunk == 2
    model = med_sa.load({"state_dict": state, "config": {"chunk": 2, "evl_chunk": 4}}, chunk=4)
    assert (model.chunk, model.eval_chunk) == (4, 4)  # the caller's setting wins over the file's config
    assert load_model(path, options={"chunk": "none"}).chunk is None
    with pytest.raises(InputError, match="chunk='x'"):
        load_model(path, options={"chunk": "x"})
    with pytest.raises(InputError, match="eval_chunk=3 must be a multiple of chunk=2"):
        load_model(path, options={"chunk": 2, "eval_chunk": 3})
    with pytest.raises(InputError, match="pixel_norm='imagenet'"):
        load_model(path, options={"pixel_norm": "imagenet"})
    with pytest.raises(InputError, match="model option depth is not one of med_sa's"):
        load_model(path, options={"depth": 2})


def test_depth_grid_follows_published_search():
    assert [med_sa.depth_grid(d) for d in (1, 2, 4, 6, 9, 12, 96)] == [
        (1, 1), (1, 2), (1, 4), (2, 3), (1, 9), (3, 4), (8, 12)]


def test_old_naming_and_prompted_volume(published):
    _, state = published[SA]
    model = med_sa.load({"state_dict": {"module." + k: v for k, v in state.items()}}, chunk=2)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    vol = np.random.default_rng(1).random((6, 30, 30)).astype(np.float32)
    prompts = ModelPrompts(positive=[[2, 10, 12]], negative=[[3, 20, 5]])
    prob = segment_volume_prompted(model, vol, prompts)
    assert prob.shape == vol.shape and prob.dtype == np.float32
    assert prob[2:4].max() > 0 and prob[0].max() == 0 and prob[5].max() == 0  # one stack of chunk=2 slices
    with pytest.raises(InputError):
        segment_volume_prompted(model, vol, ModelPrompts())
    with pytest.raises(InputError):
        segment_volume_prompted(model, vol, ModelPrompts(positive=[[9, 1, 1]]))


def test_refuses_bad_files(published):
    _, state = published[SA]
    broken = {k: v for k, v in state.items() if k != "image_encoder.blocks.2.MLP_Adapter.D_fc2.bias"}
    with pytest.raises(CheckpointError, match="blocks.2.MLP_Adapter.D_fc2.bias"):
        med_sa.load({"state_dict": broken})
    bad = dict(state)
    bad["image_encoder.blocks.0.Space_Adapter.D_fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="Space_Adapter.D_fc1.weight"):
        med_sa.load({"state_dict": bad})
    assert not med_sa.detect({"w_a_000": 1})


@pytest.mark.parametrize("layout", [SA, RESIDUAL])
def test_interactive_session_equals_published_algorithm(published, sam_reference, layout):
    """Clicks in the volume's index space through InteractiveSession -> SlabEngine -> the model give the
    published algorithm's answer (expectation computed here: identity geometry, min-max normalisation, one
    stack of eval_chunk=4 slices whose depth grid is chunk=2, every click on every slice). The session's
    contract (docs/SESSION.md) adds a positive click's own voxel, and a negative keeps at most what the
    model keeps given both clicks."""
    path, state = published[layout]
    model = load_model(path, options={"chunk": 2, "eval_chunk": 4})
    raw = np.random.default_rng(2).random((4, 40, 40)).astype(np.float32) * 300 - 100
    session = InteractiveSession(model)
    assert isinstance(session.engine, SlabEngine)
    session.set_image(Volume(raw))
    first = session.add_point((12, 10, 1))  # (i, j, k) -> model (d, h, w) = (1, 10, 12)
    second = session.add_point((5, 20, 2), positive=False)  # -> (2, 20, 5)

    image = torch.from_numpy((raw - raw.min()) / (raw.max() - raw.min()))
    run = _reference(sam_reference, state, layout, 2, layout == RESIDUAL, "bilinear")
    one = run(image, torch.tensor([[[10.0, 12.0]]] * 4), torch.tensor([[1]] * 4)).numpy()
    both = run(image, torch.tensor([[[10.0, 12.0], [20.0, 5.0]]] * 4), torch.tensor([[1, 0]] * 4)).numpy()
    for prob in (one, both):
        assert (np.abs(prob - 0.5) > 1e-4).mean() > 0.99  # few voxels the 1e-4 tolerance could flip
    sure = np.abs(one - 0.5) > 1e-4
    expected = one > 0.5
    expected[1, 10, 12] = True  # the positive click's voxel
    np.testing.assert_array_equal(first[sure], expected[sure])
    assert first.any() and first.sum() < first.size
    allowed = (both > 0.5) | (np.abs(both - 0.5) <= 1e-4)
    allowed[1, 10, 12] = True
    assert not (second & ~allowed).any() and not second[2, 20, 5]
    np.testing.assert_array_equal(session.undo(), first)


def test_cli_model_option_sets_the_depth_grid(published, tmp_path, capsys):
    from samadapt3d.cli import main

    path, _ = published[SA]
    image = tmp_path / "ct.nii.gz"
    Volume(np.random.default_rng(3).random((6, 30, 30)).astype(np.float32)).save(image)
    out = tmp_path / "mask.nii.gz"
    args = ["segment", str(image), "-o", str(out), "--model", str(path), "--point-ijk", "12,10,2", "--quiet"]
    assert main(args + ["--model-option", "chunk=2"]) == 0
    mask = Volume.from_file(out).array
    assert mask.shape == (6, 30, 30) and not mask[[0, 3, 4, 5]].any()  # one stack of chunk=2 slices (1, 2) around k=2
    out.unlink()
    for bad, message in ((["--model-option", "depth=2"], "model option depth is not one of med_sa's"),
                         (["--model-option", "chunk"], "--model-option expects KEY=VALUE"),
                         (["--model-option", "chunk=-1"], "chunk='-1'")):
        capsys.readouterr()
        assert main(args + bad) == 1
        assert message in capsys.readouterr().err and not out.exists()
