"""`samadapt3d bench --reference-dir DIR`: the published 3DSAM-adapter code against ours, in one run.

DIR is a checkout of github med-air/3DSAM-adapter (the folder holding `modeling/`, i.e. `3DSAM-adapter/` of
that repository), imported at run time and never copied. Both networks get the same random weights (ours,
exported in the published layout and loaded strictly into theirs), the same crop and the same clicks;
runs alternate (theirs, ours, theirs, ...) so that machine load affects both alike. The published chain is
called as its test script does: 3-channel crop upsampled ×4, encoder on the slices, prompt encoder on the
last feature with clicks (d, w, h), decoder, softmax.
"""
from __future__ import annotations

import argparse
import importlib
import resource
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .bench_table import print_rows
from .errors import InputError
from .families.sam3d import SAM3DAdapter, Sam3DAdapterConfig, released_state
from .families.sam3d.model import ACTIVE_PROMPT_ENCODER

#: published module -> class names our bench constructs (3DSAM-adapter/test.py)
REFERENCE_MODULES = {"modeling.image_encoder": ("ImageEncoderViT_3d_v2",),
                     "modeling.mask_decoder": ("VIT_MLAHead_h",),
                     "modeling.prompt_encoder": ("PromptEncoder", "TwoWayTransformer")}
#: the published encoder takes a neck feature after every 3 of exactly 12 blocks
REFERENCE_DEPTH = 12


def import_reference(directory: Path) -> dict[str, Any]:
    """The published classes, imported from `directory` (added to sys.path for the import only)."""
    if not (directory / "modeling").is_dir():
        raise InputError(f"--reference-dir {directory}: no modeling/ folder (point it at the 3DSAM-adapter/ folder "
                         "of a med-air/3DSAM-adapter checkout)")
    sys.path.insert(0, str(directory))
    try:
        classes = {}
        for module_name, names in REFERENCE_MODULES.items():
            sys.modules.pop(module_name, None)
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise InputError(f"--reference-dir {directory}: cannot import {module_name}: {exc}") from exc
            for name in names:
                if not hasattr(module, name):
                    raise InputError(f"--reference-dir {directory}: {module_name} has no {name}")
                classes[name] = getattr(module, name)
        return classes
    finally:
        sys.path.remove(str(directory))


def build_reference(classes: dict[str, Any], model: SAM3DAdapter) -> tuple[Any, Any, Any]:
    """The published encoder, active prompt encoder and decoder, sized as `model` and loaded with its weights."""
    cfg = model.config
    encoder = classes["ImageEncoderViT_3d_v2"](
        depth=cfg.depth, embed_dim=cfg.embed_dim, img_size=cfg.sam_grid * cfg.patch_size, mlp_ratio=cfg.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg.num_heads, patch_size=cfg.patch_size,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(cfg.global_attn_indexes),
        window_size=cfg.sam_window, cubic_window_size=cfg.window_size, out_chans=cfg.neck_dim,
        num_slice=cfg.num_slice, patch_depth=cfg.depth_tokens)
    prompt = classes["PromptEncoder"](transformer=classes["TwoWayTransformer"](
        depth=cfg.prompt_depth, embedding_dim=cfg.neck_dim, mlp_dim=cfg.prompt_mlp_dim, num_heads=cfg.prompt_heads),
        num_pos_feats=cfg.neck_dim // 2)
    decoder = classes["VIT_MLAHead_h"](img_size=96, mla_channels=cfg.neck_dim, mlahead_channels=cfg.decoder_dim,
                                       num_classes=cfg.num_classes)
    state = released_state(model)
    try:
        encoder.load_state_dict(state["encoder_dict"], strict=True)
        prompt.load_state_dict(state["feature_dict"][ACTIVE_PROMPT_ENCODER], strict=True)
        decoder.load_state_dict(state["decoder_dict"], strict=True)
    except RuntimeError as exc:  # the published code hard-codes parts of the ViT-B 128³ sizes
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"the published code does not build this network ({first} ...): it supports only the "
                         "published sizes, --config full --crop 128") from exc
    return encoder.eval(), prompt.eval(), decoder.eval()


def reference_predict(parts: tuple[Any, Any, Any], crop: torch.Tensor, points_dhw: torch.Tensor,
                      cfg: Sam3DAdapterConfig) -> torch.Tensor:
    """Foreground probability [1, 1, D, H, W] from the published modules, called as in its test.py."""
    encoder, prompt, decoder = parts
    side = crop.shape[-1]
    image = crop.repeat(1, 3, 1, 1, 1)
    upsampled = F.interpolate(image.float(), scale_factor=cfg.input_upsample, mode="trilinear")
    last, features = encoder(upsampled[0].transpose(0, 1))
    features = list(features) + [last]
    points_dwh = points_dhw[..., [0, 2, 1]].clone()
    features[3] = prompt(features[3], points_dwh, [side, side, side], feat_size=list(features[3].shape[2:]))
    small = F.interpolate(image[0, 0].permute(1, 2, 0)[None, None], scale_factor=0.5, mode="trilinear")
    logits = decoder(features + [small], 2, side // small.shape[-1]).permute(0, 1, 4, 2, 3)
    return F.softmax(logits, dim=1)[:, 1:2]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    out = fn()
    return out, time.perf_counter() - wall, _cpu_seconds() - cpu


def run(directory: Path, config: Sam3DAdapterConfig, repeats: int, points: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Alternating timed runs; returns medians, ratios (reference / ours) and the max |Δp|."""
    if config.depth != REFERENCE_DEPTH or config.crop_size[0] != config.crop_size[1] or \
            config.crop_size[1] != config.crop_size[2]:
        raise InputError(f"the published code needs {REFERENCE_DEPTH} blocks and a cubic crop")
    classes = import_reference(directory)
    torch.manual_seed(0)
    say(f"building both networks (random weights, crop {config.crop_size})")
    model = SAM3DAdapter(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised term may hide a difference
            p.add_(torch.randn_like(p) * 0.02)
    reference = build_reference(classes, model)
    crop = torch.randn(1, 1, *config.crop_size)
    clicks = torch.rand(1, points, 3) * (config.crop_size[0] - 1)
    times: dict[str, list[tuple[float, float]]] = {"reference": [], "ours": []}
    max_dp = 0.0
    with torch.inference_mode():
        for n in range(repeats):
            theirs, wall, cpu = _timed(lambda: reference_predict(reference, crop, clicks, config))
            times["reference"].append((wall, cpu))
            say(f"run {n + 1}/{repeats}: published {wall:.2f} s wall, {cpu:.2f} s CPU")
            ours, wall, cpu = _timed(lambda: model.predict_crop(crop, clicks))
            times["ours"].append((wall, cpu))
            say(f"run {n + 1}/{repeats}: ours {wall:.2f} s wall, {cpu:.2f} s CPU")
            max_dp = max(max_dp, (theirs - ours).abs().max().item())
    medians = {side: (statistics.median(t[0] for t in rows), statistics.median(t[1] for t in rows))
               for side, rows in times.items()}
    return {"reference_wall": medians["reference"][0], "reference_cpu": medians["reference"][1],
            "ours_wall": medians["ours"][0], "ours_cpu": medians["ours"][1],
            "wall_ratio": medians["reference"][0] / medians["ours"][0],
            "cpu_ratio": medians["reference"][1] / medians["ours"][1], "max_dp": max_dp, "repeats": repeats}


def main(args: argparse.Namespace, config: Sam3DAdapterConfig, say: Callable[[str], None]) -> int:
    if args.device not in ("auto", "cpu"):
        raise InputError("--reference-dir compares on the CPU only (use --device cpu)")
    result = run(Path(args.reference_dir), config, args.repeats, args.points, say)
    rows = [
        ("reference", f"{args.reference_dir}"),
        ("config", f"{args.config}: ViT dim {config.embed_dim}, depth {config.depth}, crop {config.crop_size}, "
                   f"{torch.get_num_threads()} threads"),
        ("published full crop", f"{result['reference_wall']:.3f} s wall, {result['reference_cpu']:.3f} s CPU "
                                f"(median of {result['repeats']})"),
        ("ours full crop", f"{result['ours_wall']:.3f} s wall, {result['ours_cpu']:.3f} s CPU"),
        ("speed-up (published / ours)", f"{result['wall_ratio']:.2f}x wall, {result['cpu_ratio']:.2f}x CPU"),
        ("max |dp|", f"{result['max_dp']:.2e}"),
    ]
    print_rows(rows)
    return 0
