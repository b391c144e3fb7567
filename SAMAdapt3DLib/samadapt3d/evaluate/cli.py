"""`samadapt3d evaluate`: the CVPR 2025 interactive protocol (evaluate.protocol) over labelled volumes.

    samadapt3d evaluate --data cases.csv --out eval_out [--model litemedsam|FILE] [--classes a,b] \\
        [--clicks 5] [--clicks-only] [--canonical] [--seed 0] [--device auto] [--quiet]
    torchrun --nproc-per-node 4 -m samadapt3d evaluate --data cases/ --out eval_out   # cases sharded

The data are what `samadapt3d train` reads (a CSV with image,label columns or a folder; training.data); every
segment of each label file is one object (or those named by --classes). Every prompt goes through an
InteractiveSession, so any model / engine can be evaluated. Outputs in --out: results.csv, steps.csv,
summary.json, dice_per_step.png (evaluate.report).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError, SAMAdapt3DError
from .protocol import CORRECTIVE_CLICKS, Box, Click, ObjectResult, PromptFrame, Step, run_object
from .report import Row, summarise, write_outputs


def build_parser() -> argparse.ArgumentParser:
    from ..models import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="samadapt3d evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a CSV with image,label columns or a folder of cases (as `train`)")
    p.add_argument("--out", required=True, help="output folder (results.csv, steps.csv, summary.json, PNG)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name or weight file (default {DEFAULT_MODEL})")
    p.add_argument("--sam-checkpoint", default=None, help="base SAM weights, for families that need them")
    p.add_argument("--classes", default=None, help="comma-separated segment names or label values (default: all)")
    p.add_argument("--clicks", type=int, default=CORRECTIVE_CLICKS, help="corrective clicks after the first step")
    p.add_argument("--clicks-only", action="store_true", help="step 0 is a click at the object's EDT maximum, no box")
    p.add_argument("--canonical", action="store_true", help="prompts from the volume reoriented to LPS (axial "
                   "slices on array axis 0), the same whatever axis order the file stores (default: as stored)")
    p.add_argument("--seed", type=int, default=0, help="seed of the box jitter and the click tie-breaks")
    p.add_argument("--max-cases", type=int, default=None, help="only the first N cases")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except SAMAdapt3DError as exc:
        print(f"samadapt3d: error: {exc}", file=sys.stderr)
        return 1


def object_rng(seed: int, case: str, label_value: int) -> np.random.Generator:
    """One generator per (seed, case, class): results do not depend on sharding or on the other classes."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode()), int(label_value)])


def _wanted(segments, classes: list[str] | None):
    if classes is None:
        return list(segments)
    keys = {c.strip().lower() for c in classes}
    return [s for s in segments if s.name.lower() in keys or str(s.label_value) in keys]


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(args: argparse.Namespace) -> int:
    from ..labels import mask_on_grid, read_labels
    from ..models import load_model
    from ..session import InteractiveSession
    from ..training import distributed
    from ..training.data import find_cases
    from ..volume import Volume

    if args.clicks < 0:
        raise InputError(f"--clicks must be >= 0, got {args.clicks}")
    cases = find_cases(args.data)[: args.max_cases]
    classes = None if args.classes is None else [c for c in args.classes.split(",") if c.strip()]
    info = distributed.setup(args.device)
    started, commit = time.perf_counter(), _commit()  # the code that runs is the code at the start
    try:
        model = load_model(args.model, sam_checkpoint=args.sam_checkpoint, device=info.device)
        session = InteractiveSession(model)
        mine = cases[info.rank::info.world_size]
        rows: list[Row] = []
        from tqdm import tqdm

        # one tick per object; a case counts as one until its label file says how many objects it holds
        bar = tqdm(total=len(mine), desc="evaluate", unit="object", disable=args.quiet or not info.is_main,
                   file=sys.stderr)
        for case in mine:
            volume = Volume.from_file(case.image)
            labels = read_labels(case.label)
            session.set_image(volume)
            spacing_kji = tuple(float(s) for s in volume.spacing[::-1])
            wanted = _wanted(labels.segments, classes)
            bar.total += len(wanted) - 1
            bar.refresh()
            for segment in wanted:
                # a label file on another grid (a Slicer .seg.nrrd keeps its own extent) is moved onto the image's
                truth = mask_on_grid(labels.layers[segment.layer].array == segment.label_value, labels.grid, volume)
                if not truth.any():
                    bar.update(1)
                    continue
                result = run_object(session, truth, spacing_kji, object_rng(args.seed, case.name, segment.label_value),
                                    clicks=args.clicks, clicks_only=args.clicks_only,
                                    frame=PromptFrame(volume, args.canonical))
                rows.append(Row(case.name, segment.name, result, int(truth.sum())))
                bar.set_postfix_str(f"{case.name[:12]} {segment.name[:16]} Dice {result.final_dice:.3f}")
                bar.update(1)
            if not wanted:
                bar.update(1)
        bar.close()
        rows = _gather(rows, Path(args.out), info)
        if not info.is_main:
            return 0
        if not rows:
            raise InputError("no object to evaluate: " + ("none of the classes " + ", ".join(classes) + " is in the "
                             "label files" if classes else "the label files hold no labelled voxel"))
        config = {"model": args.model, "family": model.family, "data": str(args.data), "cases": len(cases),
                  "clicks": args.clicks, "clicks_only": bool(args.clicks_only), "seed": args.seed,
                  "canonical": bool(args.canonical),
                  "device": str(info.device), "processes": info.world_size, "commit": commit,
                  "seconds": round(time.perf_counter() - started, 1)}
        summary = summarise(rows, config)
        write_outputs(Path(args.out), rows, summary)
        if not args.quiet:
            print_table(summary)
        return 0
    finally:
        distributed.cleanup(info)


def print_table(summary: dict) -> None:
    first = "click" if summary["config"]["clicks_only"] else "box"
    print(f"{'class':24s} {'n':>3s} {first + ' Dice':>9s} {'final Dice':>10s} {'final NSD':>9s} {'DSC_AUC':>7s} "
          f"{'NSD_AUC':>7s} {'max drop':>8s} {'s/step':>6s}")
    for label, c in list(summary["classes"].items()) + [("(all)", summary["overall"])]:
        per_step = c["seconds_per_step"][1:] or c["seconds_per_step"]
        print(f"{label[:24]:24s} {c['cases']:3d} {c['dice_per_step'][0]:9.3f} {c['final_dice']:10.3f} "
              f"{c['final_nsd']:9.3f} {c['dsc_auc']:7.3f} {c['nsd_auc']:7.3f} {c['largest_drop']:8.3f} "
              f"{float(np.mean(per_step)):6.2f}")


# ---- several processes: each writes its rows, the first merges them ------------------------------------------
def _row_json(row: Row) -> dict:
    steps = []
    for s in row.result.steps:
        p = s.prompt
        prompt = ({"box": [list(p.lo_kji), list(p.hi_kji)]} if isinstance(p, Box) else
                  {"click": list(p.kji), "positive": p.positive} if isinstance(p, Click) else None)
        steps.append({"prompt": prompt, "dice": s.dice, "nsd": s.nsd, "seconds": s.seconds})
    return {"case": row.case, "label": row.label, "voxels": row.voxels, "steps": steps}


def _row_from_json(d: dict) -> Row:
    steps = []
    for s in d["steps"]:
        p = s["prompt"]
        prompt = (None if p is None else Box(tuple(p["box"][0]), tuple(p["box"][1])) if "box" in p
                  else Click(tuple(p["click"]), bool(p["positive"])))
        steps.append(Step(prompt, float(s["dice"]), float(s["nsd"]), float(s["seconds"])))
    return Row(d["case"], d["label"], ObjectResult(steps), int(d["voxels"]))


def _gather(rows: list[Row], out: Path, info) -> list[Row]:
    """All processes' rows on the first one (through shard files in --out; nothing pickled)."""
    if not info.distributed:
        return rows
    from ..training import distributed

    out.mkdir(parents=True, exist_ok=True)
    shard = out / f".evaluate-shard-{info.rank}.json"
    shard.write_text(json.dumps([_row_json(r) for r in rows]))
    distributed.barrier(info)
    if not info.is_main:
        return []
    merged = []
    for rank in range(info.world_size):
        path = out / f".evaluate-shard-{rank}.json"
        merged += [_row_from_json(d) for d in json.loads(path.read_text())]
        os.remove(path)
    return merged
