"""SAMed (Zhang & Liu 2023, github.com/hitachinsk/SAMed): SAM with LoRA on the encoder's q and v.

Published algorithm (from the paper and the public code, re-implemented here):
- every encoder block's fused qkv projection gets rank-r LoRA on q and v (no scaling):
  q += B_q A_q x, v += B_v A_v x; the SAM encoder itself stays frozen;
- input 512x512 (SAM's 64x64 position grid and the global blocks' relative-position tables are
  resized to 32x32, bilinear), pixel mean 0 / std 1 (the slice in [0, 1] repeated in 3 channels);
- no prompts; the mask decoder has num_classes + 1 mask tokens (background first) and all of
  them are used: softmax over the upsampled logits;
- Synapse preprocessing: clip [-125, 275] HU -> [0, 1]; each axial slice is resized to 224 then to
  512 (bicubic) by the test script; every slice is segmented independently.

Checkpoint (`epoch_159.pth`): `w_a_NNN` [r, dim] / `w_b_NNN` [dim, r] with block i's q at 2i and
v at 2i+1, plus the fine-tuned `prompt_encoder.*` and `mask_decoder.*`; the image encoder comes
from the official SAM file (`sam_checkpoint`).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import _short_list, check_state_dict
from ..errors import CheckpointError
from ..models import FamilySpec
from ..preprocess import Preset
from ..sam.build_sam import SAM_SIZES, build_image_encoder, build_mask_decoder, build_prompt_encoder
from ._sam2d_common import (
    ENCODER, ClassSliceModel, load_sam_base, model_input_size, require_keys, resize_encoder_tables,
    size_name_from_state, sized,
)

#: Class order of SAMed's Synapse labels (its preprocess README and test script: 1 = spleen, ...).
SYNAPSE_CLASSES = ("spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas")

PRESET = Preset(name="samed-synapse-ct", spacing=None, orientation="LPS", clip=(-125.0, 275.0),
                normalization="minmax")


class LoRAQKV(nn.Linear):
    """SAM's fused qkv Linear (same `weight`/`bias` keys) plus LoRA on its q and v thirds."""

    def __init__(self, dim: int, rank: int, bias: bool = True) -> None:
        super().__init__(dim, 3 * dim, bias=bias)
        self.lora_a_q = nn.Linear(dim, rank, bias=False)
        self.lora_b_q = nn.Linear(rank, dim, bias=False)
        self.lora_a_v = nn.Linear(dim, rank, bias=False)
        self.lora_b_v = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.lora_b_q.weight)
        nn.init.zeros_(self.lora_b_v.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        dq = self.lora_b_q(self.lora_a_q(x))
        dv = self.lora_b_v(self.lora_a_v(x))
        return out + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


class SAMedModel(ClassSliceModel):
    family = "samed"
    slab_size = 1

    def __init__(self, size: str = "vit_b", rank: int = 4, class_names=SYNAPSE_CLASSES,
                 image_size: int | None = None, detour: int | None = None, preset: Preset = PRESET) -> None:
        super().__init__(preset)
        base = SAM_SIZES[size]
        self.size_name = size
        self.rank = rank
        self.image_size = image_size or model_input_size(base)
        self.detour = detour
        self.class_names = tuple(class_names)
        s = sized(base, self.image_size)
        grid = self.image_size // s.patch_size
        self.image_encoder = build_image_encoder(s)
        for block in self.image_encoder.blocks:
            qkv = LoRAQKV(s.embed_dim, rank, bias=block.attn.qkv.bias is not None)
            block.attn.qkv = qkv
        self.prompt_encoder = build_prompt_encoder(s.prompt_embed_dim, self.image_size, grid)
        self.mask_decoder = build_mask_decoder(s.prompt_embed_dim, s.decoder_depth, s.decoder_heads,
                                               s.decoder_mlp_dim, num_multimask_outputs=len(self.class_names))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)  # pixel mean 0, std 1: no further normalisation

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": self.size_name, "rank": self.rank, "image_size": self.image_size,
                "classes": list(self.class_names)}


# ---------------------------------------------------------------------------------------------
# Published key layout <-> ours

def lora_index(block: int, which: str) -> int:
    return 2 * block + (0 if which == "q" else 1)


def to_published(model: SAMedModel) -> dict[str, torch.Tensor]:
    """Our model's weights in SAMed's `save_lora_parameters` layout (LoRA + prompt encoder + decoder)."""
    state = model.state_dict()
    out = {}
    for i in range(len(model.image_encoder.blocks)):
        for which in ("q", "v"):
            n = lora_index(i, which)
            out[f"w_a_{n:03d}"] = state[f"{ENCODER}blocks.{i}.attn.qkv.lora_a_{which}.weight"]
            out[f"w_b_{n:03d}"] = state[f"{ENCODER}blocks.{i}.attn.qkv.lora_b_{which}.weight"]
    out.update({k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))})
    return out


def sam_base_of(model: SAMedModel) -> dict[str, torch.Tensor]:
    """A SAM-format base file for this model's frozen encoder (tests: `sam_checkpoint` stand-in).
    The encoder tables stay at the model's grid; loading resizes only when they differ."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER) and ".lora_" not in k}


def detect(obj: Mapping[str, Any]) -> bool:
    return "w_a_000" in obj and "w_b_000" in obj and any(str(k).startswith("mask_decoder.") for k in obj)


def load(obj: Mapping[str, Any], path=None, sam_checkpoint=None, image_size: int | None = None,
         class_names=None) -> SAMedModel:
    source = str(path) if path is not None else "SAMed checkpoint"
    lora = {k[len("module."):] if str(k).startswith("module.") else k: v for k, v in obj.items()}
    base, base_source = load_sam_base(sam_checkpoint, "SAMed", "sam_vit_b_01ec64.pth for SAMed, sam_vit_h_4b8939.pth for SAMed_h")
    size = size_name_from_state(base, base_source)
    s = SAM_SIZES[size]
    depth = s.depth
    lora_keys = [f"w_{ab}_{n:03d}" for ab in "ab" for n in range(2 * depth)]
    require_keys(lora, lora_keys + ["mask_decoder.mask_tokens.weight"], source, f"SAMed ({size}, {depth} blocks)")
    rank = int(lora["w_a_000"].shape[0])
    if lora["w_a_000"].shape[1] != s.embed_dim:
        raise CheckpointError(f"{source}: LoRA width {lora['w_a_000'].shape[1]} does not match the SAM base "
                              f"{base_source} ({size}, width {s.embed_dim}): mis-shaped keys w_a_000")
    n_classes = int(lora["mask_decoder.mask_tokens.weight"].shape[0]) - 1
    if class_names is None:
        class_names = SYNAPSE_CLASSES if n_classes == len(SYNAPSE_CLASSES) else tuple(
            f"class {i}" for i in range(1, n_classes + 1))
    model = SAMedModel(size, rank, class_names, image_size=image_size)
    # Both published test scripts (SAMed, SAMed_h) resize each 512 slice to 224 and back to 512.
    model.detour = 224 if model.image_size == 512 else None
    extra = [k for k in lora if k not in lora_keys and not str(k).startswith(("prompt_encoder.", "mask_decoder."))]
    if extra:
        raise CheckpointError(f"{source} does not match SAMed's layout: unexpected keys: {_short_list(extra)}")
    encoder = {k: v for k, v in base.items() if k.startswith(ENCODER)}
    state = resize_encoder_tables(encoder, sized(s, model.image_size), model.image_size)
    for i in range(depth):
        for which in ("q", "v"):
            n = lora_index(i, which)
            state[f"{ENCODER}blocks.{i}.attn.qkv.lora_a_{which}.weight"] = lora[f"w_a_{n:03d}"]
            state[f"{ENCODER}blocks.{i}.attn.qkv.lora_b_{which}.weight"] = lora[f"w_b_{n:03d}"]
    state.update({k: v for k, v in lora.items() if str(k).startswith(("prompt_encoder.", "mask_decoder."))})
    check_state_dict(model, state, source=f"{source} + {base_source}")
    model.load_state_dict(state, strict=True)
    return model.eval()


FAMILY = FamilySpec(
    name="samed",
    detect=detect,
    load=load,
    builtin_names={},
    description="SAMed: SAM + LoRA (q, v), no prompts, 8 Synapse abdominal organs per axial slice",
)
