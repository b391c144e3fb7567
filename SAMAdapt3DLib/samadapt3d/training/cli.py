"""`samadapt3d train`: fine-tune the adapters of a model on labelled volumes.

    samadapt3d train --data cases.csv --target liver --model litemedsam-adapter --out run1 [--epochs 10]
        [--batch-size 1] [--lr 2e-4] [--crop D,H,W] [--val-fraction 0.2] [--device auto] [--seed 0]
        [--workers 0] [--sam-checkpoint sam_vit_b_01ec64.pth | --init model.safetensors] [--config full|small|tiny]
        [--progress-json] [--resume [CHECKPOINT_OR_FOLDER]]

With --progress-json every event is one JSON object on its own line of standard output (the Slicer module
reads them): {"event": "start" | "step" | "epoch" | "done" | "stopped" | "error", ...}. SIGINT / SIGTERM stop
the run after the current step with a resumable checkpoint (exit status 0, event "stopped").
Several GPUs: `torchrun --nproc-per-node 4 -m samadapt3d train ...` (the same options).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from ..errors import InputError, SAMAdapt3DError
from .tasks import MODEL_NAMES
from .trainer import CHECKPOINT_NAME, TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samadapt3d train", description="Fine-tune the adapters of a model on your "
                                "labelled volumes; the backbone stays frozen.")
    p.add_argument("--data", help="folder of image/label pairs or a CSV with image,label columns")
    p.add_argument("--target", help="segment name (case-insensitive) or label value to learn")
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help="what to fine-tune (default litemedsam-adapter)")
    p.add_argument("--out", default=None, help="output folder (model, checkpoint, log.csv; default samadapt3d-train)")
    p.add_argument("--sam-checkpoint", default=None, help="sam3d-adapter: start from this SAM ViT file")
    p.add_argument("--init", default=None, help="start from a released .pth.tar or a .safetensors of ours")
    p.add_argument("--config", choices=("full", "small", "tiny"), default=None,
                   help="full: the real network; small/tiny: random reduced networks (tests, smoke runs)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--crop", default=None, help="crop D,H,W in model voxels (sam3d: the network's crop; "
                   "litemedsam: slices per stack, in-plane size, 0 = whole slices) or one number for all")
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--samples-per-epoch", type=int, default=None)
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N, mps (default auto)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="data loader processes (default 0)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="sam3d-adapter: recompute encoder blocks in the backward (far less memory, ~1/3 slower)")
    p.add_argument("--progress-json", action="store_true", help="print one JSON object per event on stdout")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help=f"continue a stopped run (default: {CHECKPOINT_NAME} in --out); its options are reused, "
                        f"--epochs/--device/--workers may change")
    return p


def _crop(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or any(v < 0 for v in values):
        raise InputError(f"--crop expects D,H,W (or one number), got {text!r}")
    return tuple(values)  # type: ignore[return-value]


_OVERRIDABLE = ("epochs", "device", "workers", "out", "checkpoint_activations")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    given = {"data": args.data, "target": args.target, "model": args.model, "out": args.out,
             "sam_checkpoint": args.sam_checkpoint, "init": args.init, "config": args.config, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "crop": _crop(args.crop), "val_fraction": args.val_fraction,
             "samples_per_epoch": args.samples_per_epoch, "device": args.device, "seed": args.seed,
             "workers": args.workers}
    given = {k: v for k, v in given.items() if v is not None}
    if args.no_augment:
        given["augment"] = False
    if args.checkpoint_activations:
        given["checkpoint_activations"] = True
    if args.resume is not None:
        path = Path(args.resume or given.get("out") or "samadapt3d-train")
        path = path / CHECKPOINT_NAME if path.is_dir() else path
        if not path.is_file():
            raise InputError(f"no checkpoint to resume at {path}")
        from .trainer import read_resume_checkpoint

        _, config = read_resume_checkpoint(path)
        for key in _OVERRIDABLE:
            if key in given:
                setattr(config, key, given[key])
        return config, str(path)
    missing = [f"--{k}" for k in ("data", "target") if k not in given]
    if missing:
        raise InputError(f"missing {' and '.join(missing)}")
    return TrainConfig(**given), None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()

    def emit(event: dict) -> None:
        if args.progress_json:
            print(json.dumps(event), flush=True)
        elif event["event"] == "epoch":
            scores = (f", val Dice {event['val_dice']:.3f}, NSD {event['val_nsd']:.3f}" if "val_dice" in event else "")
            print(f"epoch {event['epoch']}/{event['epochs']}: loss {event['train_loss']:.4f}{scores}", flush=True)
        elif event["event"] in ("done", "stopped"):
            print(f"{event['event']}: " + ", ".join(f"{k} {v}" for k, v in event.items() if k != "event"), flush=True)

    def on_signal(signum, frame) -> None:
        stop.set()  # finish the step, save, exit 0

    previous = {}
    if threading.current_thread() is threading.main_thread():
        sigs = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])
        previous = {s: signal.signal(s, on_signal) for s in sigs}
    try:
        config, resume = config_from_args(args)
        train(config, progress=emit, stop=stop, resume=resume, show_bar=not args.progress_json)
        return 0
    except SAMAdapt3DError as exc:
        if args.progress_json:
            print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
        print(f"samadapt3d: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
