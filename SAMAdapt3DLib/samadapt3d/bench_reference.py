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
import gc
import importlib
import importlib.util
import multiprocessing
import os
import resource
import statistics
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .bench_table import print_rows
from .errors import InputError
from .families.sam3d import SAM3DAdapter, Sam3DAdapterConfig, released_state
from .families.sam3d.allocator import OPT_OUT_VARIABLE, keep_freed_memory
from .families.sam3d.model import ACTIVE_PROMPT_ENCODER

#: published module -> class names our bench constructs (3DSAM-adapter/test.py)
REFERENCE_MODULES = {"modeling.image_encoder": ("ImageEncoderViT_3d_v2",),
                     "modeling.mask_decoder": ("VIT_MLAHead_h",),
                     "modeling.prompt_encoder": ("PromptEncoder", "TwoWayTransformer")}
#: the published encoder takes a neck feature after every 3 of exactly 12 blocks
REFERENCE_DEPTH = 12


def _bare_segment_anything() -> None:
    """The published encoder imports segment_anything.modeling; the package's __init__ imports torchvision (for
    its predictor helpers, unused here and often not installable next to a given torch): register the package as
    a bare module so that only its submodules are imported."""
    if "segment_anything" in sys.modules:
        return
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or spec.submodule_search_locations is None:
        return  # the import below then names what is missing
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["segment_anything"] = package


def import_reference(directory: Path) -> dict[str, Any]:
    """The published classes, imported from `directory` (added to sys.path for the import only)."""
    _bare_segment_anything()
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


def reference_encode(encoder: Any, crop: torch.Tensor, cfg: Sam3DAdapterConfig) -> list[torch.Tensor]:
    """The published encoder's four features, called as in its test.py: 3-channel crop upsampled, slices in."""
    image = crop.repeat(1, 3, 1, 1, 1)
    upsampled = F.interpolate(image.float(), scale_factor=cfg.input_upsample, mode="trilinear")
    last, features = encoder(upsampled[0].transpose(0, 1))
    return list(features) + [last]


def reference_decode(parts: tuple[Any, Any], features: list[torch.Tensor], crop: torch.Tensor,
                     points_dhw: torch.Tensor) -> torch.Tensor:
    """Foreground probability [1, 1, D, H, W] from the published prompt encoder and decoder."""
    prompt, decoder = parts
    side = crop.shape[-1]
    features = list(features)
    points_dwh = points_dhw[..., [0, 2, 1]].clone()
    features[3] = prompt(features[3], points_dwh, [side, side, side], feat_size=list(features[3].shape[2:]))
    small = F.interpolate(crop[0, 0].permute(1, 2, 0)[None, None].float(), scale_factor=0.5, mode="trilinear")
    logits = decoder(features + [small], 2, side // small.shape[-1]).permute(0, 1, 4, 2, 3)
    return F.softmax(logits, dim=1)[:, 1:2]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    out = fn()
    return out, time.perf_counter() - wall, _cpu_seconds() - cpu


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _inputs(config: Sam3DAdapterConfig, points: int) -> tuple[SAM3DAdapter, torch.Tensor, torch.Tensor]:
    """Our network with seeded random weights (no zero-initialised term may hide a difference), crop and clicks:
    the same in every process."""
    torch.manual_seed(0)
    model = SAM3DAdapter(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    crop = torch.randn(1, 1, *config.crop_size)
    clicks = torch.rand(1, points, 3) * (config.crop_size[0] - 1)
    return model, crop, clicks


def measure_side(side: str, directory: Path, config: Sam3DAdapterConfig, points: int, threads: int) -> dict[str, Any]:
    """One timed prediction of one side, in a fresh process: encoder, then prompt + decoder; its peak RSS."""
    torch.set_num_threads(threads)
    if side == "reference":  # the published code as users run it: glibc's default allocator settings
        os.environ[OPT_OUT_VARIABLE] = "0"
    model, crop, clicks = _inputs(config, points)
    with torch.inference_mode():
        if side == "reference":
            encoder, prompt, decoder = build_reference(import_reference(directory), model)
            del model
            gc.collect()
            features, enc_wall, enc_cpu = _timed(lambda: reference_encode(encoder, crop, config))
            prob, dec_wall, dec_cpu = _timed(lambda: reference_decode((prompt, decoder), features, crop, clicks))
        else:
            features, enc_wall, enc_cpu = _timed(lambda: model.encode(crop))
            prob, dec_wall, dec_cpu = _timed(lambda: model.decode(features, clicks))
    return {"encoder": (enc_wall, enc_cpu), "decode": (dec_wall, dec_cpu),
            "total": (enc_wall + dec_wall, enc_cpu + dec_cpu), "peak_rss": _peak_rss_bytes(), "prob": prob,
            "keeps_freed_memory": keep_freed_memory()}


def _in_fresh_process(*args: Any) -> dict[str, Any]:
    # spawn, not fork: a forked child would inherit the parent's allocator state and OpenMP threads
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_side, *args).result()


def run(directory: Path, config: Sam3DAdapterConfig, repeats: int, points: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Alternating timed runs, each in its own process; returns medians (wall, CPU) of the encoder, the decode and
    their total per side, ratios (reference / ours), each side's largest peak RSS and the max |dp|."""
    if config.depth != REFERENCE_DEPTH or config.crop_size[0] != config.crop_size[1] or \
            config.crop_size[1] != config.crop_size[2]:
        raise InputError(f"the published code needs {REFERENCE_DEPTH} blocks and a cubic crop")
    import_reference(directory)  # fail here, with the message, not inside a child process
    say(f"timing both networks (random weights, crop {config.crop_size}), one fresh process per run")
    runs: dict[str, list[dict[str, Any]]] = {"reference": [], "ours": []}
    max_dp = 0.0
    for n in range(repeats):
        for side, label in (("reference", "published"), ("ours", "ours")):
            result = _in_fresh_process(side, directory, config, points, torch.get_num_threads())
            runs[side].append(result)
            (ew, ec), (tw, tc) = result["encoder"], result["total"]
            say(f"run {n + 1}/{repeats}: {label} encoder {ew:.2f} s wall, {ec:.2f} s CPU; full crop {tw:.2f} s wall, "
                f"{tc:.2f} s CPU; peak RSS {result['peak_rss'] / 2**30:.2f} GiB")
        max_dp = max(max_dp, (runs["reference"][-1]["prob"] - runs["ours"][-1]["prob"]).abs().max().item())
    out: dict[str, Any] = {"max_dp": max_dp, "repeats": repeats}
    for side, rows in runs.items():
        for part in ("encoder", "decode", "total"):
            out[f"{side}_{part}_wall"] = statistics.median(r[part][0] for r in rows)
            out[f"{side}_{part}_cpu"] = statistics.median(r[part][1] for r in rows)
        out[f"{side}_peak_rss"] = max(r["peak_rss"] for r in rows)
        out[f"{side}_keeps_freed_memory"] = rows[0]["keeps_freed_memory"]
    for part in ("encoder", "decode", "total"):
        for clock in ("wall", "cpu"):
            out[f"{part}_{clock}_ratio"] = out[f"reference_{part}_{clock}"] / out[f"ours_{part}_{clock}"]
    return out


def main(args: argparse.Namespace, config: Sam3DAdapterConfig, say: Callable[[str], None]) -> int:
    if args.device not in ("auto", "cpu"):
        raise InputError("--reference-dir compares on the CPU only (use --device cpu)")
    result = run(Path(args.reference_dir), config, args.repeats, args.points, say)
    gib = 2**30
    rows = [
        ("reference", f"{args.reference_dir}"),
        ("config", f"{args.config}: ViT dim {config.embed_dim}, depth {config.depth}, crop {config.crop_size}, "
                   f"{torch.get_num_threads()} threads, median of {result['repeats']}, one process per run"),
    ]
    for part, what in (("encoder", "encoder"), ("decode", "prompt + decoder"), ("total", "full crop")):
        rows += [
            (f"published {what}", f"{result[f'reference_{part}_wall']:.3f} s wall, "
                                  f"{result[f'reference_{part}_cpu']:.3f} s CPU"),
            (f"ours {what}", f"{result[f'ours_{part}_wall']:.3f} s wall, {result[f'ours_{part}_cpu']:.3f} s CPU"),
            (f"{what} speed-up (published / ours)", f"{result[f'{part}_wall_ratio']:.2f}x wall, "
                                                    f"{result[f'{part}_cpu_ratio']:.2f}x CPU"),
        ]
    rows += [
        ("peak RSS (process, largest run)", f"published {result['reference_peak_rss'] / gib:.2f} GiB, "
                                            f"ours {result['ours_peak_rss'] / gib:.2f} GiB"),
        ("max |dp|", f"{result['max_dp']:.2e}"),
    ]
    print_rows(rows)
    return 0
