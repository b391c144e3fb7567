"""How the cost of a click grows with the number of prompts (docs/BENCHMARKS.md): 1 positive click, then N
negative clicks, for N in --negatives; prints seconds and decoder runs for the whole list of N + 1 prompts given
at once and for the last negative added to the N - 1 before it.

    python -m samadapt3d.evaluate.scaling --model litemedsam [--negatives 1,5,20,200] [--shape 2,128,128]
    python -m samadapt3d.evaluate.scaling --model sam3d-tiny-random   # a random 3DSAM-adapter (or -small-)

The image is a smooth random volume (seeded); clicks are seeded random voxels, the negatives around the
positive. Decoder runs are counted by wrapping the model's `decode`."""
from __future__ import annotations

import argparse
import time

import numpy as np


#: random 3DSAM-adapters (no weight file): the bench's small configuration and the tests' tiny one
RANDOM_3DSAM = ("sam3d-small-random", "sam3d-tiny-random")


def _model(name: str, device: str):
    if name in RANDOM_3DSAM:
        import torch

        from ..bench import SMALL
        from ..families.sam3d import SAM3DAdapter, Sam3DAdapterConfig

        torch.manual_seed(0)
        return SAM3DAdapter(SMALL if name == "sam3d-small-random" else Sam3DAdapterConfig.tiny()).eval()
    from ..models import load_model

    return load_model(name, device=device)


def main(argv: list[str] | None = None) -> int:
    from ..models import DEFAULT_MODEL
    from ..session import InteractiveSession
    from ..volume import Volume

    p = argparse.ArgumentParser(prog="python -m samadapt3d.evaluate.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--negatives", default="1,5,20,200")
    p.add_argument("--shape", default="2,128,128", help="k,j,i voxels of the test volume")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    counts = [int(v) for v in args.negatives.split(",")]
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    for axis in range(3):  # smooth it: blobs a few voxels wide
        for _ in range(3):
            image = (image + np.roll(image, 1, axis) + np.roll(image, -1, axis)) / 3
    image = (image * 400).astype(np.float32)
    model = _model(args.model, args.device)
    runs = [0]
    decode = model.decode

    def counted(*a, **kw):
        runs[0] += 1
        return decode(*a, **kw)

    model.decode = counted
    session = InteractiveSession(model)
    session.set_image(Volume(image))
    centre = np.array(shape[::-1], float) / 2  # (i, j, k)
    spread = np.maximum(np.array(shape[::-1]) / 4, 0.5)
    print(f"model {args.model}, volume {shape} [k, j, i]")
    print(f"{'negatives':>9s} {'all at once s':>13s} {'decodes':>7s} {'last one s':>10s} {'decodes':>7s}")
    for n in counts:
        negatives = [tuple(np.clip(centre + rng.uniform(-1, 1, 3) * spread, 0, np.array(shape[::-1]) - 1))
                     for _ in range(n)]
        session.set_image(Volume(image))  # cold caches for each row
        runs[0] = 0
        t0 = time.perf_counter()
        session.segment(positive=[tuple(centre)], negative=negatives)
        all_s, all_runs = time.perf_counter() - t0, runs[0]
        session.segment(positive=[tuple(centre)], negative=negatives[:-1])
        runs[0] = 0
        t0 = time.perf_counter()
        session.add_point(negatives[-1], positive=False)
        print(f"{n:9d} {all_s:13.2f} {all_runs:7d} {time.perf_counter() - t0:10.2f} {runs[0]:7d}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
