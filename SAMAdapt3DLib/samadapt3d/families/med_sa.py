"""Med-SA (Wu et al. 2023, "Medical SAM Adapter", github.com/SuperMedIntel/Medical-SAM-Adapter).

Re-implemented from the paper and by reading the public code (GPL-3.0; nothing copied):
- adapter = Linear(D -> D/4) -> GELU -> Linear(D/4 -> D) (`D_fc1`, `D_fc2`);
- each block: Space adapter after attention (with its own skip: a + A(a)), MLP adapter parallel
  to the MLP (x + mlp(n2(x)) + 0.5 * A(n2(x))), Depth adapter on a depth branch that runs the same
  frozen norm1 + attention across slices (`chunk` consecutive batch items folded into a dh x dw grid,
  dh * dw = chunk, relative-position tables interpolated) and is added to the spatial branch;
- published quirks reproduced for published weights: the depth rearrangement happens after the
  window partition, so in windowed blocks it groups consecutive windows and only the global-attention
  blocks mix slices; the window partition comes before norm1 (padded tokens are normalised); SAM's
  64x64 position grid is resized bicubically at run time; one output mask (the first token), sigmoid;
- two mask-decoder generations, told by the keys (`med_sa_versions`): segment-anything's (2023) and
  the EfficientSAM-style residual two-way transformer (since e987d64, `sam.efficient_transformer`),
  each with its own published pre/post-processing (bilinear slice resize; SAM pixel mean/std and
  bilinear logits in the newest code), overridable;
- prompts: the evaluation script passes (row, col) pixel indices of the slice as SAM's (x, y) without
  rescaling to the model input (`point_convention="published"`).

Checkpoint: `{"state_dict": full model state, "optimizer": ..., ...}` as the published train.py saves it,
adapter keys `image_encoder.blocks.N.{Space,MLP,Depth}_Adapter.D_fc{1,2}.*`, relative positions named
`rel_pos_h/w` (older code) or `rel_h/w` (newer). docs/FAMILIES.md (Med-SA) lists the commits.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import check_state_dict, strip_prefix
from ..errors import CheckpointError, InputError
from ..models import FamilySpec
from ..preprocess import Preset
from ..sam.build_sam import PIXEL_MEAN, PIXEL_STD, SAM_SIZES, SamSize, build_mask_decoder, build_prompt_encoder
from ..sam.efficient_transformer import build_residual_mask_decoder
from ..sam.image_encoder import Block, ImageEncoderViT, window_partition, window_unpartition
from ._sam2d_common import ENCODER, load_sam_base, size_name_from_state, sized, slice_to_input
from .base import SliceModel
from .med_sa_versions import (DEFAULT_CHUNK, LAYOUT_KEYS, PROCESSING, SAM_LAYOUT, Processing, config_of,
                              decoder_layout, parse_chunk, processing_for)

#: attention-matrix elements one piece of a block's batch may hold (2**28 float32 = 1 GiB): a 96-slice
#: ViT-B stack at 1024 would otherwise need 77 GB for its global blocks' attention at once
ATTENTION_BUDGET = 2**28

#: encoder outputs of recent stacks kept for further clicks (a 96-slice ViT-B stack at 1024: 400 MB each)
STACK_CACHE_ENTRIES = 2

#: 8-bit range the "sam255" normalisation scales [0, 1] slices to (the published 2D loaders' ToTensor * 255)
PIXEL_SCALE_255 = 255.0

PRESET = Preset(name="med-sa-minmax", spacing=None, orientation="LPS", clip=None, normalization="minmax")


class Adapter(nn.Module):
    def __init__(self, dim: int, skip: bool, ratio: float = 0.25) -> None:
        super().__init__()
        self.skip = skip
        self.D_fc1 = nn.Linear(dim, int(dim * ratio))
        self.D_fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.D_fc2(F.gelu(self.D_fc1(x)))
        return x + y if self.skip else y


def depth_grid(depth: int) -> tuple[int, int]:
    """Med-SA's factorisation of the slice count into a dh x dw grid, as its search goes: start at
    (floor(sqrt d), floor(sqrt d) + 1), grow the second factor when the product is short, shrink
    the first when it is over (so 4 -> (1, 4), 6 -> (2, 3), 9 -> (1, 9)). Depth 1 -> (1, 1)."""
    if depth < 2:
        return 1, 1
    a = int(depth ** 0.5)
    b = a + 1
    while a * b != depth:
        if a * b < depth:
            b += 1
        else:
            a -= 1
    return a, b


class MedSABlock(Block):
    def __init__(self, dim: int, scale: float = 0.5, **kwargs) -> None:
        super().__init__(dim, **kwargs)
        self.MLP_Adapter = Adapter(dim, skip=False)
        self.Space_Adapter = Adapter(dim, skip=True)
        self.Depth_Adapter = Adapter(dim, skip=False)
        self.scale = scale
        #: consecutive batch items one depth sequence holds (published `-chunk`); None: the whole batch
        self.depth_group: int | None = 1

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """attn(norm1(x)) for [n, h, w, c], in pieces of items so that one piece's attention matrices
        stay under ATTENTION_BUDGET elements (each item attends within itself: same result)."""
        tokens = x.shape[1] * x.shape[2]
        per_piece = max(1, ATTENTION_BUDGET // (self.attn.num_heads * tokens * tokens))
        if x.shape[0] <= per_piece:
            return self.attn(self.norm1(x))
        return torch.cat([self.attn(self.norm1(part)) for part in x.split(per_piece)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded = window_partition(x, self.window_size)
        n, hh, ww, c = x.shape
        # consecutive batch items grouped as published: windows in windowed blocks (after the partition)
        d = self.depth_group or n
        xd = None
        if d > 1:
            if n % d:
                raise InputError(f"Med-SA depth grid: {n} batch items do not split into groups of {d}")
            xd = x.reshape(n // d, d, hh, ww, c).permute(0, 2, 3, 1, 4).reshape(-1, d, c)
            dh, dw = depth_grid(d)
            xd = self.Depth_Adapter(self._attend(xd.reshape(-1, dh, dw, c)))
            xd = xd.reshape(n // d, hh * ww, d, c).permute(0, 2, 1, 3).reshape(n, hh, ww, c)
        x = self.Space_Adapter(self._attend(x))
        if xd is not None:
            x = x + xd
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, padded, (h, w))
        x = shortcut + x
        xn = self.norm2(x)
        return x + self.mlp(xn) + self.scale * self.MLP_Adapter(xn)


class MedSAEncoder(ImageEncoderViT):
    def __init__(self, size: SamSize, image_size: int) -> None:
        s = sized(size, image_size)
        super().__init__(img_size=image_size, patch_size=s.patch_size, embed_dim=s.embed_dim, depth=s.depth,
                         num_heads=s.num_heads, out_chans=s.prompt_embed_dim, window_size=s.window_size,
                         global_attn_indexes=s.global_attn_indexes)
        native = size.img_size // size.patch_size  # Med-SA keeps SAM's grid and resizes at run time
        self.pos_embed = nn.Parameter(torch.zeros(1, native, native, s.embed_dim))
        grid = image_size // s.patch_size
        self.blocks = nn.ModuleList(
            MedSABlock(s.embed_dim, num_heads=s.num_heads, input_size=(grid, grid),
                       window_size=0 if i in s.global_attn_indexes else s.window_size)
            for i in range(s.depth))

    def forward_slices(self, x: torch.Tensor, depth_group: int | None) -> torch.Tensor:
        """Inputs [n, 3, S, S]; every `depth_group` consecutive items (None: all) share the depth branch."""
        for block in self.blocks:
            block.depth_group = depth_group
        x = self.patch_embed(x)
        pos = F.interpolate(self.pos_embed.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic",
                            align_corners=False).permute(0, 2, 3, 1)
        x = x + pos
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class MedSAModel(SliceModel):
    family = "med_sa"
    prompt_kinds = frozenset({"positive", "negative"})  # boxes are emulated by the slab engine
    engine = "slab"  # the model chooses which slices its clicks reach

    def __init__(self, size: str = "vit_b", image_size: int | None = None, num_multimask_outputs: int = 1,
                 chunk: int | None = DEFAULT_CHUNK, eval_chunk: int | None = None, layout: str = SAM_LAYOUT,
                 processing: Processing | None = None, point_convention: str = "published",
                 preset: Preset = PRESET) -> None:
        super().__init__(preset)
        base = SAM_SIZES[size]
        self.size_name = size
        self.image_size = image_size or base.img_size
        #: the depth grid: consecutive slices (windows in windowed blocks) one depth sequence holds, the
        #: published training `-chunk`; None: the whole stack (published without -chunk)
        self.chunk = chunk
        #: slices one forward pass sees (published `-evl_chunk`); None: `chunk`, else the whole volume
        self.eval_chunk = eval_chunk
        if chunk is not None and eval_chunk is not None and eval_chunk % chunk:
            raise InputError(f"Med-SA eval_chunk={eval_chunk} must be a multiple of chunk={chunk} "
                             "(the published depth rearrangement needs it)")
        if layout not in LAYOUT_KEYS:
            raise ValueError(f"layout is one of {', '.join(LAYOUT_KEYS)}")
        self.layout = layout
        self.processing = processing or PROCESSING[layout]
        if point_convention not in ("published", "xy"):
            raise ValueError("point_convention is 'published' or 'xy'")
        self.point_convention = point_convention
        s = sized(base, self.image_size)
        grid = self.image_size // s.patch_size
        self.image_encoder = MedSAEncoder(base, self.image_size)
        self.prompt_encoder = build_prompt_encoder(s.prompt_embed_dim, self.image_size, grid)
        build_decoder = build_mask_decoder if layout == SAM_LAYOUT else build_residual_mask_decoder
        self.mask_decoder = build_decoder(s.prompt_embed_dim, s.decoder_depth, s.decoder_heads, s.decoder_mlp_dim,
                                          num_multimask_outputs=num_multimask_outputs)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
        self._stack_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()

    def preprocess_slice(self, slice2d):
        """A [0, 1] slice -> model input [3, S, S]: resized (torchvision Resize's bilinear, or the older
        bicubic), grey in 3 channels, normalised by SAM's pixel mean/std where the generation does."""
        if self.processing.resize == "bicubic":
            image = slice_to_input(slice2d, self.image_size)
        else:
            t = torch.as_tensor(np.asarray(slice2d, dtype=np.float32))
            if t.ndim != 2:
                raise InputError(f"expected a 2D slice, got shape {tuple(t.shape)}")
            t = F.interpolate(t[None, None], (self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False)
            image = t[0].expand(3, -1, -1)
        if self.processing.pixel_norm != "none":
            scale = PIXEL_SCALE_255 if self.processing.pixel_norm == "sam255" else 1.0
            image = (image.to(self.pixel_mean.device) * scale - self.pixel_mean) / self.pixel_std
        return image.contiguous(), tuple(np.shape(slice2d))

    def depth_group_for(self, slices: int) -> int | None:
        """The depth grid of a stack: `chunk` where it divides the stack, else the whole stack (a volume
        thinner than the training chunk; the published evaluation skips such a volume); None without a
        chunk: every block's whole batch, all windows of all slices in windowed blocks, as published."""
        if self.chunk is None:
            return None
        return self.chunk if slices % self.chunk == 0 else slices

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs [d, 3, S, S] of d consecutive slices (one stack)."""
        return self.image_encoder.forward_slices(images, self.depth_group_for(images.shape[0]))

    def decode(self, embeddings, points=None, boxes=None, mask_input=None, multimask_output=False):
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.mask_decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)

    def to_model_points(self, rows_cols: np.ndarray, slice_shape: tuple[int, int]) -> np.ndarray:
        """Pixel (row, col) of a slice -> prompt-encoder coordinates."""
        rc = np.asarray(rows_cols, dtype=np.float32).reshape(-1, 2)
        if self.point_convention == "published":
            return rc  # (row, col) used as (x, y), not rescaled: what the published weights saw
        return np.stack([rc[:, 1] * self.image_size / slice_shape[1], rc[:, 0] * self.image_size / slice_shape[0]], 1)

    @torch.no_grad()
    def stack_embedding(self, stack: np.ndarray) -> torch.Tensor:
        """The encoder's output for a stack [d, H, W]; the last STACK_CACHE_ENTRIES stacks are kept, so
        further clicks on the same slices only decode (prompts do not reach the encoder). Keyed by the
        stack's bytes, the processing and the depth grid; call `clear_stack_cache` after changing weights."""
        key = (hashlib.blake2b(stack.tobytes(), digest_size=16).digest(), stack.shape, self.processing,
               self.depth_group_for(stack.shape[0]), self.device)
        with self._cache_lock:
            hit = self._stack_cache.get(key)
            if hit is not None:
                self._stack_cache.move_to_end(key)
                return hit
        images = torch.stack([self.preprocess_slice(s)[0] for s in stack]).to(self.device)
        hit = self.embed(images)
        with self._cache_lock:  # a session's worker thread and a caller may both run the model
            self._stack_cache[key] = hit
            while len(self._stack_cache) > STACK_CACHE_ENTRIES:
                self._stack_cache.popitem(last=False)
        return hit

    def clear_stack_cache(self) -> None:
        with self._cache_lock:
            self._stack_cache.clear()

    @torch.no_grad()
    def predict_stack(self, stack: np.ndarray, points: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        """d normalised slices [d, H, W] with per-slice points [d, N, 2] (row, col) and labels [d, N]
        -> foreground probability [d, H, W]."""
        stack = np.ascontiguousarray(stack, dtype=np.float32)
        emb = self.stack_embedding(stack)
        coords = np.stack([self.to_model_points(p, stack.shape[1:]) for p in points])
        pts = (torch.as_tensor(coords, device=self.device), torch.as_tensor(labels, dtype=torch.int, device=self.device))
        logits, _ = self.decode(emb, points=pts)
        if self.processing.upsample == "nearest":
            logits = F.interpolate(logits[:, :1], stack.shape[1:], mode="nearest")
        else:
            logits = F.interpolate(logits[:, :1], stack.shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits[:, 0])

    def stack_size(self, depth: int) -> int:
        """Slices per forward pass: `eval_chunk`, else `chunk`, else the whole volume; at most the volume
        (the published settings decide, not the clicks' span)."""
        return min(self.eval_chunk or self.chunk or depth, depth)

    @torch.no_grad()
    def predict_volume_prompted(self, image: np.ndarray, positive: np.ndarray, negative: np.ndarray,
                                box=None, tick: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Clicks (d, h, w) -> probability [D, H, W]. Slices are run in stacks of `stack_size` centred on
        the clicks (more stacks where the clicks span more); every slice of a stack gets every click's
        in-plane position, labelled positive/negative, as its point prompts (the published evaluation
        gives each slice one point). Slices outside the stacks stay 0."""
        if box is not None:
            raise InputError("Med-SA takes point prompts, not boxes")
        clicks = np.concatenate([positive, negative]).reshape(-1, 3)
        labels = np.array([1] * len(positive) + [0] * len(negative), dtype=np.int64)
        depth = image.shape[0]
        d_lo, d_hi = int(np.floor(clicks[:, 0].min() + 0.5)), int(np.floor(clicks[:, 0].max() + 0.5))
        chunk = self.stack_size(depth)
        centre = (d_lo + d_hi) // 2
        first = int(np.clip(centre - chunk // 2, 0, depth - chunk))
        starts = list(range(first, d_hi + 1, chunk)) if d_hi >= first + chunk else [first]
        starts = [min(s, depth - chunk) for s in starts]
        out = np.zeros(image.shape, dtype=np.float32)
        for n, start in enumerate(starts):
            if tick:
                tick(n, len(starts))
            rows_cols = np.tile(clicks[None, :, 1:], (chunk, 1, 1))
            lab = np.tile(labels[None], (chunk, 1))
            out[start:start + chunk] = self.predict_stack(image[start:start + chunk], rows_cols, lab).cpu().numpy()
        if tick:
            tick(len(starts), len(starts))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": self.size_name, "image_size": self.image_size, "chunk": self.chunk,
                "eval_chunk": self.eval_chunk, "decoder_layout": self.layout,
                "processing": dict(vars(self.processing))}


# ---------------------------------------------------------------------------------------------

def _normalise_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in strip_prefix(state, "").items():
        key = key.replace(".attn.rel_h", ".attn.rel_pos_h").replace(".attn.rel_w", ".attn.rel_pos_w")
        out[key] = value
    return out


def _state_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = obj.get("state_dict", obj)
    return inner if isinstance(inner, Mapping) else obj


def detect(obj: Mapping[str, Any]) -> bool:
    state = _state_of(obj)
    return any(".Space_Adapter.D_fc1." in str(k) for k in state)


_FROM_CONFIG = object()  # load(): take the setting from the checkpoint's config, else the published default


def load(obj: Mapping[str, Any], path=None, sam_checkpoint=None, chunk: Any = _FROM_CONFIG,
         eval_chunk: Any = _FROM_CONFIG, resize: str | None = None, pixel_norm: str | None = None,
         upsample: str | None = None, point_convention: str = "published") -> MedSAModel:
    """A Med-SA model from a checkpoint of either decoder generation (told by its keys). `chunk` /
    `eval_chunk` (ints, or None / "none") and `resize` / `pixel_norm` / `upsample` override what the
    checkpoint's config and its generation give (docs/FAMILIES.md, Med-SA)."""
    source = str(path) if path is not None else "Med-SA checkpoint"
    config = config_of(obj)
    if chunk is _FROM_CONFIG:
        chunk = config.get("chunk", DEFAULT_CHUNK)
    if eval_chunk is _FROM_CONFIG:
        eval_chunk = config.get("evl_chunk", config.get("eval_chunk"))
    chunk, eval_chunk = parse_chunk(chunk, "chunk"), parse_chunk(eval_chunk, "eval_chunk")
    state = _normalise_keys(_state_of(obj))
    if sam_checkpoint is not None:  # fill frozen SAM weights a trimmed file may lack
        base, _ = load_sam_base(sam_checkpoint, "Med-SA")
        for key, value in _normalise_keys(base).items():
            if key.startswith(ENCODER) and key not in state and key != ENCODER + "pos_embed":
                state[key] = value
            elif key == ENCODER + "pos_embed":
                state.setdefault(key, value)
    size = size_name_from_state(state, source)
    s = SAM_SIZES[size]
    key = f"{ENCODER}blocks.{s.global_attn_indexes[0]}.attn.rel_pos_h"
    if key not in state:
        raise CheckpointError(f"{source} is not a complete Med-SA file: missing keys: {key} (Med-SA's code of "
                              "2024-01-07..2024-01-28 trained without relative positions: not supported)")
    image_size = (int(state[key].shape[0]) + 1) // 2 * s.patch_size
    tokens = state.get("mask_decoder.mask_tokens.weight")
    if tokens is None:
        raise CheckpointError(f"{source} is not a complete Med-SA file: missing keys: mask_decoder.mask_tokens.weight")
    layout = decoder_layout(state, source)
    processing = processing_for(layout, resize=resize, pixel_norm=pixel_norm, upsample=upsample)
    model = MedSAModel(size, image_size, int(tokens.shape[0]) - 1, chunk=chunk, eval_chunk=eval_chunk, layout=layout,
                       processing=processing, point_convention=point_convention)
    state = {k: v for k, v in state.items() if k.startswith((ENCODER, "prompt_encoder.", "mask_decoder."))}
    check_state_dict(model, state, source=source)
    model.load_state_dict(state, strict=True)
    return model.eval()


#: load() keywords a caller may set (load_model's `options`, the CLI's --model-option key=value)
OPTIONS = ("chunk", "eval_chunk", "resize", "pixel_norm", "upsample", "point_convention")

FAMILY = FamilySpec(
    name="med_sa",
    detect=detect,
    load=load,
    builtin_names={},
    description="Med-SA (Medical SAM Adapter): SAM + space/depth/MLP adapters, point prompts, sigmoid",
    options=OPTIONS,
)
