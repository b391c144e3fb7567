"""SAMed: our model against a straightforward computation of the published algorithm.

Reference = segment-anything's own modules with the LoRA merged into the qkv weight
(W_qkv + [B_q A_q; 0; B_v A_v]), SAM's tables resized to the 1/2-size grid, no prompts, all mask
tokens, bilinear upsampling, softmax.
"""
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samadapt3d.engines.slab import class_probabilities, labels_from_probabilities, segment_volume
from samadapt3d.errors import CheckpointError
from samadapt3d.families import samed
from samadapt3d.models import load_model
from samadapt3d.sam.build_sam import SAM_SIZES

SIZE = "vit_tiny"  # SAM native 128 -> SAMed input 64


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_sam_base, randomise):
    """A SAM base file (tiny, native 128 grid) and a SAMed checkpoint in the published layout."""
    torch.manual_seed(1)
    tmp = tmp_path_factory.mktemp("samed")
    base_path, base_state = tiny_sam_base
    model = samed.SAMedModel(SIZE, rank=4)
    randomise(model)
    published = samed.to_published(model)
    assert sorted(k for k in published if k.startswith("w_"))[:3] == ["w_a_000", "w_a_001", "w_a_002"]
    assert len([k for k in published if k.startswith("w_a_")]) == 2 * SAM_SIZES[SIZE].depth
    lora_path = tmp / "epoch_159.pth"
    torch.save(published, lora_path)
    return base_path, lora_path, base_state, published


def _reference(sam_reference, base_state, published, image_size):
    """segment-anything modules, LoRA merged into W_qkv, SAMed's load_from resizing."""
    s = SAM_SIZES[SIZE]
    encoder = sam_reference.encoder(SIZE, image_size)
    enc = sam_reference.resized_encoder_state(base_state, SIZE, image_size)
    d = s.embed_dim
    for i in range(s.depth):
        w = enc[f"blocks.{i}.attn.qkv.weight"]
        dq = published[f"w_b_{2 * i:03d}"] @ published[f"w_a_{2 * i:03d}"]
        dv = published[f"w_b_{2 * i + 1:03d}"] @ published[f"w_a_{2 * i + 1:03d}"]
        enc[f"blocks.{i}.attn.qkv.weight"] = w + torch.cat([dq, torch.zeros(d, d), dv], dim=0)
    encoder.load_state_dict(enc, strict=True)
    prompt, decoder = sam_reference.prompt_and_decoder(SIZE, image_size, 8, published)

    def run(slice01):  # [S, S] in [0, 1]
        x = torch.as_tensor(slice01)[None, None].repeat(1, 3, 1, 1)  # pixel mean 0, std 1
        with torch.no_grad():
            emb = encoder(x)
            sparse, dense = prompt(points=None, boxes=None, masks=None)
            masks, _ = decoder.predict_masks(emb, prompt.get_dense_pe(), sparse, dense)  # all 9 tokens
            masks = F.interpolate(masks, (image_size, image_size), mode="bilinear", align_corners=False)
            return masks.softmax(dim=1)[0]

    return run


def test_same_output_as_published_algorithm(files, sam_reference):
    base_path, lora_path, base_state, published = files
    model = load_model(lora_path, sam_checkpoint=base_path)
    assert isinstance(model, samed.SAMedModel)
    assert model.class_names == samed.SYNAPSE_CLASSES and model.image_size == 64 and model.rank == 4
    reference = _reference(sam_reference, base_state, published, 64)
    slice01 = torch.rand(64, 64)
    ours = model.predict_slab(slice01[None].numpy())[0]
    expected = reference(slice01)
    assert ours.shape == (9, 64, 64)
    atol = 1e-5
    torch.testing.assert_close(ours, expected, atol=atol, rtol=1e-4)
    # The LoRA matters: the same file with every LoRA B zeroed (the LoRA then adds nothing) gives an output that
    # the comparison above would tell apart (by many times its tolerance), and it is the reference's without LoRA.
    without_lora = {k: torch.zeros_like(v) if k.startswith("w_b_") else v for k, v in published.items()}
    assert any(k.startswith("w_b_") for k in published)
    path = lora_path.with_name("epoch_159_without_lora.pth")
    torch.save(without_lora, path)
    plain = load_model(path, sam_checkpoint=base_path).predict_slab(slice01[None].numpy())[0]
    assert (plain - ours).abs().max() > 10 * atol
    torch.testing.assert_close(plain, _reference(sam_reference, base_state, without_lora, 64)(slice01), atol=atol,
                               rtol=1e-4)


def test_volume_engine_runs_every_slice(files):
    base_path, lora_path, _, _ = files
    model = load_model(lora_path, sam_checkpoint=base_path)
    volume = np.random.rand(3, 40, 48).astype(np.float32)
    calls = []
    probs = class_probabilities(model, volume, progress=lambda f, m: calls.append(f))
    assert probs.shape == (9, 3, 40, 48)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs[:, 1], model.predict_slab(volume[1:2])[0].numpy(), atol=1e-6)
    assert calls[-1] == 1.0
    per_class = segment_volume(model, volume)
    assert list(per_class) == list(samed.SYNAPSE_CLASSES)
    np.testing.assert_allclose(per_class["liver"], probs[5], atol=1e-6)
    assert labels_from_probabilities(probs).shape == (3, 40, 48)


def test_preset_is_synapse_window():
    p = samed.PRESET
    out = p.normalize(np.array([-500.0, -125.0, 75.0, 275.0, 900.0]))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_refuses_without_sam_base(files):
    _, lora_path, _, _ = files
    with pytest.raises(CheckpointError, match="sam_checkpoint"):
        load_model(lora_path)


def test_finds_the_official_sam_file_next_to_the_checkpoint(files, tmp_path):
    """Users keep sam_vit_b_01ec64.pth beside the adapter file: no sam_checkpoint needed then; two SAM files there
    are ambiguous and are not guessed between."""
    base_path, lora_path, _, _ = files
    shutil.copy(lora_path, tmp_path / "samed_lora.pth")
    shutil.copy(base_path, tmp_path / "sam_vit_b_01ec64.pth")
    found = load_model(tmp_path / "samed_lora.pth")
    expected = load_model(lora_path, sam_checkpoint=base_path)
    for (name, a), (_, b) in zip(found.state_dict().items(), expected.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    shutil.copy(base_path, tmp_path / "sam_vit_h_4b8939.pth")
    with pytest.raises(CheckpointError, match="sam_checkpoint"):
        load_model(tmp_path / "samed_lora.pth")


def test_refuses_missing_and_mis_shaped_keys(files, tmp_path):
    base_path, _, base_state, published = files
    broken = dict(published)
    del broken["w_b_003"]
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match="w_b_003"):
        load_model(path, sam_checkpoint=base_path)
    bad = dict(published)
    bad["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="mask_decoder.iou_token.weight"):
        load_model(path, sam_checkpoint=base_path)
    # A base file of another SAM size: named key, no crash.
    base = {k: v for k, v in base_state.items() if "blocks.3." not in k}
    base_bad = tmp_path / "sam_bad.pth"
    torch.save(base, base_bad)
    with pytest.raises(CheckpointError, match="not a known SAM size|w_a_"):
        load_model(path, sam_checkpoint=base_bad)
