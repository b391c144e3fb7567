"""`samadapt3d bench --model litemedsam`: the TinyViT encoder's backends side by side on a real CT slice (`--batch`,
`NAME@4` candidates, OpenVINO hints), the box decoder on PyTorch vs OpenVINO (`--decoder`), the click masks of each
precision against fp32 (`--parity`), and a clinical-size session (`--session N`: the demo CT resampled to 512x512xN).

Encoder candidates are timed interleaved (one pass of each per round), so a loaded machine slows all of them
alike; the figure is the median per slice. Each candidate's embedding is compared with exact PyTorch fp32.
CPU time per slice (all threads) divided by the thread count estimates the wall time on an otherwise idle
machine. Speed is a benchmark figure, never a test.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..bench_table import print_rows
from ..device import resolve_device
from .encoders import OpenVINOEncoder, TorchEncoder, cpu_has_native_bf16, openvino_available, weights_digest


def _real_slices(count: int) -> list[np.ndarray]:
    from ..demo import load_demo_case

    volume, _ = load_demo_case()
    array = volume.array.astype(np.float32)  # [k, j, i]
    picks = np.linspace(array.shape[0] * 0.25, array.shape[0] * 0.75, count).round().astype(int)
    return [array[k] for k in picks]


class _Batched:
    """A candidate called with `size` copies of the slice per call (throughput per slice); returns the first."""

    def __init__(self, run: Callable, size: int) -> None:
        self.run, self.size = run, size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images.expand(self.size * images.shape[0], -1, -1, -1).contiguous())[: images.shape[0]]


def _split_batch(name: str) -> tuple[str, int]:
    """"openvino-fp32@4" -> ("openvino-fp32", 4): the candidate run on 4 slices per call."""
    base, _, size = name.partition("@")
    return base, int(size or 1)


def _candidates(model, device: torch.device, names: list[str], folder: Path) -> dict[str, Callable]:
    base = {name: _split_batch(name) for name in names}
    built = _base_candidates(model, device, {b for b, _ in base.values()}, folder)
    out: dict[str, Callable] = {"torch-fp32": built["torch-fp32"]}
    for name, (b, size) in base.items():
        if b in built:
            out[name] = built[b] if size == 1 else _Batched(built[b], size)
    return out


def _base_candidates(model, device: torch.device, names: set[str], folder: Path) -> dict[str, Callable]:
    encoder = model.image_encoder
    out: dict[str, Callable] = {"torch-fp32": TorchEncoder(encoder, "fp32")}
    if "torch-bf16" in names:
        out["torch-bf16"] = TorchEncoder(encoder, "bf16")
    if "torch-compile" in names:
        out["torch-compile"] = TorchEncoder(torch.compile(encoder), "fp32")
    if device.type == "cpu" and openvino_available():
        digest = weights_digest(encoder)
        for precision in ("fp32", "bf16"):
            if f"openvino-{precision}" in names:
                out[f"openvino-{precision}"] = OpenVINOEncoder(encoder, precision, model.image_size, digest, folder)
            if f"openvino-{precision}-throughput" in names:
                out[f"openvino-{precision}-throughput"] = OpenVINOEncoder(
                    encoder, precision, model.image_size, digest, folder, hint="THROUGHPUT")
    return out


def bench_encoders(args) -> list[tuple[str, str]]:
    from ..models import load_model

    device = resolve_device(args.device)
    model = load_model("litemedsam", device=device, precision="fp32")
    slices = _real_slices(args.slices)
    inputs = [model.preprocess_slice(s)[0][None].expand(args.batch, -1, -1, -1).contiguous().to(device)
              for s in slices]  # --batch: the slice repeated, timed per slice
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        runners = _candidates(model, device, args.candidates.split(","), Path(tmp))
        setup = time.perf_counter() - start
        times: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        outputs: dict[str, list[torch.Tensor]] = {name: [] for name in runners}
        with torch.inference_mode():
            for run in runners.values():  # warm-up (allocations, kernels, compilation)
                run(inputs[0])
            for _ in range(args.repeats):
                for x_index, x in enumerate(inputs):
                    for name, run in runners.items():
                        _sync(device)
                        t0, c0 = time.perf_counter(), time.process_time()
                        y = run(x)
                        _sync(device)
                        per_call = args.batch * _split_batch(name)[1]
                        times[name].append((time.perf_counter() - t0) / per_call)
                        cpu[name].append((time.process_time() - c0) / per_call)
                        if len(outputs[name]) < len(inputs):
                            outputs[name].append(y[:1].float().cpu())
    rows = [("machine", _machine(device)), ("setup (exports, compiles)", f"{setup:.1f} s"),
            ("batch", f"{args.batch} slice(s) per encoder call, times per slice")]
    for name in runners:
        err = max(float((a - b).abs().max()) for a, b in zip(outputs[name], outputs["torch-fp32"]))
        rows.append((name, f"{statistics.median(times[name]):.3f} s/slice median of {len(times[name])} "
                           f"(min {min(times[name]):.3f}), CPU {statistics.median(cpu[name]):.3f} s/slice; "
                           f"max |diff| to torch-fp32 {err:.2e}"))
    return rows


def bench_decoder(args) -> list[tuple[str, str]]:
    """The box decoder on PyTorch fp32 and on OpenVINO fp32, interleaved, on a real slice's embedding, for 1 box
    (a propagated slice) and 9 boxes (a click's candidates); max |diff| of logits and IoU."""
    from ..models import load_model
    from .decoders import BoxDecoderRunner

    device = resolve_device(args.device)
    model = load_model("litemedsam", device=device, precision="fp32")
    x, _ = model.preprocess_slice(_real_slices(1)[0])
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        embedding = model.embed(x[None].to(device))
        runner = BoxDecoderRunner(model.prompt_encoder, model.mask_decoder, tuple(embedding.shape[1:]),
                                  folder=Path(tmp))  # a fresh export, timed as setup
        rng = np.random.default_rng(0)
        rows = [("machine", _machine(device))]
        start = time.perf_counter()
        runner(embedding, torch.tensor([[10.0, 10.0, 100.0, 100.0]]))
        rows.append(("setup (export, compile)", f"{time.perf_counter() - start:.1f} s"))
        for count in (1, 9):
            lo = rng.uniform(0, 150, (count, 2))
            boxes = torch.tensor(np.concatenate([lo, lo + rng.uniform(10, 100, (count, 2))], 1), dtype=torch.float32)
            runs = {"torch-fp32": lambda: model.decode(embedding, boxes=boxes), "openvino-fp32": lambda: runner(embedding, boxes)}
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
            for _ in range(args.repeats * 3):
                for name, run in runs.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    run()
                    times[name].append((time.perf_counter() - t0, time.process_time() - c0))
            ref, fast = runs["torch-fp32"](), runs["openvino-fp32"]()
            err = (float((ref[0] - fast[0]).abs().max()), float((ref[1] - fast[1]).abs().max()))
            for name, t in times.items():
                rows.append((f"{count} box(es), {name}", f"{statistics.median(w for w, _ in t) * 1e3:.0f} ms median "
                             f"of {len(t)}, CPU {statistics.median(c for _, c in t) * 1e3:.0f} ms"))
            rows.append((f"{count} box(es), max |diff|", f"logits {err[0]:.1e}, IoU {err[1]:.1e}"))
    return rows


def bench_parity(args) -> list[tuple[str, str]]:
    """The demo's click for every structure of the real CT, run with exact fp32 and with each other precision;
    Dice of each mask to the fp32 mask (and to the labels)."""
    from ..demo import DEMO_CLICKS, dice, load_demo_case
    from ..models import load_model
    from ..session import InteractiveSession

    device = resolve_device(args.device)
    volume, truth = load_demo_case()
    model = load_model("litemedsam", device=device, precision="fp32")
    masks: dict[str, dict[str, np.ndarray]] = {}
    rows = [("machine", _machine(device))]
    for precision in ["fp32"] + [p for p in args.precisions.split(",") if p != "fp32"]:
        model.set_precision(precision)
        session = InteractiveSession(model)
        session.engine.embeddings._disk = None  # every precision embeds (and is timed) from scratch
        session.set_image(volume)
        start = time.perf_counter()
        masks[precision] = {}
        for name, ijk in DEMO_CLICKS.items():
            session.reset()
            masks[precision][name] = np.asarray(session.add_point(ijk, positive=True, space="ijk")) > 0
        elapsed = time.perf_counter() - start
        parts = []
        for name in DEMO_CLICKS:
            ref = dice(masks[precision][name], masks["fp32"][name])
            parts.append(f"{name} {ref:.3f} (labels {dice(masks[precision][name], truth[name]):.3f})")
        rows.append((f"{precision} = {model.backend()}", f"{elapsed:.0f} s for {len(DEMO_CLICKS)} clicks; Dice to fp32: "
                     + "; ".join(parts)))
    return rows


def clinical_volume(depth: int, side: int = 512, integer: bool = False):
    """The demo CT resampled (trilinear) to side x side x depth voxels, spacing scaled to match, with its labels;
    `integer`: rounded to int16, as a scanner stores a CT (the session then keeps no float32 copy of it)."""
    from ..demo import load_demo_case
    from ..volume import Volume

    volume, truth = load_demo_case()
    src = torch.from_numpy(volume.array.astype(np.float32))[None, None]  # [1, 1, k, j, i]
    array = torch.nn.functional.interpolate(src, size=(depth, side, side), mode="trilinear",
                                            align_corners=False)[0, 0].numpy()
    factors = np.asarray(volume.array.shape[::-1], float) / np.asarray((side, side, depth), float)
    spacing = tuple(float(s) * f for s, f in zip(volume.spacing, factors))
    labels = {}
    for name, mask in truth.items():
        m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
        labels[name] = torch.nn.functional.interpolate(m, size=(depth, side, side), mode="trilinear",
                                                       align_corners=False)[0, 0].numpy() > 0.5
    if integer:
        array = np.round(array).astype(np.int16)
    return Volume(array, spacing=spacing, origin=volume.origin, direction=volume.direction), labels, factors


class _Timed:
    """Wraps a model method: calls, wall and CPU seconds (all threads) spent in it."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls, self.wall, self.cpu = fn, 0, 0.0, 0.0

    def __call__(self, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.calls += 1
            self.wall += time.perf_counter() - t0
            self.cpu += time.process_time() - c0

    def take(self) -> str:
        out = f"{self.calls} calls, {self.wall:.1f} s ({self.cpu:.1f} CPU s)"
        self.calls, self.wall, self.cpu = 0, 0.0, 0.0
        return out


def bench_session(args) -> list[tuple[str, str]]:
    """A clinical-size session as the Slicer effect runs it: set_image, prepare(background=True) (outward from the
    middle slice), a first click at once (it pauses the prefetch, embeds its own slices, then the prefetch goes on
    from the clicked slice), the whole CT embedded, a warm click, a second session reading the on-disk cache;
    decoder and encoder calls per step, cache bytes per slice, peak RSS."""
    from ..demo import DEMO_CLICKS, dice
    from ..engines.embedding_cache import DiskEmbeddingStore
    from ..models import load_model
    from ..session import InteractiveSession

    device = resolve_device(args.device)
    model = load_model("litemedsam", device=device, precision=args.precision)
    volume, labels, factors = clinical_volume(args.session, integer=True)
    t0 = time.perf_counter()
    with torch.no_grad():  # export (first use only: kept in the cache folder) and compile, not a click's cost
        model.decode(model.embed(torch.zeros(1, 3, model.image_size, model.image_size)),
                     boxes=torch.tensor([[10.0, 10.0, 100.0, 100.0]]))
    setup = time.perf_counter() - t0
    decode, embed = _Timed(model.decode), _Timed(model.embed)
    model.decode, model.embed = decode, embed  # instance attributes: counted, nothing else changes
    rows = [("machine", _machine(device)),
            ("volume", f"{volume.array.shape[::-1]} voxels (i, j, k) of {volume.array.dtype}, "
                       f"encoder {model.backend()}"),
            ("setup (export or load, compile)", f"{setup:.1f} s")]

    def click_at(session, name: str) -> str:
        point = tuple(float((c + 0.5) / f - 0.5) for c, f in zip(DEMO_CLICKS[name], factors))
        shown: list[tuple[float, np.ndarray | None]] = []  # only the first two masks are kept (75 MiB each here)
        session.preview = lambda mask: shown.append((time.perf_counter() - t0, mask if len(shown) < 2 else None))
        t0, c0 = time.perf_counter(), time.process_time()
        mask = np.asarray(session.add_point(point, positive=True, space="ijk")) > 0
        out = (f"{time.perf_counter() - t0:.1f} s (CPU {time.process_time() - c0:.1f} s), Dice "
               f"{dice(mask, labels[name]):.3f}; decoder {decode.take()}; encoder {embed.take()}")
        session.preview = None
        if shown:
            out += f"; {len(shown)} previews, " + ", ".join(_preview_row(t, m, labels[name]) for t, m in shown[:2])
        return out

    with tempfile.TemporaryDirectory() as tmp:
        store = DiskEmbeddingStore(Path(tmp))
        session = InteractiveSession(model)
        session.engine.embeddings._disk = store
        session.set_image(volume)
        cache = session.engine.embeddings
        start = time.perf_counter()
        session.prepare(background=True)
        rows.append(("first click, right lung (prefetch running)", click_at(session, "right lung")))
        while cache.prefetching():
            time.sleep(0.2)
        count = sum(cache.cached(session.engine.default_axis(), k) for k in range(args.session))
        rows.append(("whole CT embedded (from prepare)", f"{time.perf_counter() - start:.1f} s, {count} of "
                     f"{args.session} slices in memory, {cache.used_bytes / max(count, 1) / 2**20:.2f} MiB per "
                     f"slice ({cache.used_bytes / 2**20:.0f} MiB); encoder {embed.take()}"))
        session.reset()
        rows.append(("warm click, left lung (all embedded)", click_at(session, "left lung")))
        rows.append(("peak RSS, this session (with the bench's CT copies and labels)", _peak_rss()))
        restarted = InteractiveSession(model)  # a new process would see the same disk store
        restarted.engine.embeddings._disk = store
        restarted.set_image(volume)
        t0 = time.perf_counter()
        restarted.engine.warm_up(axis=session.engine.default_axis())
        rows.append(("new session, disk cache", f"{time.perf_counter() - t0:.1f} s to load {args.session} slices, "
                     f"{restarted.engine.stats['embedded']} embedded"))
    rows.append(("peak RSS, with the restarted session (two caches)", _peak_rss()))
    if device.type == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"))
    return rows


def _preview_row(seconds: float, mask: np.ndarray, truth: np.ndarray) -> str:
    """When a preview came, the slices it spans and its Dice on those slices (what the user sees of it)."""
    from ..demo import dice

    planes = np.flatnonzero(mask.any(axis=(1, 2)))
    if planes.size == 0:
        return f"{seconds:.1f} s: empty"
    lo, hi = int(planes[0]), int(planes[-1]) + 1
    return f"{seconds:.1f} s: slices {lo}-{hi - 1}, Dice there {dice(mask[lo:hi], truth[lo:hi]):.3f}"


def _peak_rss() -> str:
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"{(rss if sys.platform == 'darwin' else rss * 1024) / 2**30:.2f} GiB (ru_maxrss)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine(device: torch.device) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"native bf16 {cpu_has_native_bf16()}, load average {load:.1f}), torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samadapt3d bench --model litemedsam", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam", choices=["litemedsam"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--slices", type=int, default=3, help="real CT slices per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each times every candidate on every slice)")
    parser.add_argument("--candidates", default="torch-fp32,torch-bf16,openvino-fp32,openvino-bf16",
                        help="comma-separated: torch-fp32, torch-bf16, torch-compile, openvino-fp32, openvino-bf16, "
                             "openvino-fp32-throughput, openvino-bf16-throughput; NAME@4: 4 slices per call")
    parser.add_argument("--batch", type=int, default=1, help="slices per encoder call (GPU throughput)")
    parser.add_argument("--parity", action="store_true",
                        help="instead: every demo structure's click with fp32 and --precisions, Dice to fp32")
    parser.add_argument("--decoder", action="store_true",
                        help="instead: the box decoder on PyTorch fp32 vs OpenVINO fp32 (1 and 9 boxes)")
    parser.add_argument("--precisions", default="auto,bf16", help="with --parity: precisions compared to fp32")
    parser.add_argument("--session", type=int, default=0, metavar="DEPTH",
                        help="instead: a session on the demo CT resampled to 512x512xDEPTH (issue: 300)")
    parser.add_argument("--precision", default="auto", help="with --session: the encoder precision")
    args = parser.parse_args(argv)
    rows = (bench_parity(args) if args.parity else bench_decoder(args) if args.decoder
            else bench_session(args) if args.session else bench_encoders(args))
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
