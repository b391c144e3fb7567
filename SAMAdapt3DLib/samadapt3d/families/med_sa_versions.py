"""Med-SA's published code generations: which mask decoder a checkpoint's keys name, and the pre- and
post-processing that generation's code applies (github SuperMedIntel/Medical-SAM-Adapter, read for facts).

- "segment-anything" (init commit b5cd427, 2023-05-10): segment-anything's two-way transformer
  (`mask_decoder.transformer.layers.N.mlp.lin1`); no pixel normalisation; the decoder's low-resolution
  logits are the output (image_size / 4 = out_size, no upsampling: we resize them bilinearly).
- "residual" (e987d64, 2024-01-03, "adding EfficientSAM adapter", and every commit since): the
  EfficientSAM-style transformer (`...mlp.layers.0.0`, `...mlp.fc`; `sam.efficient_transformer`).
  Its processing changed later without a key change, so the default is the newest code:
  ddecab9 (2025-04-15) normalises by SAM's pixel mean/std and upsamples the logits bilinearly;
  from a752385 (2024-01-07) to then, no normalisation and nearest upsampling (set
  `pixel_norm="none", upsample="nearest"` for such a checkpoint).
- every generation resizes a slice with torchvision `Resize` on a tensor: bilinear, align_corners=False,
  and (torchvision 0.13.1 of its environment.yml) no antialiasing.
- depth grid: the training `-chunk` (README's 3D command: 96; cfg.py's default 96 until f1ded19,
  2024-03-24, None after: the whole batch) consecutive batch items form one depth sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from ..errors import CheckpointError, InputError

SAM_LAYOUT = "segment-anything"
RESIDUAL_LAYOUT = "residual"
#: the first decoder layer's token-MLP key that each generation writes
LAYOUT_KEYS = {
    SAM_LAYOUT: "mask_decoder.transformer.layers.0.mlp.lin1.weight",
    RESIDUAL_LAYOUT: "mask_decoder.transformer.layers.0.mlp.layers.0.0.weight",
}
TOKEN_MLP_PREFIX = "mask_decoder.transformer.layers.0.mlp."

RESIZE_MODES = ("bilinear", "bicubic")  # bicubic align_corners=True: this package's Med-SA before issue 14
#: "sam": (x - SAM pixel mean) / SAM pixel std on the [0, 1] slice (the published 3D path: its decathlon loader
#: scales to [0, 1] and nothing multiplies by 255); "sam255": the same on x * 255 (its 2D loaders' ToTensor * 255)
PIXEL_NORMS = ("none", "sam", "sam255")
UPSAMPLE_MODES = ("bilinear", "nearest")

#: training chunk of the README's 3D (BTCV) command and of cfg.py until f1ded19
DEFAULT_CHUNK = 96


@dataclass(frozen=True)
class Processing:
    """How a slice becomes the model input and the logits become the slice's probabilities."""

    resize: str = "bilinear"
    pixel_norm: str = "none"
    upsample: str = "bilinear"

    def __post_init__(self) -> None:
        for name, value, allowed in (("resize", self.resize, RESIZE_MODES), ("pixel_norm", self.pixel_norm, PIXEL_NORMS),
                                     ("upsample", self.upsample, UPSAMPLE_MODES)):
            if value not in allowed:
                raise InputError(f"Med-SA option {name}={value!r}: expected one of {', '.join(allowed)}")


#: each generation's processing as its published code does it (newest code of the generation)
PROCESSING = {
    SAM_LAYOUT: Processing(resize="bilinear", pixel_norm="none", upsample="bilinear"),
    RESIDUAL_LAYOUT: Processing(resize="bilinear", pixel_norm="sam", upsample="bilinear"),
}


def decoder_layout(state: Mapping[str, Any], source: str) -> str:
    """The generation whose decoder keys the state holds; refuses another layout, naming its keys."""
    found = [name for name, key in LAYOUT_KEYS.items() if key in state]
    if len(found) == 1:
        return found[0]
    seen = sorted(k for k in state if str(k).startswith(TOKEN_MLP_PREFIX))
    if not seen:
        raise CheckpointError(f"{source} is not a complete Med-SA file: missing keys: {LAYOUT_KEYS[SAM_LAYOUT]} "
                              f"(or {LAYOUT_KEYS[RESIDUAL_LAYOUT]})")
    known = " or ".join(LAYOUT_KEYS.values())
    raise CheckpointError(f"{source}: unknown Med-SA mask decoder layout (keys {', '.join(seen[:6])}; "
                          f"known: {known})")


def processing_for(layout: str, resize: str | None = None, pixel_norm: str | None = None,
                   upsample: str | None = None) -> Processing:
    """The generation's processing with the given fields overridden."""
    overrides = {k: v for k, v in (("resize", resize), ("pixel_norm", pixel_norm), ("upsample", upsample))
                 if v is not None}
    return replace(PROCESSING[layout], **overrides)


def parse_chunk(value: Any, name: str = "chunk") -> int | None:
    """A depth-grid / stack setting: a positive int, or None / "none" (the whole batch, as published
    without -chunk). Strings come from the CLI's --model-option."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise InputError(f"Med-SA option {name}={value!r}: expected a positive whole number or none")
    number = int(text)
    return number


def config_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The training settings a checkpoint carries, if any (`config` or `args` as a mapping); the
    published train.py stores none, so this is empty for its files."""
    for name in ("config", "args"):
        value = obj.get(name)
        if isinstance(value, Mapping):
            return value
    return {}
