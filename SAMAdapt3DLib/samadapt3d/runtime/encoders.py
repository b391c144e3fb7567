"""Image-encoder backends: exact PyTorch fp32, PyTorch bf16 autocast (CPU with AVX512-BF16/AMX, CUDA), and
OpenVINO (fp32, or bf16 where the CPU has it) from an IR exported at first use into the user's cache folder.

An OpenVINO IR is keyed by a digest of the encoder's weights (and the OpenVINO version), written atomically
(temporary folder + rename) and never at import. Anything that fails on the way (no openvino, an export or
compile error) falls back to PyTorch fp32 with one warning; the result is always an embedding.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import PRECISIONS
from .heap import trim_heap
from .paths import user_cache_dir

log = logging.getLogger(__name__)

#: CPU flags that make bfloat16 matrix products native (otherwise bf16 is emulated and slower than fp32)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class BackendChoice:
    """What will run the encoder: `backend` in ("torch", "openvino"), `precision` in ("fp32", "bf16")."""

    backend: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False  # not Linux: let OpenVINO decide (its bf16 hint falls back to f32 where unsupported)
    return any(flag in flags.split() for flag in BF16_CPU_FLAGS)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(precision: str, device: torch.device) -> BackendChoice:
    """The backend for a requested precision on a device (see PRECISIONS)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return BackendChoice("torch", "fp32")
    if device.type != "cpu":
        # CUDA: bf16 autocast only when asked (its masks differ a little from fp32, below); else exact fp32
        bf16 = precision == "bf16" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        return BackendChoice("torch", "bf16" if bf16 else "fp32")
    if openvino_available():
        # auto: OpenVINO fp32 (3.6x PyTorch fp32, same embeddings to 5e-6). bf16 (5.7x) only when asked: through
        # the click pipeline its lung masks were Dice 0.982/0.987 to fp32's (docs/BENCHMARKS.md), short of 0.99
        return BackendChoice("openvino", "bf16" if precision == "bf16" else "fp32")
    return BackendChoice("torch", "bf16" if precision == "bf16" else "fp32")


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the module's state (names, shapes, dtypes, bytes): the key of an exported encoder."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def weights_fingerprint(module: nn.Module) -> tuple:
    """Cheap per-call check that the weights did not change in place (versions and storage of every tensor)."""
    return tuple((t._version, t.data_ptr()) for t in module.state_dict().values())


class TorchEncoder:
    """The module itself, in fp32 or under bf16 autocast (fp32 output)."""

    def __init__(self, module: nn.Module, precision: str) -> None:
        self.module = module
        self.precision = precision

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return self.module(images)
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16):
            return self.module(images).float()

    def release_memory(self) -> None:
        """PyTorch frees its buffers after each call: nothing held."""


class OpenVINOEncoder:
    """An OpenVINO CPU model compiled from the module's IR (exported once per weights into `folder`)."""

    def __init__(self, module: nn.Module, precision: str, image_size: int, digest: str,
                 folder: Path | None = None, hint: str = "LATENCY") -> None:
        """`hint`: OpenVINO's PERFORMANCE_HINT ("LATENCY": one request uses every thread; "THROUGHPUT": several
        streams, which pays only for batches; the benchmark compares them)."""
        import openvino as ov

        self.precision = precision
        root = (folder or user_cache_dir() / "encoders")
        version = ov.__version__.split("-")[0]
        self.ir_path = root / f"{type(module).__name__.lower()}-{digest[:24]}-ov{version}" / "encoder.xml"
        if not self.ir_path.is_file():
            export_openvino_ir(module, image_size, self.ir_path)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": max(torch.get_num_threads(), 1)}
        self.compiled = core.compile_model(core.read_model(self.ir_path), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from the prefetch thread and the engine take turns

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            result = self._request.infer({0: array})
            out = next(iter(result.values()))
            return torch.from_numpy(out.copy())

    def release_memory(self) -> None:
        """The compiled model's buffers between layers, given back until the next call (+60 ms then)."""
        with self._lock:
            self.compiled.release_memory()


def save_ir_atomically(path: Path, convert: Callable[[], object]) -> None:
    """Write the OpenVINO model that `convert()` returns as IR at `path` (the file in a folder of its own): into a
    temporary sibling folder first, renamed into place, so that a reader never sees half an IR."""
    import openvino as ov

    path.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent.with_name(f".{path.parent.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        ov.save_model(convert(), tmp / path.name, compress_to_fp16=False)
        try:
            tmp.rename(path.parent)
        except OSError:
            if not path.is_file():  # another process won the race: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # tracing and converting leave ~500 MiB freed but held by the allocator (measured on LiteMedSAM's encoder);
    # an export happens once per weights, so the process need not carry that into the clicks that follow
    trim_heap()


def export_openvino_ir(module: nn.Module, image_size: int, path: Path) -> None:
    """Convert `module` (eval, fp32) to OpenVINO IR at `path` (dynamic batch), atomically."""
    import openvino as ov

    def convert():
        was_training = module.training
        module.eval()
        example = torch.zeros(1, 3, image_size, image_size)
        with torch.no_grad():
            module(example)  # fills inference-time caches (folded Conv-BN) so the trace holds constants only
            traced = torch.jit.trace(module, example, check_trace=False)
            converted = ov.convert_model(traced, example_input=example, input=[(-1, 3, image_size, image_size)])
        module.train(was_training)
        return converted

    save_ir_atomically(path, convert)


class EncoderRunner:
    """Runs an image encoder on the chosen backend; rebuilt when the weights, precision or device change."""

    def __init__(self, module: nn.Module, image_size: int, precision: str = "auto") -> None:
        self.module = module
        self.image_size = image_size
        self.precision = precision
        self._built: tuple | None = None  # (precision, device, fingerprint, choice, encoder)
        self._digest: tuple | None = None  # (fingerprint, weights_digest)
        self._failed = False  # OpenVINO failed once: PyTorch fp32 from then on (one warning)

    def choice(self, device: torch.device) -> BackendChoice:
        """The backend in use (after a fallback: torch-fp32), or the one the next call will build."""
        built = self._built
        if built is not None and built[:3] == (self.precision, device, weights_fingerprint(self.module)):
            return built[3]
        if self._failed:
            return BackendChoice("torch", "fp32")
        return choose_backend(self.precision, device)

    def ready(self, device: torch.device) -> bool:
        """The backend for the current precision, device and weights is built (or fell back)."""
        built = self._built
        return built is not None and built[:3] == (self.precision, device, weights_fingerprint(self.module))

    def digest(self) -> str:
        """weights_digest of the module, recomputed only after its weights changed."""
        fingerprint = weights_fingerprint(self.module)
        if self._digest is None or self._digest[0] != fingerprint:
            self._digest = (fingerprint, weights_digest(self.module))
        return self._digest[1]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        learning = self.module.training or (torch.is_grad_enabled() and any(
            p.requires_grad for p in self.module.parameters()))
        if learning or self.precision == "fp32":
            return self.module(images)  # training and the exact path: the module itself
        return self._build(images.device)(images)

    def release_memory(self) -> None:
        """The built backend's working memory (see EncoderRuntime.release_memory)."""
        if self._built is not None:
            self._built[4].release_memory()

    def _build(self, device: torch.device):
        fingerprint = weights_fingerprint(self.module)
        built = self._built
        if built is not None and built[:3] == (self.precision, device, fingerprint):
            return built[4]
        choice = choose_backend(self.precision, device)
        encoder = None
        if choice.backend == "openvino" and not self._failed:
            try:
                encoder = OpenVINOEncoder(self.module, choice.precision, self.image_size, self.digest())
            except Exception as exc:  # noqa: BLE001 - any export/compile failure: the exact path still works
                log.warning("samadapt3d: OpenVINO encoder unavailable (%s); using PyTorch fp32", exc)
                self._failed = True
        if encoder is None:
            if choice.backend == "openvino":
                choice = BackendChoice("torch", "fp32")
            encoder = TorchEncoder(self.module, choice.precision)
        self._built = (self.precision, device, fingerprint, choice, encoder)
        return encoder
