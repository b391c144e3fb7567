"""MA-SAM (Chen et al. 2023, github.com/cchen-cc/MA-SAM): SAM with 3D adapters and FacT-tt.

Published algorithm (from the paper and the public code, re-implemented here):
- each encoder block: x += A1(x); x += Attn(norm1(x)); x += A2(x); x += MLP(norm2(x)), where a 3D
  adapter A = LayerNorm -> Linear(dim -> 384, no bias) -> Conv3d(384, 384, (3, 1, 1), padding
  'same') over the slices carried in the batch -> GELU -> Linear(384 -> dim, no bias);
- FacT-tt on q and v of every fused qkv: q += s * V(Sq_i(U(x))), v += s * V(Sv_i(U(x))) with U
  (dim -> r) and V (r -> dim) shared by all blocks and r x r factors per block (r = 32, s = 1);
- input: 5 consecutive slices at 512x512, pixel mean 0 / std 1; SAM's position grid and global
  relative-position tables resized to 32x32 (bilinear);
- decoder: SAM's with 4 transposed convolutions (x16: full resolution), num_classes + 1 mask tokens,
  softmax; no prompts (a box variant passes one box per slice to the prompt encoder);
- test: stride-1 sliding window of 5 slices (edge slices replicated), probabilities averaged.
- BTCV preprocessing: clip [-200, 250] HU, then min-max over each 5-slice stack; slices were
  stored rotated/flipped from the NIfTI voxel order (rows toward anterior, columns toward the
  patient's right: ITK orientation "RAS" for volumes stored LPS, as BTCV's are).

Checkpoint (`epoch_159.pth`): `q_FacTs_NNN`, `v_FacTs_NNN` (r x r), `image_encoder.FacTu.weight`,
`image_encoder.FacTv.weight`, `image_encoder.ImageEncoderViT.blocks.N.Block.adapter_*[_2].*`,
`prompt_encoder.*`, `mask_decoder.*`; the rest of the encoder comes from the official SAM file.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import _short_list, check_state_dict
from ..errors import CheckpointError
from ..models import FamilySpec
from ..preprocess import Preset
from ..sam.build_sam import SAM_SIZES, SamSize, build_mask_decoder, build_prompt_encoder
from ..sam.common import MLP, LayerNorm2d
from ..sam.image_encoder import Block, ImageEncoderViT, window_partition, window_unpartition
from ..sam.mask_decoder import MaskDecoder
from ._sam2d_common import (
    ENCODER, ClassSliceModel, decode_without_prompts, load_sam_base, model_input_size, require_keys,
    resize_encoder_tables, size_name_from_state, sized,
)

#: BTCV labels of the released model (13 organs with the two adrenal glands merged, as test.py).
BTCV_CLASSES = ("spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
                "inferior vena cava", "portal and splenic vein", "pancreas", "adrenal gland")

PRESET = Preset(name="ma-sam-btcv-ct", spacing=None, orientation="RAS", clip=(-200.0, 250.0),
                normalization="minmax")

ADAPTER_NAMES = ("adapter_norm", "adapter_linear_down", "adapter_conv", "adapter_linear_up")


class Adapter3D(nn.Module):
    """LayerNorm -> down -> Conv3d over slices -> GELU -> up (no residual here)."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.down = nn.Linear(dim, channels, bias=False)
        self.conv = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding="same")
        self.up = nn.Linear(channels, dim, bias=False)

    def forward(self, x: torch.Tensor, slices: int) -> torch.Tensor:
        b, h, w, _ = x.shape
        y = self.down(self.norm(x))
        y = y.reshape(b // slices, slices, h, w, -1).permute(0, 4, 1, 2, 3)
        y = self.conv(y).permute(0, 2, 3, 4, 1).reshape(b, h, w, -1)
        return self.up(F.gelu(y))


class FacTQKV(nn.Linear):
    """SAM's fused qkv (same `weight`/`bias` keys) plus FacT-tt on q and v with shared U, V."""

    def __init__(self, dim: int, rank: int, shared: "FacTShared", scale: float = 1.0, bias: bool = True) -> None:
        super().__init__(dim, 3 * dim, bias=bias)
        self.q_FacTs = nn.Linear(rank, rank, bias=False)
        self.v_FacTs = nn.Linear(rank, rank, bias=False)
        self._shared = [shared]  # a plain list: U and V are registered once, on the encoder
        self.s = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self._shared[0]
        out = F.linear(x, self.weight, self.bias)
        u = shared.FacTu(x)
        dq = shared.FacTv(self.q_FacTs(u)) * self.s
        dv = shared.FacTv(self.v_FacTs(u)) * self.s
        return out + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


class FacTShared(nn.Module):
    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.FacTu = nn.Linear(dim, rank, bias=False)
        self.FacTv = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.FacTv.weight)


class MASAMBlock(Block):
    """A SAM block with the two 3D adapters; `slices` consecutive batch items form one stack."""

    def __init__(self, dim: int, adapter_channels: int, **kwargs) -> None:
        super().__init__(dim, **kwargs)
        self.adapter_1 = Adapter3D(dim, adapter_channels)
        self.adapter_2 = Adapter3D(dim, adapter_channels)
        self.slices = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.adapter_1(x, self.slices)
        shortcut = x
        y = self.norm1(x)
        if self.window_size > 0:
            h, w = y.shape[1], y.shape[2]
            y, padded = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, padded, (h, w))
        else:
            y = self.attn(y)
        x = shortcut + y
        x = x + self.adapter_2(x, self.slices)
        return x + self.mlp(self.norm2(x))


class MASAMEncoder(ImageEncoderViT):
    def __init__(self, size: SamSize, rank: int, adapter_channels: int, scale: float = 1.0) -> None:
        super().__init__(img_size=size.img_size, patch_size=size.patch_size, embed_dim=size.embed_dim,
                         depth=size.depth, num_heads=size.num_heads, out_chans=size.prompt_embed_dim,
                         window_size=size.window_size, global_attn_indexes=size.global_attn_indexes)
        grid = size.img_size // size.patch_size
        self.fact = FacTShared(size.embed_dim, rank)
        self.blocks = nn.ModuleList(
            MASAMBlock(size.embed_dim, adapter_channels, num_heads=size.num_heads,
                       window_size=0 if i in size.global_attn_indexes else size.window_size,
                       input_size=(grid, grid))
            for i in range(size.depth)
        )
        for block in self.blocks:
            block.attn.qkv = FacTQKV(size.embed_dim, rank, self.fact, scale)

    def forward_slices(self, x: torch.Tensor, slices: int) -> torch.Tensor:
        if x.shape[0] % slices:
            raise ValueError(f"batch {x.shape[0]} is not a whole number of {slices}-slice stacks")
        for block in self.blocks:
            block.slices = slices
        return self.forward(x)


class MaskDecoderX16(MaskDecoder):
    """SAM's mask decoder with MA-SAM's 4-stage (x16) upscaling; key names as MA-SAM's."""

    def __init__(self, *, transformer_dim: int, **kwargs) -> None:
        super().__init__(transformer_dim=transformer_dim, **kwargs)
        d = transformer_dim
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2), LayerNorm2d(d // 4), nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2), LayerNorm2d(d // 8), nn.GELU(),
            nn.ConvTranspose2d(d // 8, d // 16, kernel_size=2, stride=2), LayerNorm2d(d // 16), nn.GELU(),
            nn.ConvTranspose2d(d // 16, d // 32, kernel_size=2, stride=2), nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(d, d, d // 32, 3) for _ in range(self.num_mask_tokens))


class MASAMModel(ClassSliceModel):
    family = "ma_sam"
    slab_size = 5

    def __init__(self, size: str = "vit_h", num_classes: int = 12, class_names=None, rank: int = 32,
                 adapter_channels: int = 384, scale: float = 1.0, image_size: int | None = None,
                 slab_size: int = 5, preset: Preset = PRESET) -> None:
        super().__init__(preset)
        base = SAM_SIZES[size]
        self.size_name, self.rank, self.adapter_channels = size, rank, adapter_channels
        self.slab_size = slab_size
        self.image_size = image_size or model_input_size(base)
        if class_names is None:
            class_names = BTCV_CLASSES if num_classes == len(BTCV_CLASSES) else tuple(
                f"class {i}" for i in range(1, num_classes + 1))
        self.class_names = tuple(class_names)
        s = sized(base, self.image_size)
        grid = self.image_size // s.patch_size
        self.image_encoder = MASAMEncoder(s, rank, adapter_channels, scale)
        self.prompt_encoder = build_prompt_encoder(s.prompt_embed_dim, self.image_size, grid)
        plain = build_mask_decoder(s.prompt_embed_dim, s.decoder_depth, s.decoder_heads, s.decoder_mlp_dim,
                                   num_multimask_outputs=len(self.class_names))
        self.mask_decoder = MaskDecoderX16(transformer_dim=s.prompt_embed_dim, transformer=plain.transformer,
                                           num_multimask_outputs=len(self.class_names),
                                           iou_head_hidden_dim=s.prompt_embed_dim)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[n * slab_size, 3, S, S], consecutive slab_size items being consecutive slices."""
        return self.image_encoder.forward_slices(images, self.slab_size)

    def decode(self, embeddings, points=None, boxes=None, mask_input=None, multimask_output=False):
        if boxes is None and points is None and mask_input is None:
            return decode_without_prompts(self.prompt_encoder, self.mask_decoder, embeddings)
        if points is not None or mask_input is not None:
            raise CheckpointError("MA-SAM takes no point or mask prompts (its box variant takes one box per slice)")
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder.predict_masks(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)

    def slab_logits(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        masks, _ = self.decode(self.embed(images), boxes=boxes)
        if tuple(masks.shape[-2:]) != (self.image_size, self.image_size):
            masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return masks

    @torch.no_grad()
    def predict_slab(self, slab: np.ndarray, boxes: np.ndarray | None = None) -> torch.Tensor:
        """5 normalised slices -> probabilities [5, K, H, W]. The stack is min-max rescaled as a
        whole first (MA-SAM's per-stack normalisation). `boxes` (box variant): [5, 4] x0, y0, x1, y1
        in the slices' pixel coordinates."""
        slab = np.asarray(slab, dtype=np.float32)
        lo, hi = float(slab.min()), float(slab.max())
        slab = (slab - lo) / (hi - lo + 1e-8)
        box_t = None
        if boxes is not None:
            scale = np.array([self.image_size / slab.shape[2], self.image_size / slab.shape[1]] * 2)
            box_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale,
                                    dtype=torch.float32, device=self.device)
        images = torch.stack([self.preprocess_slice(s)[0] for s in slab]).to(self.device)
        probs = self.slab_logits(images, box_t).softmax(dim=1)
        if tuple(probs.shape[-2:]) != tuple(slab.shape[-2:]):
            probs = F.interpolate(probs, slab.shape[-2:], mode="bilinear", align_corners=False)
        return probs

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": self.size_name, "rank": self.rank, "image_size": self.image_size,
                "slab_size": self.slab_size, "classes": list(self.class_names)}


# ---------------------------------------------------------------------------------------------
# Published key layout <-> ours

_PUB_ADAPTER = {"adapter_norm": "norm", "adapter_linear_down": "down", "adapter_conv": "conv",
                "adapter_linear_up": "up"}
_PUB_ENC = ENCODER + "ImageEncoderViT.blocks."


def _published_adapter_key(block: int, ours: str) -> str:
    """ours: 'adapter_1.down.weight' -> 'image_encoder.ImageEncoderViT.blocks.N.Block.adapter_linear_down.weight'."""
    which, part, param = ours.split(".")
    name = {v: k for k, v in _PUB_ADAPTER.items()}[part] + ("_2" if which == "adapter_2" else "")
    return f"{_PUB_ENC}{block}.Block.{name}.{param}"


def _our_key(key: str) -> str | None:
    """A published adapter/FacT key -> our key (None if it is not one)."""
    if key.startswith(("q_FacTs_", "v_FacTs_")):
        return f"{ENCODER}blocks.{int(key[8:])}.attn.qkv.{key[:7]}.weight"
    if key in (ENCODER + "FacTu.weight", ENCODER + "FacTv.weight"):
        return f"{ENCODER}fact.{key[len(ENCODER):]}"
    if key.startswith(_PUB_ENC) and ".Block.adapter_" in key:
        block, rest = key[len(_PUB_ENC):].split(".Block.")
        name, param = rest.split(".")
        which = "adapter_2" if name.endswith("_2") else "adapter_1"
        part = _PUB_ADAPTER.get(name[:-2] if name.endswith("_2") else name)
        return None if part is None else f"{ENCODER}blocks.{block}.{which}.{part}.{param}"
    return None


def to_published(model: MASAMModel) -> dict[str, torch.Tensor]:
    """Our weights in MA-SAM's `save_parameters` layout (tests: files built from random models)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith(("prompt_encoder.", "mask_decoder.")):
            out[key] = value
        elif ".attn.qkv.q_FacTs." in key or ".attn.qkv.v_FacTs." in key:
            block = int(key[len(ENCODER + "blocks."):].split(".")[0])
            out[f"{key.split('.')[-2]}_{block:03d}"] = value
        elif key.startswith(ENCODER + "fact."):
            out[ENCODER + key[len(ENCODER + "fact."):]] = value
        elif ".adapter_" in key:
            block = int(key[len(ENCODER + "blocks."):].split(".")[0])
            out[_published_adapter_key(block, key.split(f"blocks.{block}.")[1])] = value
    return out


def detect(obj: Mapping[str, Any]) -> bool:
    return "q_FacTs_000" in obj or ENCODER + "FacTu.weight" in obj


def load(obj: Mapping[str, Any], path=None, sam_checkpoint=None, image_size: int | None = None,
         class_names=None, scale: float = 1.0) -> MASAMModel:
    source = str(path) if path is not None else "MA-SAM checkpoint"
    pub = {k[len("module."):] if str(k).startswith("module.") else k: v for k, v in obj.items()}
    base, base_source = load_sam_base(sam_checkpoint, "MA-SAM", "sam_vit_h_4b8939.pth for the released models")
    size = size_name_from_state(base, base_source)
    s = SAM_SIZES[size]
    fact = [f"{qv}_FacTs_{i:03d}" for qv in ("q", "v") for i in range(s.depth)]
    require_keys(pub, fact + [ENCODER + "FacTu.weight", ENCODER + "FacTv.weight", "mask_decoder.mask_tokens.weight",
                              f"{_PUB_ENC}0.Block.adapter_linear_down.weight"], source, f"MA-SAM ({size})")
    rank = int(pub["q_FacTs_000"].shape[0])
    channels = int(pub[f"{_PUB_ENC}0.Block.adapter_linear_down.weight"].shape[0])
    n_classes = int(pub["mask_decoder.mask_tokens.weight"].shape[0]) - 1
    model = MASAMModel(size, n_classes, class_names, rank=rank, adapter_channels=channels, scale=scale,
                       image_size=image_size)
    state = resize_encoder_tables({k: v for k, v in base.items() if k.startswith(ENCODER)},
                                  sized(s, model.image_size), model.image_size)
    unexpected = []
    for key, value in pub.items():
        if str(key).startswith(("prompt_encoder.", "mask_decoder.")):
            state[key] = value
        elif (ours := _our_key(str(key))) is not None:
            state[ours] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(f"{source} does not match MA-SAM's layout: unexpected keys: {_short_list(unexpected)}")
    check_state_dict(model, state, source=f"{source} + {base_source}")
    model.load_state_dict(state, strict=True)
    return model.eval()


FAMILY = FamilySpec(
    name="ma_sam",
    detect=detect,
    load=load,
    builtin_names={},
    description="MA-SAM: SAM + 3D adapters + FacT-tt, 5-slice sliding window, no prompts (BTCV: 12 organs)",
)
