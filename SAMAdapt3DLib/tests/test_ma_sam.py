"""MA-SAM: our model against a straightforward computation of the published algorithm.

Reference = segment-anything's encoder blocks with FacT merged into W_qkv (W + [V Sq U; 0; V Sv U]),
the two 3D adapters written out (LayerNorm, matmuls, F.conv3d over the slice axis, GELU), and a
x16 decoder built from segment-anything's MaskDecoder with MA-SAM's upscaling.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samadapt3d.engines.slab import box_probabilities, class_probabilities, segment_volume
from samadapt3d.errors import CheckpointError
from samadapt3d.families import ma_sam
from samadapt3d.models import load_model
from samadapt3d.sam.build_sam import SAM_SIZES

SIZE = "vit_tiny"
S = 64  # model input (SAM tiny native 128 / 2)
NUM_CLASSES = 3
CHANNELS = 8
RANK = 4


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_sam_base, randomise):
    torch.manual_seed(2)
    tmp = tmp_path_factory.mktemp("ma_sam")
    base_path, base_state = tiny_sam_base
    model = ma_sam.MASAMModel(SIZE, NUM_CLASSES, rank=RANK, adapter_channels=CHANNELS)
    randomise(model, 0.2)
    published = ma_sam.to_published(model)
    assert "image_encoder.ImageEncoderViT.blocks.0.Block.adapter_conv_2.weight" in published
    assert "image_encoder.FacTu.weight" in published and "v_FacTs_003" in published
    assert not any("blocks.0.attn" in k for k in published)  # frozen SAM weights are not in the file
    path = tmp / "epoch_159.pth"
    torch.save(published, path)
    return base_path, path, base_state, published


def _reference(sam_reference, base_state, pub):
    modeling = sam_reference.modeling
    s = SAM_SIZES[SIZE]
    enc = sam_reference.encoder(SIZE, S)
    st = sam_reference.resized_encoder_state(base_state, SIZE, S)
    u, v = pub["image_encoder.FacTu.weight"], pub["image_encoder.FacTv.weight"]
    d = s.embed_dim
    for i in range(s.depth):
        dq = v @ pub[f"q_FacTs_{i:03d}"] @ u
        dv = v @ pub[f"v_FacTs_{i:03d}"] @ u
        st[f"blocks.{i}.attn.qkv.weight"] = st[f"blocks.{i}.attn.qkv.weight"] + torch.cat(
            [dq, torch.zeros(d, d), dv], 0)
    enc.load_state_dict(st, strict=True)
    window_partition = modeling.image_encoder.window_partition
    window_unpartition = modeling.image_encoder.window_unpartition

    def adapter(x, i, sfx, slices):
        p = lambda n: pub[f"image_encoder.ImageEncoderViT.blocks.{i}.Block.adapter_{n}"]  # noqa: E731
        y = F.layer_norm(x, (d,), p(f"norm{sfx}.weight"), p(f"norm{sfx}.bias"), eps=1e-6)
        y = y @ pub[f"image_encoder.ImageEncoderViT.blocks.{i}.Block.adapter_linear_down{sfx}.weight"].T
        b, h, w, c = y.shape
        y = y.reshape(b // slices, slices, h, w, c).permute(0, 4, 1, 2, 3)
        y = F.conv3d(y, pub[f"image_encoder.ImageEncoderViT.blocks.{i}.Block.adapter_conv{sfx}.weight"],
                     pub[f"image_encoder.ImageEncoderViT.blocks.{i}.Block.adapter_conv{sfx}.bias"], padding=(1, 0, 0))
        y = F.gelu(y.permute(0, 2, 3, 4, 1).reshape(b, h, w, c))
        return y @ pub[f"image_encoder.ImageEncoderViT.blocks.{i}.Block.adapter_linear_up{sfx}.weight"].T

    def encode(x, slices):
        x = enc.patch_embed(x) + enc.pos_embed
        for i, blk in enumerate(enc.blocks):
            x = x + adapter(x, i, "", slices)
            shortcut = x
            y = blk.norm1(x)
            if blk.window_size > 0:
                h, w = y.shape[1:3]
                y, pad = window_partition(y, blk.window_size)
                y = window_unpartition(blk.attn(y), blk.window_size, pad, (h, w))
            else:
                y = blk.attn(y)
            x = shortcut + y
            x = x + adapter(x, i, "_2", slices)
            x = x + blk.mlp(blk.norm2(x))
        return enc.neck(x.permute(0, 3, 1, 2))

    prompt, decoder = sam_reference.prompt_and_decoder(SIZE, S, NUM_CLASSES)
    c = s.prompt_embed_dim
    LN = modeling.common.LayerNorm2d
    decoder.output_upscaling = nn.Sequential(
        nn.ConvTranspose2d(c, c // 4, 2, 2), LN(c // 4), nn.GELU(),
        nn.ConvTranspose2d(c // 4, c // 8, 2, 2), LN(c // 8), nn.GELU(),
        nn.ConvTranspose2d(c // 8, c // 16, 2, 2), LN(c // 16), nn.GELU(),
        nn.ConvTranspose2d(c // 16, c // 32, 2, 2), nn.GELU())
    decoder.output_hypernetworks_mlps = nn.ModuleList(
        modeling.mask_decoder.MLP(c, c, c // 32, 3) for _ in range(NUM_CLASSES + 1))
    prompt.load_state_dict({k[15:]: t for k, t in pub.items() if k.startswith("prompt_encoder.")})
    decoder.load_state_dict({k[13:]: t for k, t in pub.items() if k.startswith("mask_decoder.")})

    def run(stack, boxes=None):  # [5, S, S] min-max normalised
        x = torch.as_tensor(stack)[:, None].repeat(1, 3, 1, 1)
        with torch.no_grad():
            emb = encode(x, 5)
            masks = []
            for k in range(5):  # each slice decoded on its own
                sparse, dense = prompt(points=None, boxes=None if boxes is None else boxes[k:k + 1], masks=None)
                masks.append(decoder.predict_masks(emb[k:k + 1], prompt.get_dense_pe(), sparse, dense)[0])
            masks = torch.cat(masks)
            assert masks.shape[-1] == S  # x16: full resolution
            return masks.softmax(dim=1)

    return run


def test_same_output_as_published_algorithm(files, sam_reference):
    base_path, path, base_state, pub = files
    model = load_model(path, sam_checkpoint=base_path)
    assert isinstance(model, ma_sam.MASAMModel)
    assert (model.rank, model.adapter_channels, model.image_size, model.slab_size) == (RANK, CHANNELS, S, 5)
    assert model.class_names == ("class 1", "class 2", "class 3")
    reference = _reference(sam_reference, base_state, pub)
    stack = np.random.rand(5, S, S).astype(np.float32) * 300 - 100
    norm = (stack - stack.min()) / (stack.max() - stack.min())
    ours = model.predict_slab(stack)
    expected = reference(torch.from_numpy(norm))
    assert ours.shape == (5, NUM_CLASSES + 1, S, S)
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-3)
    # The adapters mix slices: changing slice 0 changes slice 1's output.
    other = stack.copy()
    other[0] = np.random.rand(S, S) * 300 - 100
    other[0, 0, 0], other[0, 0, 1] = stack.min(), stack.max()
    assert not torch.allclose(model.predict_slab(other)[1], ours[1])
    # Box variant: one box per slice through the prompt encoder.
    boxes = np.tile(np.array([[5.0, 8.0, 40.0, 50.0]], dtype=np.float32), (5, 1))
    torch.testing.assert_close(model.predict_slab(stack, boxes=boxes),
                               reference(torch.from_numpy(norm), torch.from_numpy(boxes)), atol=2e-4, rtol=1e-3)


def test_sliding_window_average(files):
    base_path, path, _, _ = files
    model = load_model(path, sam_checkpoint=base_path)
    vol = np.random.rand(4, S, S).astype(np.float32)
    probs = class_probabilities(model, vol)
    assert probs.shape == (NUM_CLASSES + 1, 4, S, S)
    padded = np.concatenate([vol[:1], vol[:1], vol, vol[-1:], vol[-1:]])
    windows = [model.predict_slab(padded[i:i + 5]).numpy() for i in range(4)]  # window i centred on slice i
    for j in range(4):
        covering = [windows[i][j - i + 2] for i in range(4) if 0 <= j - i + 2 < 5]
        np.testing.assert_allclose(probs[:, j], np.mean(covering, axis=0), atol=1e-5)
    named = segment_volume(model, vol)
    assert list(named) == ["class 1", "class 2", "class 3"]
    fg = box_probabilities(model, vol, (np.array([1, 5, 5]), np.array([2, 40, 40])))
    assert fg.shape == vol.shape and fg[0].max() == 0 and fg[3].max() == 0 and fg[1].max() > 0


def test_btcv_names_and_preset():
    assert len(ma_sam.BTCV_CLASSES) == 12
    model = ma_sam.MASAMModel(SIZE, 12, rank=2, adapter_channels=4)
    assert model.class_names == ma_sam.BTCV_CLASSES
    np.testing.assert_allclose(ma_sam.PRESET.normalize(np.array([-300.0, 25.0, 400.0])), [0.0, 0.5, 1.0])


def test_refuses_bad_files(files, tmp_path):
    base_path, _, _, pub = files
    with pytest.raises(CheckpointError, match="sam_checkpoint"):
        ma_sam.load(pub)
    broken = {k: t for k, t in pub.items() if k != "q_FacTs_002"}
    with pytest.raises(CheckpointError, match="q_FacTs_002"):
        ma_sam.load(broken, sam_checkpoint=base_path)
    broken = dict(pub)
    del broken["image_encoder.ImageEncoderViT.blocks.1.Block.adapter_conv_2.bias"]
    with pytest.raises(CheckpointError, match="blocks.1.adapter_2.conv.bias"):
        ma_sam.load(broken, sam_checkpoint=base_path)
    broken = dict(pub)
    broken["image_encoder.ImageEncoderViT.blocks.1.Block.adapter_wrong.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="adapter_wrong"):
        ma_sam.load(broken, sam_checkpoint=base_path)


def test_orientation_preset_reproduces_published_slice_layout():
    """MA-SAM's BTCV preprocessing takes nibabel's array [i, j, k] slice by slice and stores
    flip(rot90(slice, 1, axes=(0, 1)), axis=1). For a volume stored like the BTCV files (i toward L,
    j toward P, k toward S, i.e. LPS) our preset's model space must hold exactly those slices."""
    from samadapt3d.preprocess import ModelSpace, Preset
    from samadapt3d.volume import Volume

    rng = np.random.default_rng(0)
    array_kji = rng.normal(size=(3, 5, 7)).astype(np.float32)  # samadapt3d layout [k, j, i]
    volume = Volume(array_kji, spacing=(0.7, 0.7, 3.0))  # identity direction: LPS-stored
    preset = Preset(name="orientation-only", spacing=None, orientation=ma_sam.PRESET.orientation,
                    clip=None, normalization="none")
    model_space = ModelSpace(volume, preset).image  # [D, H, W]
    nib_array = array_kji.transpose(2, 1, 0)  # nibabel's [i, j, k]
    published = np.stack([np.flip(np.rot90(nib_array[:, :, z], k=1, axes=(0, 1)), axis=1)
                          for z in range(nib_array.shape[2])])
    np.testing.assert_array_equal(model_space, published)
