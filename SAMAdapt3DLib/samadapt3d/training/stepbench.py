"""Time and memory of one fine-tuning step (prompts, forward, DiceCE, backward, clipping, AdamW) on a random input.

    python -m samadapt3d.training.stepbench --model litemedsam-adapter --config full [--steps 2] [--device cpu]
    python -m samadapt3d.training.stepbench --model sam3d-adapter --config small|full [--memory-limit-gb 16]

Prints one line per step and a JSON summary (peak memory: torch.cuda.max_memory_allocated on a GPU, the process
peak RSS on a CPU). A benchmark figure, never a test. `--memory-limit-gb` caps the address space (Linux) so that
a network too large for the machine fails with an error instead of pushing the system into swap or the OOM killer.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from ..device import resolve_device


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024) / 2**30


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m samadapt3d.training.stepbench")
    p.add_argument("--model", choices=("litemedsam-adapter", "sam3d-adapter"), default="litemedsam-adapter")
    p.add_argument("--config", choices=("full", "small", "tiny"), default="full")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-limit-gb", type=float, default=0.0)
    p.add_argument("--checkpoint-activations", action="store_true", help="sam3d-adapter: recompute encoder blocks")
    args = p.parse_args(argv)
    if args.memory_limit_gb:
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from .loss import dice_ce_loss
    from .tasks import Sam3DTask, build_task, network

    device = resolve_device(args.device)
    torch.manual_seed(0)
    if args.model == "sam3d-adapter":
        from ..bench import bench_config
        from ..families.sam3d import SAM3DAdapter, Sam3DAdapterConfig

        config = Sam3DAdapterConfig.tiny() if args.config == "tiny" else bench_config(args.config, 128)
        model = SAM3DAdapter(config)
        model.set_trainable()
        model.image_encoder.checkpoint_blocks = args.checkpoint_activations
        task = Sam3DTask(model)
        shape = tuple(model.crop_size)
    else:
        task = build_task("litemedsam-adapter", config=args.config)
        shape = (2 * task.model.slice_context + 1, 256, 256)
    task.model.to(device)
    image = torch.randn(1, 1, *shape, device=device) * 100
    mask = torch.zeros(1, 1, *shape, device=device)
    mask[:, :, shape[0] // 4: max(shape[0] // 2, 1) + shape[0] // 4,
         shape[1] // 4: shape[1] // 2, shape[2] // 4: shape[2] // 2] = 1
    net = network(task)
    params = [q for q in net.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rng = np.random.default_rng(0)
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        logits, target = task.logits(net, image, mask, rng)
        loss = dice_ce_loss(logits, target)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((round(t1 - t0, 2), round(time.perf_counter() - t1, 2)))
        print(f"step {step}: forward {times[-1][0]} s, backward+AdamW {times[-1][1]} s", flush=True)
    print(json.dumps({"model": args.model, "config": args.config, "input": list(shape), "device": str(device),
                      "checkpoint_activations": bool(args.checkpoint_activations),
                      "threads": torch.get_num_threads(), "steps_s": times, "peak_gib": round(_peak_gib(device), 2),
                      "trainable": sum(q.numel() for q in params), "parameters": sum(q.numel() for q in net.parameters())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
