"""What the process boundary costs per click: `python -m samadapt3d.server.overhead_bench [--shape K J I]`.

A `samadapt3d serve` child (LocalServer) and an in-process InteractiveSession run the same cheap crop model
("bench-threshold": every voxel of the clicked crop near the clicked intensity, no network) on the same synthetic
volume (default 300 x 512 x 512 int16, balls of distinct intensities). The image is uploaded once; then each click
is timed through the client and in process (each followed by an undo, so every click runs one prompt). The
overhead of a click is its time at the client minus the time the server's InteractiveSession call took (the
server reports it): encoding, HTTP over loopback, the changed-box delta on both sides and the client's copy of
the mask. The in-process time is printed beside it. Numbers: docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from ..models import FamilySpec
from .threshold_model import ThresholdCropModel

BALL_RADIUS = 10


FAMILY = FamilySpec(name="bench-threshold", detect=lambda obj: False, load=lambda obj, **kw: None,
                    builtin_names={"bench-threshold": lambda sam_checkpoint=None: ThresholdCropModel()},
                    description="benchmark-only model without compute (overhead_bench)")


def phantom(shape: tuple[int, int, int], count: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """int16 volume with `count` balls of distinct intensities; their centres as (i, j, k)."""
    rng = np.random.default_rng(0)
    array = np.zeros(shape, np.int16)
    centres = []
    r = BALL_RADIUS
    k, j, i = np.ogrid[-r:r + 1, -r:r + 1, -r:r + 1]
    ball = k * k + j * j + i * i <= r * r
    for n in range(count):
        c = [int(rng.integers(2 * r, s - 2 * r)) for s in shape]
        box = tuple(slice(v - r, v + r + 1) for v in c)
        array[box][ball] = 100 * (n + 1)
        centres.append((c[2], c[1], c[0]))
    return array, centres


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samadapt3d.server.overhead_bench")
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("K", "J", "I"))
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args(argv)
    from ..client import LocalServer
    from ..session import InteractiveSession
    from ..volume import Volume

    array, centres = phantom(tuple(args.shape), args.clicks)
    volume = Volume(array, (0.8, 0.8, 1.5))
    print(f"volume {array.shape} {array.dtype} ({array.nbytes / 2**20:.0f} MiB), {args.clicks} clicks", flush=True)
    local = InteractiveSession(ThresholdCropModel())
    started = time.perf_counter()
    local.set_image(volume)
    print(f"in-process set_image: {time.perf_counter() - started:.2f} s", flush=True)
    with LocalServer(device="cpu", extra_args=("--model-family", "samadapt3d.server.overhead_bench")) as server:
        client = server.client
        remote = client.open_session(client.load_model("bench-threshold", device="cpu"))
        started = time.perf_counter()
        image_id = client.upload_image(array)
        upload = time.perf_counter() - started
        started = time.perf_counter()
        client.upload_image(array)
        again = time.perf_counter() - started
        started = time.perf_counter()
        remote.set_image(volume)  # the image is there: geometry only, then the server's set_image
        set_image = time.perf_counter() - started
        print(f"upload {upload:.2f} s (id {image_id[:12]}), re-upload (hash + check) {again:.2f} s, "
              f"remote set_image {set_image:.2f} s", flush=True)
        times = {"client": [], "local": [], "overhead": [], "report": []}
        for centre in centres:
            for name, session in (("local", local), ("client", remote)):
                started = time.perf_counter()
                mask = session.add_point(centre)
                times[name].append(time.perf_counter() - started)
                if session is remote:
                    server_side = remote.last_server_seconds  # this click's, before the undo's
                session.undo()
            times["overhead"].append(times["client"][-1] - server_side["session"])
            times["report"].append(server_side["report"])
            if not np.array_equal(mask, local.add_point(centre)):
                raise SystemExit("the client's mask differs from the in-process one")
            local.undo()
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"per click: in-process median {med['local'] * 1000:.1f} ms, through the client {med['client'] * 1000:.1f} "
          f"ms; overhead (client time - the server session's own time, same click) median "
          f"{med['overhead'] * 1000:.1f} ms, min {min(times['overhead']) * 1000:.1f}, max "
          f"{max(times['overhead']) * 1000:.1f} ms, of which the server's delta {med['report'] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
