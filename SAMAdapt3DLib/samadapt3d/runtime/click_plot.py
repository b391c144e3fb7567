"""Seconds per click against the click number, per model (docs/BENCHMARKS.md, issue 17 part 6).

    python -m samadapt3d.runtime.click_plot measure --out litemedsam_clicks.csv   # LiteMedSAM on the slicerio CT
    python -m samadapt3d.runtime.click_plot measure --model sam3d-random --out sam3d_clicks.csv
    python -m samadapt3d.runtime.click_plot plot litemedsam_clicks.csv [other.csv ...] --out clicks.png

`measure` runs the session as the Slicer effect does (set_image, prepare in the background, then the clicks at
once): the demo's one click per structure of the slicerio chest CT (`samadapt3d.demo.DEMO_CLICKS`, a reset
between structures: the first clicks embed their slices), then rounds of one seeded random click per structure
inside it (every slice embedded by then: warm clicks on new objects), and writes one CSV row per click (model, click, seconds, CPU seconds, what was clicked, load).
`--model sam3d-random` times the published 3DSAM-adapter network (full ViT-B, 128³ crops at 1 mm) with seeded random
weights (none can be downloaded here, so its masks mean nothing and no Dice is written): on each of the two lungs the
demo click, then `--follow` further positive clicks inside the lung and inside the first click's crop, prompts kept
(the clicks of one object's refinement: the first one runs the encoder on its crop, the others find its features
cached). One crop per click (`max_crops` 1), so that a random mask's growth does not decide the time.
`plot` draws every CSV given (same columns; e.g. 3DSAM-adapter rows measured elsewhere) as one line per model.
Only measured numbers are plotted.
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

FIELDS = ("model", "click", "seconds", "cpu_seconds", "what", "load_average")


def _core(mask):
    """(i, j, k) [N, 3] of the voxels whose 6 neighbours are in the mask too (all of it when none are)."""
    import numpy as np

    core = mask.copy()
    for axis in range(3):
        core[tuple(slice(1, None) if a == axis else slice(None) for a in range(3))] &= mask[
            tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))]
        core[tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))] &= mask[
            tuple(slice(1, None) if a == axis else slice(None) for a in range(3))]
    return np.argwhere(core if core.any() else mask)[:, ::-1]


def _inside(mask, rng):
    """A random voxel (i, j, k) whose 6 neighbours are in the mask too (not on its edge)."""
    ijk = _core(mask)
    return tuple(int(v) for v in ijk[rng.integers(len(ijk))])


def measure(out: Path, precision: str, rounds: int, seed: int = 0, model_name: str = "litemedsam",
            follow: int = 3, sam3d_config=None) -> list[dict]:
    """The clicks of `model_name`'s series, timed, written to `out`; `sam3d_config`: the 3DSAM-adapter network
    (default: the published ViT-B one)."""
    rows = (_measure_litemedsam(precision, rounds, seed) if model_name == "litemedsam" else
            _measure_sam3d_random(follow, seed, sam3d_config))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _timed(rows: list[dict], model: str, click, what: str) -> object:
    """Runs `click()`, appends its row and prints it; returns what it returned."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = click()
    rows.append({"model": model, "click": len(rows) + 1, "seconds": f"{time.perf_counter() - t0:.3f}",
                 "cpu_seconds": f"{time.process_time() - c0:.3f}", "what": what(result),
                 "load_average": f"{os.getloadavg()[0]:.1f}"})
    print(",".join(str(rows[-1][f]) for f in FIELDS), flush=True)
    return result


def _measure_litemedsam(precision: str, rounds: int, seed: int) -> list[dict]:
    import numpy as np

    from ..demo import DEMO_CLICKS, dice, load_demo_case
    from ..models import load_model
    from ..session import InteractiveSession

    volume, truth = load_demo_case()
    model = load_model("litemedsam", precision=precision)
    session = InteractiveSession(model)
    session.engine.embeddings._disk = None  # cold: nothing from an earlier run
    session.set_image(volume)
    session.prepare(background=True)
    rows: list[dict] = []
    rng = np.random.default_rng(seed)
    for round_ in range(rounds):
        for name, demo_ijk in DEMO_CLICKS.items():
            ijk = demo_ijk if round_ == 0 else _inside(np.asarray(truth[name], bool), rng)
            session.reset()
            _timed(rows, f"LiteMedSAM ({model.backend()})",
                   lambda: np.asarray(session.add_point(ijk, positive=True, space="ijk")) > 0,
                   lambda mask: f"round {round_ + 1}: {name} at {ijk} (Dice {dice(mask, truth[name]):.3f})")
    session.engine.embeddings.stop_prefetch()
    return rows


#: the structures of the 3DSAM-adapter series (their demo clicks first)
SAM3D_STRUCTURES = ("right lung", "left lung")


def _inside_crop(mask, rng, crops_of, crop) -> tuple[int, int, int]:
    """A random voxel inside `mask` (as `_inside`) whose crop is `crop` (the clicks of one object's refinement
    share the crop of its first click); `crops_of(ijk [N, 3])`: their crop starts [N, 3]. Any voxel inside the
    mask when none is in that crop."""
    import numpy as np

    ijk = _core(mask)
    same = ijk[(crops_of(ijk) == np.asarray(crop)).all(axis=1)]
    if not len(same):
        return _inside(mask, rng)
    return tuple(int(v) for v in same[rng.integers(len(same))])


def _measure_sam3d_random(follow: int, seed: int, config=None) -> list[dict]:
    import numpy as np
    import torch

    from ..demo import DEMO_CLICKS, load_demo_case
    from ..families.sam3d import SAM3DAdapter, Sam3DAdapterConfig
    from ..session import InteractiveSession

    volume, truth = load_demo_case()
    torch.manual_seed(seed)
    model = SAM3DAdapter(config or Sam3DAdapterConfig()).eval()
    session = InteractiveSession(model)
    engine = session.engine
    engine.max_crops = 1
    session.set_image(volume)
    rows: list[dict] = []
    rng = np.random.default_rng(seed)
    label = f"3DSAM-adapter (random weights, {model.crop_size[0]}³ crop)"

    def crops_of(ijk) -> np.ndarray:
        return np.stack([engine._start_for(p) for p in session.space.index_to_model(np.asarray(ijk, float))])

    for name in SAM3D_STRUCTURES:
        session.reset()
        first = crops_of([DEMO_CLICKS[name]])[0]
        for n in range(1 + follow):
            ijk = DEMO_CLICKS[name] if n == 0 else _inside_crop(np.asarray(truth[name], bool), rng, crops_of, first)
            misses = engine.cache_misses
            _timed(rows, label, lambda: session.add_point(ijk, positive=True, space="ijk"),
                   lambda _: f"{name}: click {n + 1} at {ijk}, encoder "
                             f"{'run' if engine.cache_misses > misses else 'cached'}")
    return rows


def plot(csvs: list[Path], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = {}
    for path in csvs:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                series.setdefault(row["model"], []).append(
                    (int(row["click"]), float(row["seconds"]), float(row["cpu_seconds"])))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for model, points in series.items():
        points.sort()
        line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{model}: wall")[0]
        # CPU seconds of the process: what a loaded machine inflates least
        ax.plot([p[0] for p in points], [p[2] for p in points], marker="x", linestyle="--", color=line.get_color(),
                label=f"{model}: CPU")
    ax.set_yscale("log")
    ax.set_xlabel("click number")
    ax.set_ylabel("seconds per click (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samadapt3d.runtime.click_plot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="clicks on the slicerio CT -> CSV")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--model", default="litemedsam", choices=["litemedsam", "sam3d-random"])
    m.add_argument("--precision", default="auto", help="LiteMedSAM's encoder precision")
    m.add_argument("--rounds", type=int, default=2, help="LiteMedSAM: rounds of the 7 demo clicks")
    m.add_argument("--follow", type=int, default=3, help="3DSAM-adapter: clicks after the first on each lung")
    p = sub.add_parser("plot", help="CSV files -> PNG")
    p.add_argument("csv", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="seconds per click, slicerio chest CT")
    args = parser.parse_args(argv)
    if args.command == "measure":
        measure(args.out, args.precision, args.rounds, model_name=args.model, follow=args.follow)
    else:
        plot(args.csv, args.out, args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
