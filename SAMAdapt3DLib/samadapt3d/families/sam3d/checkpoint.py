"""Weight files of 3DSAM-adapter: SAM ViT-B base, released `.pth.tar`, and our `.safetensors`.

- SAM `.pth` (segment-anything keys): initialises the frozen SAM parts of the encoder; the rest
  starts as in the published training (rel_pos_d = mean of rel_pos_h and rel_pos_w). What was
  not used and what is missing is reported (LoadReport, warnings), never dropped silently.
- released `.pth.tar`: {"encoder_dict", "decoder_dict", "feature_dict": [4 prompt encoders], ...
  optimiser states (ignored)}; loads strictly, architecture inferred from tensor shapes.
- our `.safetensors`: model state-dict keys, storing only tensors that differ from the SAM base
  (or all of them), with JSON metadata: format, config, preset, sam_sha256, sam_keys.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from ...checkpoints import check_state_dict, load_weights, save_safetensors, sha256_of
from ...errors import CheckpointError
from ...preprocess import Preset
from .config import Sam3DAdapterConfig, infer_config
from .model import LoadReport, SAM3DAdapter
from .presets import preset_for_path

log = logging.getLogger(__name__)

FORMAT = "samadapt3d.3dsam_adapter"
FORMAT_VERSION = 1
RELEASED_KEYS = ("encoder_dict", "decoder_dict", "feature_dict")
#: encoder parameters that come from SAM's image encoder (the same names on both sides)
_SAM_BLOCK_PARTS = ("norm1.", "attn.qkv.", "attn.proj.", "attn.rel_pos_h", "attn.rel_pos_w", "norm2.", "mlp.")


def is_sam_encoder_key(key: str) -> bool:
    """True for an encoder key (without prefix) that is initialised from SAM."""
    if key.startswith("patch_embed.proj.") or key == "pos_embed":
        return True
    if key.startswith("blocks."):
        rest = key.split(".", 2)[2]
        return rest.startswith(_SAM_BLOCK_PARTS)
    return False


def sam_model_keys(model: SAM3DAdapter) -> list[str]:
    """Model state-dict keys that a SAM base file provides."""
    return [f"image_encoder.{k}" for k in model.image_encoder.state_dict() if is_sam_encoder_key(k)]


def sam_encoder_state(sam_state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """SAM's image-encoder tensors (prefix removed) and the keys of everything else in the file."""
    has_prefix = any(k.startswith("image_encoder.") for k in sam_state)
    encoder, other = {}, []
    for key, value in sam_state.items():
        name = key[len("image_encoder."):] if key.startswith("image_encoder.") else (None if has_prefix else key)
        if name is not None and is_sam_encoder_key(name) and isinstance(value, torch.Tensor):
            encoder[name] = value
        else:
            other.append(key)
    return encoder, other


def load_sam_into(model: SAM3DAdapter, sam_state: Mapping[str, Any], source: str) -> LoadReport:
    """Copy SAM's frozen encoder weights into `model`; returns (and warns with) what was unused/missing."""
    encoder_state, unused = sam_encoder_state(sam_state)
    target = model.image_encoder.state_dict()
    mis_shaped = [
        f"image_encoder.{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in encoder_state.items() if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if mis_shaped:
        raise CheckpointError(f"{source} does not match the 3DSAM-adapter encoder: mis-shaped keys: {', '.join(mis_shaped)}")
    unused += [f"image_encoder.{k}" for k in encoder_state if k not in target]
    usable = {k: v for k, v in encoder_state.items() if k in target}
    model.image_encoder.load_state_dict(usable, strict=False)
    with torch.no_grad():  # published initialisation of the trainable depth table
        for block in model.image_encoder.blocks:
            block.attn.rel_pos_d.copy_(0.5 * (block.attn.rel_pos_h + block.attn.rel_pos_w))
    expected = [k for k in target if is_sam_encoder_key(k)]
    report = LoadReport(
        source=source,
        loaded=[f"image_encoder.{k}" for k in usable],
        unused=sorted(unused),
        missing=[f"image_encoder.{k}" for k in expected if k not in usable],
    )
    report.notes.append(
        "adapters, slice/depth embeddings, rel_pos_d (= mean of rel_pos_h/w), necks, prompt encoders and "
        "decoder start untrained"
    )
    if report.missing:
        warnings.warn(f"SAM base file lacks encoder weights: {report.summary()}", stacklevel=3)
    log.info("%s", report.summary())
    return report


# ---- released .pth.tar --------------------------------------------------------------------------
def is_released_checkpoint(obj: Mapping[str, Any]) -> bool:
    return all(k in obj for k in RELEASED_KEYS)


def _check_attention_masks(model: SAM3DAdapter, encoder: dict[str, Any], source: str) -> None:
    """The published encoder stores its shift masks; we rebuild them, so check and drop the stored ones."""
    for index, block in enumerate(model.image_encoder.blocks):
        key = f"blocks.{index}.attn_mask"
        stored = encoder.pop(key, None)
        if block.attn_mask is None:
            if stored is not None:
                raise CheckpointError(f"{source} does not match the model: unexpected keys: {key}")
            continue
        if stored is None:
            raise CheckpointError(f"{source} does not match the model: missing keys: {key}")
        if tuple(stored.shape) != tuple(block.attn_mask.shape):
            raise CheckpointError(f"{source} does not match the model: mis-shaped keys: {key}: file "
                                  f"{tuple(stored.shape)} vs model {tuple(block.attn_mask.shape)}")
        if not torch.equal(stored.to(block.attn_mask), block.attn_mask):
            raise CheckpointError(f"{source}: {key} is not the shifted-window mask this architecture implies")


def load_released(obj: Mapping[str, Any], path: str | os.PathLike | None = None, config: Sam3DAdapterConfig | None = None) -> SAM3DAdapter:
    """A released `.pth.tar` dict -> model, strictly (optimiser states and counters are ignored)."""
    source = str(path) if path is not None else "3DSAM-adapter checkpoint"
    encoder = dict(obj["encoder_dict"])
    prompts = list(obj["feature_dict"])
    decoder = dict(obj["decoder_dict"])
    if not prompts:
        raise CheckpointError(f"{source}: feature_dict is empty (expected the prompt encoders)")
    config = config or infer_config(encoder, decoder, prompts[0], num_prompt_encoders=len(prompts), source=source)
    model = SAM3DAdapter(config, preset_for_path(path))
    _check_attention_masks(model, encoder, source)
    parts = [("encoder_dict", model.image_encoder, encoder), ("decoder_dict", model.mask_decoder, decoder)]
    parts += [(f"feature_dict[{i}]", model.prompt_encoders[i], dict(p)) for i, p in enumerate(prompts)]
    for name, module, state in parts:
        check_state_dict(module, state, source=f"{source} ({name})")
        module.load_state_dict(state, strict=True)
    model.load_report = LoadReport(source=source, loaded=list(model.state_dict()),
                                   notes=["ignored: " + ", ".join(sorted(k for k in obj if k not in RELEASED_KEYS))])
    return model


def released_state(model: SAM3DAdapter) -> dict[str, Any]:
    """The model as a published-layout checkpoint dict (with the stored shift masks)."""
    encoder = model.image_encoder.state_dict()
    for index, block in enumerate(model.image_encoder.blocks):
        if block.attn_mask is not None:
            encoder[f"blocks.{index}.attn_mask"] = block.attn_mask.clone()
    return {"encoder_dict": encoder, "decoder_dict": model.mask_decoder.state_dict(),
            "feature_dict": [p.state_dict() for p in model.prompt_encoders]}


# ---- our safetensors ------------------------------------------------------------------------------
def export_safetensors(model: SAM3DAdapter, path: str | os.PathLike, sam_checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write `model` to `path`. With `sam_checkpoint`, tensors equal to that SAM file are left out and
    its sha256 recorded; the file then needs the same SAM file to load. Returns the metadata."""
    state = {k: v for k, v in model.state_dict().items()}
    metadata: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                                "config": model.config.to_dict(), "preset": model.preset.to_dict()}
    if sam_checkpoint is not None:
        sam_encoder, _ = sam_encoder_state(load_weights(sam_checkpoint))
        from_sam = []
        for key in sam_model_keys(model):
            base = sam_encoder.get(key[len("image_encoder."):])
            if base is not None and base.shape == state[key].shape and torch.equal(base, state[key].cpu()):
                from_sam.append(key)
                del state[key]
        metadata["sam_sha256"] = sha256_of(sam_checkpoint)
        metadata["sam_keys"] = from_sam
    save_safetensors(state, path, metadata)
    return metadata


def is_our_safetensors(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("__safetensors_metadata__")
    return isinstance(meta, Mapping) and meta.get("format") == FORMAT


def load_safetensors_model(obj: Mapping[str, Any], path: str | os.PathLike, sam_checkpoint: str | os.PathLike | None = None) -> SAM3DAdapter:
    meta = obj["__safetensors_metadata__"]
    source = str(path)
    try:
        version = int(meta.get("format_version", "0"))
        config = Sam3DAdapterConfig.from_dict(json.loads(meta["config"]))
        preset = Preset.from_dict(json.loads(meta["preset"]))
        sam_keys = json.loads(meta.get("sam_keys", "[]"))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: unreadable 3DSAM-adapter metadata ({exc})") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: format version {version} is newer than this samadapt3d ({FORMAT_VERSION})")
    model = SAM3DAdapter(config, preset)
    report = LoadReport(source=source)
    expected_sha = meta.get("sam_sha256")
    if expected_sha:
        if sam_checkpoint is None:
            raise CheckpointError(f"{source} stores only the weights that differ from SAM ViT-B; pass the SAM "
                                  f"base file (sam_checkpoint=..., sha256 {expected_sha[:12]}...)")
        actual = sha256_of(sam_checkpoint)
        if actual != expected_sha:
            raise CheckpointError(f"{sam_checkpoint} is not the SAM base file {source} was made from "
                                  f"(sha256 {actual[:12]}... != {expected_sha[:12]}...)")
        sam_report = load_sam_into(model, load_weights(sam_checkpoint), str(sam_checkpoint))
        model.sam_sha256 = expected_sha
        missing_from_sam = set(sam_keys) - set(sam_report.loaded)
        if missing_from_sam:
            raise CheckpointError(f"{sam_checkpoint} lacks keys {source} needs: {sorted(missing_from_sam)[:8]}")
        report.notes.append(f"{len(sam_keys)} tensors from SAM base {sam_checkpoint}")
    state = load_weights(path)
    check_state_dict(model, state, source=source, allow_missing=sam_keys)
    model.load_state_dict(state, strict=False)
    report.loaded = sorted(state)
    model.load_report = report
    return model


def load_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike | None = None,
                    sam_checkpoint: str | os.PathLike | None = None) -> SAM3DAdapter:
    """Any 3DSAM-adapter weight object (as `samadapt3d.models` passes it) -> model."""
    if is_our_safetensors(obj):
        return load_safetensors_model(obj, path or obj.get("__path__", ""), sam_checkpoint)
    if is_released_checkpoint(obj):
        if sam_checkpoint is not None:
            log.info("%s is complete; the SAM file %s is not needed and was not read", path, sam_checkpoint)
        return load_released(obj, path)
    raise CheckpointError(f"{path}: not a 3DSAM-adapter checkpoint (expected {', '.join(RELEASED_KEYS)})")


def from_sam_checkpoint(path: str | os.PathLike, config: Sam3DAdapterConfig | None = None,
                        preset: Preset | None = None) -> SAM3DAdapter:
    """An untrained 3DSAM-adapter initialised from a SAM `.pth` (for fine-tuning), as the published training."""
    state = load_weights(path)
    if config is None:
        encoder, _ = sam_encoder_state(state)
        config = config_from_sam(encoder, source=str(path))
    model = SAM3DAdapter(config, preset)
    model.load_report = load_sam_into(model, state, str(path))
    model.sam_sha256 = sha256_of(path)
    return model


def config_from_sam(encoder: Mapping[str, torch.Tensor], source: str = "SAM checkpoint") -> Sam3DAdapterConfig:
    """The 3DSAM-adapter sizes for a SAM image encoder: its ViT sizes, cubic token grid of half its grid."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in encoder:
            raise CheckpointError(f"{source}: not a SAM image encoder, missing key image_encoder.{key}")
        return tuple(encoder[key].shape)

    embed_dim, _, patch, _ = shape("patch_embed.proj.weight")
    sam_grid = shape("pos_embed")[1]
    depth = len({k.split(".")[1] for k in encoder if k.startswith("blocks.")})
    head_dim = shape("blocks.0.attn.rel_pos_h")[1]
    lengths = [shape(f"blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
    global_attn = tuple(i for i, n in enumerate(lengths) if n == 2 * sam_grid - 1)
    windowed = [n for n in lengths if n != 2 * sam_grid - 1]
    side = sam_grid // 2
    window = 8 if side % 8 == 0 and side >= 16 else max(side // 2, 1)
    config = Sam3DAdapterConfig(
        embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim,
        mlp_ratio=shape("blocks.0.mlp.lin1.weight")[0] / embed_dim, patch_size=patch, sam_grid=sam_grid,
        sam_window=(windowed[0] + 1) // 2 if windowed else 14, global_attn_indexes=global_attn,
        window_size=window, depth_tokens=side,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise CheckpointError(f"{source}: no 3DSAM-adapter fits this SAM encoder: {exc}") from exc
    return config


def save_released(model: SAM3DAdapter, path: str | os.PathLike) -> None:
    """Write the model in the published `.pth.tar` layout (loadable by the published code)."""
    torch.save(released_state(model), Path(path))
