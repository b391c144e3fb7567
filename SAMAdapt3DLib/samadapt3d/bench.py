"""`samadapt3d bench`: speed and memory of the 3DSAM-adapter network with random weights.

Prints, for the chosen device: the full-crop forward (encoder + prompt encoder + decoder), the
prompt+decoder time with the encoder output reused (what a new click costs), and peak memory.
Speed is a benchmark figure, never a test.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import torch

from .bench_table import print_rows
from .device import resolve_device
from .families.sam3d import SAM3DAdapter, Sam3DAdapterConfig

SMALL = Sam3DAdapterConfig(embed_dim=192, depth=4, num_heads=4, sam_grid=32, sam_window=8,
                           global_attn_indexes=(1, 3), window_size=8, depth_tokens=16)


def bench_config(name: str, crop: int) -> Sam3DAdapterConfig:
    base = Sam3DAdapterConfig() if name == "full" else SMALL
    if crop % 32:
        raise SystemExit(f"--crop must be a multiple of 32, got {crop}")
    tokens = crop * base.input_upsample // base.patch_size
    return Sam3DAdapterConfig(**{**base.to_dict(), "sam_grid": 2 * tokens, "depth_tokens": tokens,
                                 "global_attn_indexes": base.global_attn_indexes})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _say(text: str) -> None:
    """What the benchmark is doing now (a full ViT-B forward on CPU takes minutes): to stderr, so that stdout
    holds only the results."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _time(fn: Callable[[], object], device: torch.device, repeats: int, what: str = "run") -> list[float]:
    times = []
    for n in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        _say(f"{what} {n + 1}/{repeats}: {times[-1]:.3f} s")
    return times


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)"
    if device.type == "mps":
        return f"{torch.mps.driver_allocated_memory() / 2**30:.2f} GiB (mps driver allocated, at end)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB
    return f"{rss_bytes / 2**30:.2f} GiB (process peak RSS, ru_maxrss)"


def _precision(device: torch.device, precision: str):
    """bf16: autocast on the device (CPU or CUDA); fp32: the exact path."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _agreement(model: SAM3DAdapter, crop: torch.Tensor, points: torch.Tensor, answer: torch.Tensor) -> str:
    """Max |dp| and Dice of the 0.5 masks against the fp32 forward of the same crop and clicks."""
    with torch.inference_mode():
        exact = model.predict_crop(crop, points)
    a, b = answer.float() > 0.5, exact > 0.5
    dice = 2 * (a & b).sum().item() / max(1, a.sum().item() + b.sum().item())
    return f"max |dp| {(answer.float() - exact).abs().max().item():.2e}, Dice of the 0.5 masks {dice:.4f}"


def _reference_main(args: argparse.Namespace, config: Sam3DAdapterConfig) -> int:
    from dataclasses import replace

    from .bench_reference import REFERENCE_DEPTH
    from .bench_reference import main as reference_main

    if config.depth != REFERENCE_DEPTH:  # the published encoder hard-codes 12 blocks
        config = replace(config, depth=REFERENCE_DEPTH, global_attn_indexes=(2, 5, 8, 11))
    return reference_main(args, config, _say)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--model" in argv or any(a.startswith("--model=") for a in argv):  # LiteMedSAM: its own module
        from .runtime.bench_litemedsam import main as litemedsam_main

        return litemedsam_main(argv)
    parser = argparse.ArgumentParser(prog="samadapt3d bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--crop", type=int, default=128, help="cubic crop side in voxels (published: 128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="full", choices=["full", "small"],
                        help="full = published ViT-B network; small = a reduced one for a quick look")
    parser.add_argument("--points", type=int, default=1, help="clicks per prediction")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16 = autocast (CPU or CUDA); also prints its agreement with fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (the warm-up compiles)")
    parser.add_argument("--reference-dir", default=None,
                        help="time the published code (the 3DSAM-adapter/ folder of a med-air/3DSAM-adapter "
                             "checkout, imported at run time) against ours on the same random weights")
    args = parser.parse_args(argv)

    config = bench_config(args.config, args.crop)
    if args.reference_dir is not None:
        return _reference_main(args, config)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    _say(f"building the {args.config} network (random weights) on {device}")
    model = SAM3DAdapter(config).to(device).eval()
    crop = torch.randn(1, 1, *config.crop_size, device=device)
    points = torch.rand(1, args.points, 3, device=device) * (args.crop - 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if args.compile:
        model.image_encoder.forward = torch.compile(model.image_encoder.forward)  # static shapes: one graph
    with torch.inference_mode(), _precision(device, args.precision):
        _say(f"warm-up: one forward of a {tuple(config.crop_size)} crop")
        start = time.perf_counter()
        features = model.encode(crop)  # warm-up (allocations, kernels, compilation)
        answer = model.decode(features, points)
        _say(f"warm-up done in {time.perf_counter() - start:.1f} s; timing {args.repeats} full forwards")
        full = _time(lambda: model.decode(model.encode(crop), points), device, args.repeats, "full forward")
        decode = _time(lambda: model.decode(features, points), device, max(args.repeats, 3), "decode")
    agreement = _agreement(model, crop, points, answer) if args.precision != "fp32" else None

    params = sum(p.numel() for p in model.parameters())
    rows = [
        ("device", f"{device} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads)"),
        ("config", f"{args.config}: ViT dim {config.embed_dim}, depth {config.depth}, crop {config.crop_size}, "
                   f"{params / 1e6:.1f} M parameters"),
        ("full-crop forward (encode+decode)", f"{statistics.median(full):.3f} s median of {len(full)} "
                                              f"(min {min(full):.3f})"),
        ("decode only (encoder output reused)", f"{statistics.median(decode):.3f} s median of {len(decode)} "
                                                f"(min {min(decode):.3f})"),
        ("peak memory", _peak_memory(device)),
    ]
    rows.insert(2, ("precision", args.precision + (" (torch.compile)" if args.compile else "")))
    if agreement is not None:
        rows.append((f"{args.precision} vs fp32", agreement))
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
