"""Box decoding on OpenVINO fp32 (samadapt3d.runtime.decoders), on a small random SAM decoder: the logits and IoU
equal PyTorch's; the IR is exported once per weights and rebuilt after they change; LiteMedSAM routes only
inference box calls with a non-fp32 precision there; a failing OpenVINO falls back to PyTorch."""
import numpy as np
import pytest
import torch

from ci_requirements import require_module
from samadapt3d.families.litemedsam import LiteMedSAM
from samadapt3d.runtime import decoders
from samadapt3d.runtime.decoders import BoxDecoderRunner
from samadapt3d.sam.build_sam import build_mask_decoder, build_prompt_encoder

#: OpenVINO fp32 vs PyTorch fp32 logits (different kernels, same arithmetic; the issue's bar is 1e-4)
LOGIT_TOLERANCE = 1e-4
EMBED_DIM, EMBED_SIDE, IMAGE_SIDE = 32, 16, 64


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(5)
    prompt_encoder = build_prompt_encoder(EMBED_DIM, IMAGE_SIDE, EMBED_SIDE).eval()
    mask_decoder = build_mask_decoder(EMBED_DIM, num_heads=4, mlp_dim=64).eval()
    return prompt_encoder, mask_decoder


def _boxes(count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, IMAGE_SIDE * 0.6, (count, 2))
    return torch.tensor(np.concatenate([lo, lo + rng.uniform(4, IMAGE_SIDE * 0.4, (count, 2))], 1), dtype=torch.float32)


def _torch_decode(prompt_encoder, mask_decoder, embedding, boxes):
    sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=None)
    return mask_decoder(image_embeddings=embedding, image_pe=prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)


def test_openvino_box_decoder_equals_pytorch_and_exports_once(parts, tmp_path, monkeypatch):
    require_module("openvino", "pip install openvino")
    monkeypatch.setenv("SAMADAPT3D_CACHE_DIR", str(tmp_path))
    runner = BoxDecoderRunner(*parts, (EMBED_DIM, EMBED_SIDE, EMBED_SIDE))
    embedding = torch.randn(1, EMBED_DIM, EMBED_SIDE, EMBED_SIDE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for count, seed in ((1, 0), (3, 1), (9, 2)):  # the export traced 2 boxes: other counts too
            boxes = _boxes(count, seed)
            assert runner.usable(embedding, boxes)
            logits, iou = runner(embedding, boxes)
            ref_logits, ref_iou = _torch_decode(*parts, embedding, boxes)
            assert logits.shape == ref_logits.shape == (count, 1, 4 * EMBED_SIDE, 4 * EMBED_SIDE)
            assert float((logits - ref_logits).abs().max()) < LOGIT_TOLERANCE
            assert float((iou - ref_iou).abs().max()) < LOGIT_TOLERANCE
    assert len(list((tmp_path / "decoders").glob("*/decoder.xml"))) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(decoders, "export_decoder_ir", no_export)
    again = BoxDecoderRunner(*parts, (EMBED_DIM, EMBED_SIDE, EMBED_SIDE))
    with torch.no_grad():
        assert again(embedding, _boxes(2, 3)) is not None  # compiled from the stored IR


def test_changed_weights_rebuild_the_decoder(parts, tmp_path, monkeypatch):
    require_module("openvino", "pip install openvino")
    monkeypatch.setenv("SAMADAPT3D_CACHE_DIR", str(tmp_path))
    prompt_encoder, mask_decoder = parts
    runner = BoxDecoderRunner(prompt_encoder, mask_decoder, (EMBED_DIM, EMBED_SIDE, EMBED_SIDE))
    embedding = torch.randn(1, EMBED_DIM, EMBED_SIDE, EMBED_SIDE, generator=torch.Generator().manual_seed(7))
    boxes = _boxes(2, 4)
    bias = mask_decoder.iou_prediction_head.layers[-1].bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            before = runner(embedding, boxes)[1]
            bias.add_(1.0)  # changed in place, as fine-tuning does
            after = runner(embedding, boxes)[1]
            ref = _torch_decode(prompt_encoder, mask_decoder, embedding, boxes)[1]
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert float((after - before).abs().min()) > 0.5
    assert float((after - ref).abs().max()) < LOGIT_TOLERANCE


def test_not_usable_for_training_gradients_or_other_shapes(parts):
    runner = BoxDecoderRunner(*parts, (EMBED_DIM, EMBED_SIDE, EMBED_SIDE))
    embedding = torch.zeros(1, EMBED_DIM, EMBED_SIDE, EMBED_SIDE)
    boxes = _boxes(2, 5)
    with torch.no_grad():
        assert not runner.usable(torch.zeros(2, EMBED_DIM, EMBED_SIDE, EMBED_SIDE), boxes)  # one embedding only
        assert not runner.usable(embedding, boxes[:, None, :])  # [B, 1, 4] (training's shape)
        assert not runner.usable(torch.zeros(1, EMBED_DIM, 8, 8), boxes)
    assert not runner.usable(embedding, boxes)  # gradients on, parameters trainable
    parts[1].train()
    try:
        with torch.no_grad():
            assert not runner.usable(embedding, boxes)
    finally:
        parts[1].eval()


class _Recorder:
    def __init__(self, result=None):
        self.calls, self.result = 0, result

    def __call__(self, embedding, boxes):
        self.calls += 1
        return self.result


@pytest.fixture(scope="module")
def litemedsam_model():
    return LiteMedSAM(precision="auto").eval()  # random weights: only the routing is tested


def test_litemedsam_routes_only_inference_box_calls_with_a_fast_precision(litemedsam_model, monkeypatch):
    model = litemedsam_model
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(8))
    boxes = torch.tensor([[20.0, 30.0, 120.0, 140.0]])
    with torch.no_grad():
        expected = _torch_decode(model.prompt_encoder, model.mask_decoder, embedding, boxes)
    marker = (torch.full_like(expected[0], 7.0), torch.full_like(expected[1], 7.0))
    recorder = _Recorder(marker)
    monkeypatch.setattr(BoxDecoderRunner, "__call__", lambda self, e, b: recorder(e, b))
    monkeypatch.setattr(BoxDecoderRunner, "usable", lambda self, e, b: True)
    with torch.no_grad():
        assert torch.equal(model.decode(embedding, boxes=boxes)[0], marker[0])  # auto: the fast path
        points = (torch.tensor([[[50.0, 60.0]]]), torch.tensor([[1]]))
        with_points = model.decode(embedding, points=points, boxes=boxes)[0]
        assert not torch.equal(with_points, marker[0])  # points: PyTorch
        assert recorder.calls == 1
        model.set_precision("fp32")
        try:
            exact = model.decode(embedding, boxes=boxes)
        finally:
            model.set_precision("auto")
    assert recorder.calls == 1  # fp32: the exact PyTorch path
    assert torch.equal(exact[0], expected[0]) and torch.equal(exact[1], expected[1])


def test_litemedsam_decodes_with_pytorch_when_openvino_fails(litemedsam_model, monkeypatch, caplog):
    model = litemedsam_model
    runner = BoxDecoderRunner(model.prompt_encoder, model.mask_decoder, (256, 64, 64))
    monkeypatch.setattr(model, "_decoder_runner", runner)
    monkeypatch.setattr(runner, "usable", lambda e, b: True)

    def broken(*args, **kwargs):
        raise RuntimeError("no CPU plugin")

    monkeypatch.setattr(decoders, "OpenVINOBoxDecoder", broken)
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(9))
    boxes = torch.tensor([[20.0, 30.0, 120.0, 140.0]])
    with torch.no_grad(), caplog.at_level("WARNING"):
        logits, iou = model.decode(embedding, boxes=boxes)
        expected = _torch_decode(model.prompt_encoder, model.mask_decoder, embedding, boxes)
    assert torch.equal(logits, expected[0]) and torch.equal(iou, expected[1])
    assert "OpenVINO decoder unavailable" in caplog.text


def test_warm_backends_builds_both_once(litemedsam_model, monkeypatch):
    model = litemedsam_model
    builds = []
    monkeypatch.setattr(model, "_decoder_runner", BoxDecoderRunner(model.prompt_encoder, model.mask_decoder,
                                                                    (256, 64, 64)))
    from samadapt3d.runtime import encoders
    monkeypatch.setattr(encoders, "OpenVINOEncoder", lambda *a, **k: builds.append("encoder") or (lambda x: x[:, :1]))
    monkeypatch.setattr(decoders, "OpenVINOBoxDecoder", lambda *a, **k: builds.append("decoder") or (
        lambda e, b: (torch.zeros(len(b), 1, 256, 256), torch.zeros(len(b), 1))))
    monkeypatch.setattr(encoders, "openvino_available", lambda: True)
    monkeypatch.setattr(decoders, "openvino_available", lambda: True)
    monkeypatch.setattr(encoders, "choose_backend", lambda precision, device: encoders.BackendChoice("openvino", "fp32"))
    monkeypatch.setattr(model._runner, "_built", None)
    monkeypatch.setattr(BoxDecoderRunner, "usable", lambda self, e, b: True)
    embed = model.embed
    monkeypatch.setattr(model, "embed", lambda images: builds.append("embed") or embed(images))
    model.warm_backends()
    model.warm_backends()  # built: costs nothing (it runs before every background prefetch)
    assert builds == ["embed", "encoder", "decoder"]
