"""One click anywhere deep inside a structure (issue 16, part 2): seeded random positive clicks among the voxels of
each structure's truth mask eroded `--erosion` times, one click per fresh session state (`reset` between clicks,
embeddings stay cached), Dice against the truth, on the slicerio chest CT as stored or on a re-oriented copy.

    python -m samadapt3d.evaluate.first_click [--seed 2026] [--clicks 20] [--erosion 3] \\
        [--structures "right lung,left lung"] [--reoriented] [--resample DEPTH,SIDE] [--csv out.csv] [--quiet]

`--resample 300,400` runs on the CT resampled (trilinear, labels > 0.5) to SIDE x SIDE x DEPTH voxels, spacing scaled
to match: thin slices as a clinical scan has them (the model sees the same anatomy through ~9x as many slices).

Per click it prints: the click voxel (i, j, k of the file), Dice, the slices the mask covers vs the truth's (model
space, slicing axis), the winning candidate on the clicked slice (its rank by area, score, predicted IoU), where the
propagation stopped each way and why (engines/slice_objects.py `stop_reason`); then median / min / q25 / q75 / max
and the median seconds per click (wall and CPU). Nothing here is used by the library."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import resource
import time

import numpy as np

LUNGS = "right lung,left lung"


def reoriented_copy(volume, truth: dict[str, np.ndarray]):
    """The issue's recipe: PermuteAxes [1, 2, 0] then Flip [True, False, True] on the CT; labels go through the
    same and are resampled (nearest) to the copy of the CT."""
    import SimpleITK as sitk

    from ..volume import Volume

    def move(image):
        return sitk.Flip(sitk.PermuteAxes(image, [1, 2, 0]), [True, False, True])

    ct = move(volume.to_sitk())
    labels = {}
    for name, mask in truth.items():
        lab = move(volume.to_sitk(mask.astype(np.uint8)))
        lab = sitk.Resample(lab, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        labels[name] = sitk.GetArrayFromImage(lab) > 0
    return Volume.from_sitk(ct), labels


def clicks_in(mask: np.ndarray, erosion: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct voxels [k, j, i] of `mask` eroded `erosion` times (scipy's default cross element)."""
    from scipy import ndimage

    deep = np.argwhere(ndimage.binary_erosion(mask, iterations=erosion))
    rng = np.random.default_rng(seed)
    return deep[rng.choice(len(deep), size=min(count, len(deep)), replace=False)]


def _extent(mask_model: np.ndarray) -> str:
    ks = np.flatnonzero(mask_model.any(axis=(1, 2)))
    return "-" if ks.size == 0 else f"{ks[0]}-{ks[-1]}"


def _summary(values) -> str:
    v = np.asarray(values, float)
    q = np.quantile(v, [0.25, 0.5, 0.75])
    return f"median {q[1]:.3f} min {v.min():.3f} q25 {q[0]:.3f} q75 {q[2]:.3f} max {v.max():.3f}"


def _describe(trace: list[dict]) -> tuple[str, str]:
    anchors = [e for e in trace if e["kind"] == "anchor" and not e.get("smallest")]
    stops = [e for e in trace if e["kind"] == "stop"]
    won = "none"
    if anchors and anchors[0]["winner"] is not None:
        a = anchors[0]
        cands = a["candidates"]
        areas = sorted({c[1] for c in cands})
        w = cands[a["winner"]]
        won = (f"#{areas.index(w[1]) + 1}/{len(areas)} area {w[1]} score {w[0]:.3f} iou {w[2]:.2f} "
               f"src {a.get('sources', ['box'] * len(cands))[a['winner']]}")
    stop = " ".join(f"{'+' if e['step'] > 0 else '-'}@{e['slice']}:{e['why']}" for e in stops[:2])
    return won, stop


def cache_decodes(engine, folder: str) -> None:
    """Development only: keep the engine's decoder outputs in `folder` across runs (keyed by the slice's pixels
    and the box), so re-running the study after a strategy change decodes only the new boxes. Timings are then
    meaningless: measure seconds without it."""
    import hashlib
    import os

    os.makedirs(folder, exist_ok=True)
    predict = engine.predict_boxes

    def cached(data, boxes):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        head = data.image01.tobytes()
        paths = [os.path.join(folder, hashlib.blake2b(head + b.tobytes(), digest_size=16).hexdigest() + ".npz")
                 for b in boxes]
        todo = [n for n, path in enumerate(paths) if not os.path.exists(path)]
        if todo:
            logits, iou = predict(data, boxes[todo])
            for m, n in enumerate(todo):
                np.savez(paths[n], logits=logits[m], iou=iou[m])
        out = [np.load(path) for path in paths]
        return np.stack([o["logits"] for o in out]), np.asarray([o["iou"] for o in out], np.float32)

    engine.predict_boxes = cached


def _overrides(items: list[str]) -> dict:
    """NAME=VALUE pairs -> SliceConfig fields, each VALUE parsed as a Python literal (True, 0.2, (0.1, 0.2))."""
    import ast

    out = {}
    for item in items:
        name, _, value = item.partition("=")
        out[name.strip()] = ast.literal_eval(value.strip())
    return out


def main(argv: list[str] | None = None) -> int:
    from ..demo import dice, load_demo_case
    from ..engines import slice_objects
    from ..models import DEFAULT_MODEL, load_model
    from ..session import InteractiveSession

    p = argparse.ArgumentParser(prog="python -m samadapt3d.evaluate.first_click", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--erosion", type=int, default=3)
    p.add_argument("--structures", default=LUNGS, help="comma-separated label names (default: both lungs)")
    p.add_argument("--reoriented", action="store_true", help="the permuted + flipped copy of the CT")
    p.add_argument("--resample", default=None, metavar="DEPTH,SIDE",
                   help="the CT resampled to SIDE x SIDE x DEPTH voxels (e.g. 300,400: ~1 mm voxels)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--csv", default=None, help="write the per-click table here")
    p.add_argument("--quiet", action="store_true", help="only the summaries")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a SliceConfig threshold (repeatable), e.g. --set retry_stops=False")
    p.add_argument("--decode-cache", default=None, help="development: a folder keeping decoder outputs across runs")
    args = p.parse_args(argv)

    if args.resample:
        from ..runtime.bench_litemedsam import clinical_volume

        depth, side = (int(v) for v in args.resample.split(","))
        volume, truth, _ = clinical_volume(depth, side)  # it loads the demo case itself
    else:
        volume, truth = load_demo_case()
    if args.reoriented:
        reference = InteractiveSession(load_model(args.model))
        reference.set_image(volume)
        volume, truth = reoriented_copy(volume, truth)
    session = InteractiveSession(load_model(args.model))
    session.set_image(volume)
    if args.set:
        session.engine.config = dataclasses.replace(session.engine.config, **_overrides(args.set))
    if args.decode_cache:
        cache_decodes(session.engine, args.decode_cache)
    if args.reoriented:
        same = np.array_equal(session.space.image, reference.space.image)
        print(f"model-space image identical to the stored CT's: {same}")
    session.prepare()
    rows = []
    for name in args.structures.split(","):
        mask = truth[name.strip()]
        truth_model = session.space.to_model(mask, linear=False) > 0.5
        dices, walls = [], []
        for kji in clicks_in(mask, args.erosion, args.clicks, args.seed):
            session.reset()
            slice_objects.TRACE = []
            t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            out = np.asarray(session.add_point((int(kji[2]), int(kji[1]), int(kji[0]))))
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            wall, cpu = time.perf_counter() - t0, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
            won, stop = _describe(slice_objects.TRACE)
            slice_objects.TRACE = None
            d = dice(out, mask)
            dices.append(d)
            walls.append((wall, cpu))
            covered = _extent(session.space.to_model(out, linear=False) > 0.5)
            row = dict(structure=name, i=int(kji[2]), j=int(kji[1]), k=int(kji[0]), dice=round(d, 4),
                       slices=covered, truth_slices=_extent(truth_model), winner=won, stops=stop,
                       wall_s=round(wall, 2), cpu_s=round(cpu, 2))
            rows.append(row)
            if not args.quiet:
                print(f"{name:>12} ijk {row['i']:3d},{row['j']:3d},{row['k']:3d}  dice {d:.3f}  slices "
                      f"{covered:>6} / {row['truth_slices']:>6}  {won}  {stop}  {wall:.1f}s ({cpu:.1f} cpu)",
                      flush=True)
        w = np.asarray(walls)
        print(f"{name}: {_summary(dices)}; s/click median {np.median(w[:, 0]):.2f} wall, "
              f"{np.median(w[:, 1]):.2f} cpu", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
