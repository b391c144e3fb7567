"""TinyViT encoder backends (samadapt3d.runtime.encoders) on a tiny random TinyViT: the OpenVINO IR is exported once
per weights into the cache folder and agrees with PyTorch fp32; fp32 stays exact; a missing or failing backend
falls back to PyTorch fp32; the choice per precision and device; LiteMedSAM's precision and embedding identity."""
import os
import sys

import pytest
import torch

from samadapt3d.errors import InputError
from samadapt3d.runtime import PRECISIONS, apply_precision
from samadapt3d.runtime import encoders
from samadapt3d.runtime.encoders import BackendChoice, EncoderRunner, choose_backend, weights_digest
from samadapt3d.sam.tiny_vit import TinyViT, TinyViTConfig

TINY = TinyViTConfig(img_size=64, embed_dims=(16, 24, 32, 48), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 3),
                     window_sizes=(7, 7, 14, 7), out_chans=32)
#: OpenVINO fp32 vs PyTorch fp32 (different kernels, same arithmetic)
FP32_TOLERANCE = 1e-4


def _need_openvino():
    if not encoders.openvino_available():
        if os.environ.get("CI") == "true":
            pytest.fail("openvino is not installed (pip install openvino)")
        pytest.skip("openvino is not installed")


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(3)
    model = TinyViT(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def ov_folder(tmp_path_factory):
    """One cache folder for the module's OpenVINO exports (each export costs seconds)."""
    return tmp_path_factory.mktemp("ov_cache")


@pytest.fixture
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))


def test_openvino_fp32_matches_pytorch_and_is_exported_once(tiny_encoder, images, ov_folder, monkeypatch):
    _need_openvino()
    tmp_path = ov_folder
    monkeypatch.setenv("SAMADAPT3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(encoders, "choose_backend", lambda precision, device: BackendChoice("openvino", "fp32"))
    runner = EncoderRunner(tiny_encoder, 64, precision="auto")
    with torch.no_grad():
        expected = tiny_encoder(images)
        got = runner(images)  # batch of 2: the IR has a dynamic batch
    assert runner.choice(images.device) == BackendChoice("openvino", "fp32")
    assert got.shape == expected.shape and float((got - expected).abs().max()) < FP32_TOLERANCE
    irs = [p for p in tmp_path.rglob("encoder.xml") if weights_digest(tiny_encoder)[:24] in str(p)]
    assert len(irs) == 1
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    exports = []
    monkeypatch.setattr(encoders, "export_openvino_ir", lambda *a: exports.append(a))
    with torch.no_grad():
        again = EncoderRunner(tiny_encoder, 64, precision="auto")(images)
    assert exports == [] and torch.allclose(again, got)


def test_changed_weights_rebuild_the_backend(tiny_encoder, images, ov_folder, monkeypatch):
    _need_openvino()
    tmp_path = ov_folder
    monkeypatch.setenv("SAMADAPT3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(encoders, "choose_backend", lambda precision, device: BackendChoice("openvino", "fp32"))
    model = TinyViT(TINY).eval()
    model.load_state_dict(tiny_encoder.state_dict())
    runner = EncoderRunner(model, 64, precision="auto")
    with torch.no_grad():
        before = runner(images)
        digest = runner.digest()
        model.neck[1].weight.mul_(2.0)  # in place, as an optimiser step would
        after = runner(images)
        expected = model(images)
    new_ir = [p for p in tmp_path.rglob("encoder.xml") if runner.digest()[:24] in str(p)]
    assert runner.digest() != digest and len(new_ir) == 1
    assert float((after - expected).abs().max()) < FP32_TOLERANCE and not torch.allclose(after, before)


def test_fp32_is_the_module_itself(tiny_encoder, images):
    runner = EncoderRunner(tiny_encoder, 64, precision="fp32")
    with torch.no_grad():
        assert torch.equal(runner(images), tiny_encoder(images))
    assert runner.choice(torch.device("cpu")) == BackendChoice("torch", "fp32")


def test_training_uses_the_module_with_gradients(tiny_encoder, images, monkeypatch):
    monkeypatch.setattr(encoders, "choose_backend", lambda precision, device: BackendChoice("openvino", "bf16"))
    runner = EncoderRunner(tiny_encoder, 64, precision="auto")
    out = runner(images)  # grad enabled, parameters require grad: never a backend without autograd
    assert out.requires_grad


def test_failing_openvino_falls_back_to_pytorch_fp32(tiny_encoder, images, monkeypatch, caplog):
    monkeypatch.setattr(encoders, "choose_backend", lambda precision, device: BackendChoice("openvino", "bf16"))

    def broken(*args, **kwargs):
        raise RuntimeError("no IR for you")

    monkeypatch.setattr(encoders, "OpenVINOEncoder", broken)
    runner = EncoderRunner(tiny_encoder, 64, precision="auto")
    with torch.no_grad():
        out = runner(images)
        out2 = runner(images)
        expected = tiny_encoder(images)
    assert torch.equal(out, expected) and torch.equal(out2, expected)
    assert runner.choice(images.device) == BackendChoice("torch", "fp32")
    assert sum("OpenVINO encoder unavailable" in r.getMessage() for r in caplog.records) == 1


def test_backend_choice_per_precision_and_device(monkeypatch):
    cpu = torch.device("cpu")
    assert choose_backend("fp32", cpu) == BackendChoice("torch", "fp32")
    monkeypatch.setattr(encoders, "openvino_available", lambda: True)
    assert choose_backend("auto", cpu) == BackendChoice("openvino", "fp32")  # masks as fp32's
    assert choose_backend("bf16", cpu) == BackendChoice("openvino", "bf16")
    monkeypatch.setattr(encoders, "openvino_available", lambda: False)
    assert choose_backend("auto", cpu) == BackendChoice("torch", "fp32")
    assert choose_backend("bf16", cpu) == BackendChoice("torch", "bf16")
    assert choose_backend("auto", torch.device("cuda")) == BackendChoice("torch", "fp32")
    assert choose_backend("bf16", torch.device("mps")) == BackendChoice("torch", "fp32")
    with pytest.raises(ValueError):
        choose_backend("int4", cpu)


def test_missing_openvino_module_is_detected(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    assert encoders.openvino_available() is False


def test_bf16_autocast_output_is_float32_and_close(tiny_encoder, images):
    runner = encoders.TorchEncoder(tiny_encoder, "bf16")
    with torch.no_grad():
        out, ref = runner(images), tiny_encoder(images)
    assert out.dtype == torch.float32
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05  # bf16 arithmetic: not bit-identical, close


def test_precision_is_checked_and_applied():
    from samadapt3d.families.litemedsam import LiteMedSAM

    model = LiteMedSAM()  # built directly: exact fp32 (load_model gives "auto")
    assert model.precision == "fp32" and model.embeddings_exact() and model.backend() == "torch-fp32"
    identity = model.embedding_identity()
    apply_precision(model, "bf16")
    assert model.precision == "bf16" and not model.embeddings_exact()
    assert model.embedding_identity() != identity and model.embedding_identity().endswith(model.backend())
    with pytest.raises(InputError):
        apply_precision(model, "int3")
    with pytest.raises(InputError):
        apply_precision(torch.nn.Linear(2, 2), "bf16")  # a model without a choice: fp32 only
    assert apply_precision(model, None) is model and set(PRECISIONS) == {"auto", "fp32", "bf16"}


def test_released_working_memory_gives_the_same_embeddings(tiny_encoder, images, ov_folder, monkeypatch):
    """EncoderRuntime.release_memory between clicks: OpenVINO's buffers go, the next call is bit-identical."""
    _need_openvino()
    monkeypatch.setenv("SAMADAPT3D_CACHE_DIR", str(ov_folder))
    monkeypatch.setattr(encoders, "choose_backend", lambda precision, device: BackendChoice("openvino", "fp32"))
    runner = EncoderRunner(tiny_encoder, 64, precision="auto")
    runner.release_memory()  # nothing built yet: nothing to do
    with torch.no_grad():
        before = runner(images)
        runner.release_memory()
        after = runner(images)
        runner.release_memory()
        runner.release_memory()  # twice in a row is harmless
        again = runner(images)
    assert torch.equal(before, after) and torch.equal(after, again)


def test_an_export_gives_the_freed_heap_back(tiny_encoder, images, tmp_path, monkeypatch):
    """Tracing and converting leave hundreds of MiB freed but held: each IR export trims the heap once."""
    import platform

    from samadapt3d.runtime.heap import trim_heap

    _need_openvino()
    assert trim_heap() is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    trims = []
    monkeypatch.setattr(encoders, "trim_heap", lambda: trims.append(1) or True)
    monkeypatch.setenv("SAMADAPT3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(encoders, "choose_backend", lambda precision, device: BackendChoice("openvino", "fp32"))
    with torch.no_grad():
        EncoderRunner(tiny_encoder, 64, precision="auto")(images)
        assert trims == [1]
        EncoderRunner(tiny_encoder, 64, precision="auto")(images)  # the IR is there: no export, no trim
    assert trims == [1]
