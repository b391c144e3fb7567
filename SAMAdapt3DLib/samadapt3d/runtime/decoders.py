"""The SAM prompt encoder + mask decoder for box prompts on OpenVINO fp32 (CPU): the slice engine's one call per
propagated slice, which is most of a click's time on a clinical CT once the slices are embedded.

Only the box path is exported (an embedding [1, C, h, w] and boxes [B, 4] -> low-res logits [B, 1, 4h, 4w] and
predicted IoU [B, 1]); points, mask inputs, multimask output, gradients and the exact fp32 precision stay on
PyTorch. The IR is keyed by a digest of the decoder's weights, written atomically into the user's cache folder at
first use; any failure falls back to PyTorch with one warning. fp32 throughout (INFERENCE_PRECISION_HINT f32),
so the logits equal PyTorch's to float rounding (tests/test_litemedsam_decoder.py).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from torch import nn

from .encoders import openvino_available, save_ir_atomically, weights_digest, weights_fingerprint
from .paths import user_cache_dir

log = logging.getLogger(__name__)

#: boxes in the example the decoder is traced with (> 1, so the embedding's repeat over boxes is traced)
_TRACE_BOXES = 2


class BoxDecoder(nn.Module):
    """prompt encoder (boxes only) + mask decoder (first mask token): the function that is exported."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)


class OpenVINOBoxDecoder:
    """BoxDecoder compiled by OpenVINO for the CPU (fp32), from an IR exported once per weights."""

    def __init__(self, module: BoxDecoder, embedding_shape: tuple[int, int, int], digest: str,
                 folder: Path | None = None) -> None:
        import openvino as ov

        root = folder or user_cache_dir() / "decoders"
        version = ov.__version__.split("-")[0]
        self.ir_path = root / f"boxdecoder-{digest[:24]}-ov{version}" / "decoder.xml"
        if not self.ir_path.is_file():
            export_decoder_ir(module, embedding_shape, self.ir_path)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": max(torch.get_num_threads(), 1)}
        self.compiled = core.compile_model(core.read_model(self.ir_path), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {0: embedding.detach().to("cpu", torch.float32).contiguous().numpy(),
                  1: boxes.detach().to("cpu", torch.float32).contiguous().numpy()}
        with self._lock:
            result = self._request.infer(inputs)
            masks, iou = (torch.from_numpy(result[out].copy()) for out in self.compiled.outputs)
        return masks, iou


def export_decoder_ir(module: BoxDecoder, embedding_shape: tuple[int, int, int], path: Path) -> None:
    """Trace `module` and save it as OpenVINO IR at `path` (dynamic box count), atomically."""
    import openvino as ov

    def convert():
        modes = [(m, m.training) for m in module.modules()]  # the model's own modules: restored as they were
        module.eval()
        embedding = torch.zeros(1, *embedding_shape)
        boxes = torch.tensor([[10.0, 20.0, 90.0, 120.0]]).repeat(_TRACE_BOXES, 1)
        with torch.no_grad():
            traced = torch.jit.trace(module, (embedding, boxes), check_trace=False)
            converted = ov.convert_model(traced, example_input=(embedding, boxes),
                                         input=[(1, *embedding_shape), (-1, 4)])
        for m, mode in modes:
            m.training = mode
        return converted

    save_ir_atomically(path, convert)


class BoxDecoderRunner:
    """Runs box decoding on OpenVINO when `fast` holds (CPU, no gradients); rebuilt after the weights change."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 embedding_shape: tuple[int, int, int], folder: Path | None = None) -> None:
        """`folder`: where IRs are kept (default: the user's cache folder, `decoders/`)."""
        self.module = BoxDecoder(prompt_encoder, mask_decoder)
        self.folder = folder
        self.embedding_shape = tuple(int(v) for v in embedding_shape)
        self._built: tuple | None = None  # (fingerprint, decoder)
        self._failed = False

    def ready(self) -> bool:
        """Built for the current weights, or failed for good (PyTorch decodes): nothing to warm up."""
        return self._failed or (self._built is not None and self._built[0] == weights_fingerprint(self.module))

    def usable(self, embedding: torch.Tensor, boxes: torch.Tensor) -> bool:
        """OpenVINO can run this call: CPU tensors, inference only, the exported shapes (one embedding, boxes
        [B, 4]), openvino installed."""
        if self._failed or embedding.device.type != "cpu" or tuple(embedding.shape[1:]) != self.embedding_shape:
            return False
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or boxes.shape[0] == 0:
            return False
        parts = (self.module.prompt_encoder, self.module.mask_decoder)  # the wrapper's own flag is never set
        if any(part.training for part in parts) or (
                torch.is_grad_enabled() and any(p.requires_grad for p in self.module.parameters())):
            return False
        return embedding.shape[0] == 1 and openvino_available()

    def __call__(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Logits [B, 1, 4h, 4w] and IoU [B, 1], or None when OpenVINO failed (the caller runs PyTorch)."""
        fingerprint = weights_fingerprint(self.module)
        if self._built is None or self._built[0] != fingerprint:
            try:
                self._built = (fingerprint, OpenVINOBoxDecoder(self.module, self.embedding_shape,
                                                               weights_digest(self.module), self.folder))
            except Exception as exc:  # noqa: BLE001 - any export/compile failure: PyTorch still decodes
                log.warning("samadapt3d: OpenVINO decoder unavailable (%s); decoding with PyTorch", exc)
                self._failed = True
                return None
        return self._built[1](embedding, boxes)
