"""Helpers shared by the 2D/2.5D adapter families (SAMed, MA-SAM, Med-SA).

All three publish only their adapter/decoder weights (or a full state dict) on top of an official
SAM file; the ViT size is read from the SAM encoder keys, and the encoder is rebuilt from the
shared `samadapt3d.sam` modules at the family's input size.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import _short_list, load_weights
from ..errors import CheckpointError, InputError
from ..sam.build_sam import SAM_SIZES, SamSize
from .base import SliceModel

ENCODER = "image_encoder."


def size_name_from_state(state: Mapping[str, Any], source: str, prefix: str = ENCODER) -> str:
    """The SAM_SIZES name whose embed dim and depth match the encoder keys under `prefix`."""
    key = prefix + "patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError(f"{source} has no SAM image encoder (missing key {key})")
    dim = int(state[key].shape[0])
    blocks = {int(k[len(prefix) + len("blocks."):].split(".")[0]) for k in state
              if k.startswith(prefix + "blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    for name, size in SAM_SIZES.items():
        if size.embed_dim == dim and size.depth == depth:
            return name
    known = ", ".join(f"{n} ({s.embed_dim}x{s.depth})" for n, s in SAM_SIZES.items())
    raise CheckpointError(f"{source}: image encoder of width {dim} and depth {depth} is not a known SAM size ({known})")


def model_input_size(size: SamSize) -> int:
    """SAMed and MA-SAM run at half of SAM's native side: 512 for the real sizes."""
    return size.img_size // 2


def sized(size: SamSize, image_size: int) -> SamSize:
    return replace(size, img_size=image_size)


def require_keys(state: Mapping[str, Any], keys: Iterable[str], source: str, what: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{source} is not a complete {what} file: missing keys: {_short_list(missing)}")


def load_sam_base(sam_checkpoint, family: str, expected: str = "the official SAM file") -> tuple[dict, str]:
    """The SAM base state dict (plain or wrapped in `model`/`state_dict`) and its source name."""
    if sam_checkpoint is None:
        raise CheckpointError(
            f"a {family} checkpoint holds only its adapted weights: also give the SAM base file it was "
            f"trained on ({expected}) as sam_checkpoint (CLI: --sam-checkpoint)"
        )
    state = load_weights(sam_checkpoint)
    for wrapper in ("model", "state_dict"):
        if ENCODER + "patch_embed.proj.weight" not in state and isinstance(state.get(wrapper), Mapping):
            state = dict(state[wrapper])
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, str(sam_checkpoint)


def resize_encoder_tables(
    encoder_state: dict[str, torch.Tensor], size: SamSize, image_size: int, prefix: str = ENCODER,
    rel_pos_names: tuple[str, str] = ("rel_pos_h", "rel_pos_w"),
) -> dict[str, torch.Tensor]:
    """Resize SAM's absolute position grid and its global blocks' relative-position tables to the
    token grid of `image_size`, as SAMed's and MA-SAM's `load_from` do (bilinear, align_corners=False)."""
    out = dict(encoder_state)
    grid = image_size // size.patch_size
    pos_key = prefix + "pos_embed"
    pos = out.get(pos_key)
    if pos is not None and pos.shape[1] != grid:
        pos = F.interpolate(pos.float().permute(0, 3, 1, 2), (grid, grid), mode="bilinear", align_corners=False)
        out[pos_key] = pos.permute(0, 2, 3, 1)
    for index in size.global_attn_indexes:
        for name in rel_pos_names:
            key = f"{prefix}blocks.{index}.attn.{name}"
            table = out.get(key)
            if table is not None and table.shape[0] != 2 * grid - 1:
                resized = F.interpolate(table.float()[None, None], (2 * grid - 1, table.shape[1]),
                                        mode="bilinear", align_corners=False)
                out[key] = resized[0, 0]
    return out


def slice_to_input(slice2d: np.ndarray | torch.Tensor, image_size: int, detour: int | None = None) -> torch.Tensor:
    """A preset-normalised 2D slice -> [3, S, S] (grey repeated in 3 channels), resized bicubically
    (through `detour` first when given, as SAMed's test script does)."""
    t = torch.as_tensor(np.asarray(slice2d, dtype=np.float32))
    if t.ndim != 2:
        raise InputError(f"expected a 2D slice, got shape {tuple(t.shape)}")
    t = t[None, None]
    for side in ([detour] if detour else []) + [image_size]:
        if tuple(t.shape[-2:]) != (side, side):
            t = F.interpolate(t, (side, side), mode="bicubic", align_corners=True)
    return t[0].expand(3, -1, -1).contiguous()


def decode_without_prompts(
    prompt_encoder: nn.Module, mask_decoder: nn.Module, embeddings: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """All mask tokens' logits [B, M, h, w] and IoU [B, M] with no prompt (SAMed, MA-SAM)."""
    b = embeddings.shape[0]
    sparse, dense = prompt_encoder(points=None, boxes=None, masks=None)
    sparse = sparse.expand(b, -1, -1)
    dense = dense.expand(b, -1, -1, -1)
    return mask_decoder.predict_masks(embeddings, prompt_encoder.get_dense_pe(), sparse, dense)


class ClassSliceModel(SliceModel):
    """A prompt-free multi-class 2D/2.5D model: `slab_size` consecutive slices in, class
    probabilities (background first) out. Driven by `samadapt3d.engines.slab`."""

    prompt_kinds = frozenset()  # prompt-free: fixed classes
    engine = "slab"
    #: consecutive slices one forward pass sees (1 for SAMed, 5 for MA-SAM)
    slab_size: int = 1
    #: bicubic detour size of the published test script (None: none)
    detour: int | None = None

    def preprocess_slice(self, slice2d):
        return slice_to_input(slice2d, self.image_size, self.detour), tuple(np.shape(slice2d))

    def decode(self, embeddings, points=None, boxes=None, mask_input=None, multimask_output=False):
        if points is not None or boxes is not None or mask_input is not None:
            raise InputError(f"{self.family} takes no prompts")
        return decode_without_prompts(self.prompt_encoder, self.mask_decoder, embeddings)

    def slab_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Model inputs [n * slab_size, 3, S, S] (slabs of consecutive slices) -> logits [n*slab, K, S, S]."""
        masks, _ = self.decode(self.embed(images))
        return F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict_slab(self, slab: np.ndarray) -> torch.Tensor:
        """Normalised slices [slab_size, H, W] -> class probabilities [slab_size, K, H, W] (softmax over
        background + classes), resized back to the slices' grid."""
        slab = np.asarray(slab, dtype=np.float32)
        if slab.ndim != 3 or slab.shape[0] != self.slab_size:
            raise InputError(f"{self.family} needs {self.slab_size} slices [n, H, W], got {slab.shape}")
        images = torch.stack([self.preprocess_slice(s)[0] for s in slab]).to(self.device)
        probs = self.slab_logits(images).softmax(dim=1)
        if tuple(probs.shape[-2:]) != tuple(slab.shape[-2:]):
            probs = F.interpolate(probs, slab.shape[-2:], mode="bilinear", align_corners=False)
        return probs
