"""Command line: `samadapt3d segment | models | demo | bench`.

    samadapt3d segment IMAGE -o OUT [--model NAME_OR_PATH] [--point-ijk i,j,k]... [--negative-ijk i,j,k]...
        [--point-ras x,y,z]... [--negative-ras x,y,z]... [--point-lps x,y,z]... [--negative-lps x,y,z]...
        [--box-ijk i0,j0,k0,i1,j1,k1] [--seed-mask LABELS[:SEGMENT]] [--device auto|cpu|cuda|mps] [--overlay PNG]

Indices are in ITK order (i fastest, as SimpleITK's GetPixel); LPS as ITK, RAS as Slicer.
Every user error is printed as "samadapt3d: error: <message>" with exit status 1; nothing is written then.
"""
from __future__ import annotations

import os
import signal
import sys
import threading


def _interrupted_early(signum, frame) -> None:
    # Ctrl-C before main() runs (while numpy / torch import): one line, no traceback; nothing was written yet
    sys.stderr.write("samadapt3d: interrupted\n")
    os._exit(130)


def _is_the_program() -> bool:
    """Run as `samadapt3d` / `python -m samadapt3d[.cli]`, not imported by other code (tests, Slicer)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name, folder = os.path.basename(argv0), os.path.basename(os.path.dirname(argv0))
    return (__name__ == "__main__" or os.path.splitext(name)[0] in ("samadapt3d", "samadapt3d-script")
            or (name in ("__main__.py", "cli.py") and folder == "samadapt3d"))


if _is_the_program() and threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_early)

import argparse  # noqa: E402
import importlib  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from . import __version__  # noqa: E402
from .errors import InputError, SAMAdapt3DError  # noqa: E402
from .image_files import DEFAULT_MAX_IMAGE_MB, MAX_IMAGE_MB_ENV, MAX_IMAGE_MB_OPTION  # noqa: E402

#: mask formats written as one file (so the write can be atomic)
OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha")
_POINT_OPTIONS = [(f"--{kind}-{space}", kind, space) for space in ("ijk", "ras", "lps") for kind in ("point", "negative")]


#: a plain decimal number (no `1_0`, hex, nan or inf, which float() would take)
_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")


def _numbers(text: str, count: int, option: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    values = tuple(float(p) for p in parts) if all(_DECIMAL.match(p) for p in parts) else ()
    if len(values) != count or not all(np.isfinite(values)):
        raise InputError(f"{option} expects {count} comma-separated numbers, got {text!r}")
    return values


def _model_options(items: list[str]) -> dict[str, str]:
    """--model-option KEY=VALUE pairs; the family's loader checks the names and values."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--model-option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samadapt3d", description="Prompted 3D segmentation with SAM-style models.")
    parser.add_argument("--version", action="version", version=f"samadapt3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment one structure of an image file from prompts",
                         description="Segment one structure from point / box prompts; writes a 0/1 mask with "
                                     "the input's size, spacing, origin and direction.")
    seg.add_argument("image", help="input image (.nii, .nii.gz, .nrrd, .mha, ...)")
    seg.add_argument("-o", "--output", required=True, help=f"output mask ({', '.join(OUTPUT_SUFFIXES)})")
    seg.add_argument("--model", default=None, help="built-in model name or weight file (default: %(default)s -> "
                                                   "models.DEFAULT_MODEL)")
    seg.add_argument("--sam-checkpoint", default=None, help="base SAM weights, for families that need them")
    seg.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                     help="a setting of the model file's family, e.g. Med-SA's chunk=96 (docs/FAMILIES.md); repeatable")
    seg.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                     help="LiteMedSAM encoder: auto (default: OpenVINO fp32 on a CPU, same masks), fp32 (exact "
                          "PyTorch) or bf16 (faster, masks slightly different; docs/LITEMEDSAM.md)")
    for option, kind, space in _POINT_OPTIONS:
        what = "foreground" if kind == "point" else "background"
        where = "voxel index i,j,k (ITK order)" if space == "ijk" else f"{space.upper()} point x,y,z in mm"
        seg.add_argument(option, action="append", default=[], metavar="A,B,C", help=f"{what} click: {where}; repeatable")
    seg.add_argument("--box-ijk", default=None, metavar="I0,J0,K0,I1,J1,K1", help="3D box, inclusive voxel corners")
    seg.add_argument("--seed-mask", default=None, metavar="LABELS[:SEGMENT]",
                     help="start from an existing mask / label file / .seg.nrrd (optionally one segment by name "
                          "or label value) and refine it with the prompts")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    seg.add_argument("--overlay", default=None, metavar="PNG", help="also write a PNG of the three slices through "
                                                                    "the first prompt with the mask drawn")
    seg.add_argument("--name", default=None, help="segment name written to a .seg.nrrd output (default: the "
                                                  "output's file name, liver.seg.nrrd -> liver)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    seg.add_argument(MAX_IMAGE_MB_OPTION, type=float, default=None, metavar="MB",
                     help=f"refuse images that declare more voxel data than this (default: ${MAX_IMAGE_MB_ENV} or "
                          f"{DEFAULT_MAX_IMAGE_MB:g})")

    auto = sub.add_parser("auto", help="segment every class of a multi-class model (SAMed, MA-SAM)",
                          description="Run a prompt-free multi-class model over the whole volume; writes a label "
                                      "map (a .seg.nrrd gets one named segment per class).")
    auto.add_argument("image", help="input image (.nii, .nii.gz, .nrrd, .mha, ...)")
    auto.add_argument("-o", "--output", required=True, help=f"output label map ({', '.join(OUTPUT_SUFFIXES)})")
    auto.add_argument("--model", required=True, help="weight file of a multi-class model")
    auto.add_argument("--sam-checkpoint", default=None, help="base SAM weights, for families that need them")
    auto.add_argument("--stride", type=int, default=1, help="slice stride of the sliding window (default: 1)")
    auto.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    auto.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    auto.add_argument(MAX_IMAGE_MB_OPTION, type=float, default=None, metavar="MB",
                     help=f"refuse images that declare more voxel data than this (default: ${MAX_IMAGE_MB_ENV} or "
                          f"{DEFAULT_MAX_IMAGE_MB:g})")

    sub.add_parser("models", help="list the built-in model names and families")
    sub.add_parser("demo", help="run the demo (samadapt3d demo --help)", add_help=False)
    sub.add_parser("bench", help="run the benchmark (samadapt3d bench --help)", add_help=False)
    sub.add_parser("evaluate", help="the CVPR 2025 interactive protocol on labelled volumes (samadapt3d evaluate "
                   "--help)", add_help=False)
    sub.add_parser("train", help="fine-tune adapters on labelled volumes (samadapt3d train --help)", add_help=False)
    sub.add_parser("serve", help="serve sessions over HTTP for Slicer or remote use (samadapt3d serve --help)",
                   add_help=False)
    return parser


class _Terminated(BaseException):
    """SIGTERM / SIGHUP: unwinds like Ctrl-C, so that temporary files are removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame) -> None:
    raise _Terminated(signum)


def _install_signal_handlers() -> dict:
    """Ctrl-C raises KeyboardInterrupt again (the early handler exits at once); SIGTERM / SIGHUP unwind."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    if signal.getsignal(signal.SIGINT) is _interrupted_early:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            previous[getattr(signal, name)] = signal.signal(getattr(signal, name), _terminate)
    return previous


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = _install_signal_handlers()
    try:
        if argv and argv[0] in ("demo", "bench", "evaluate"):
            return _delegate(argv[0], argv[1:])
        if argv and argv[0] == "serve":
            return _delegate("server", argv[1:])
        if argv and argv[0] == "train":
            from .training.cli import main as train_main

            return train_main(argv[1:])
        parser = build_parser()
        args = parser.parse_args(_join_negative_values(argv))
        if args.command == "segment":
            return segment_command(args)
        if args.command == "auto":
            return auto_command(args)
        if args.command == "models":
            return models_command()
        parser.print_help()
        return 2
    except SAMAdapt3DError as exc:
        print(f"samadapt3d: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("samadapt3d: interrupted", file=sys.stderr)
        return 130
    except _Terminated as exc:
        name = signal.Signals(exc.signum).name
        print(f"samadapt3d: stopped by {name} (no partial file is left)", file=sys.stderr)
        return 128 + exc.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_VALUE_OPTIONS = {option for option, _, _ in _POINT_OPTIONS} | {"--box-ijk"}
_NUMBER_LIST = re.compile(r"^-[0-9.]")


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--point-ras -12.5,3,4` -> `--point-ras=-12.5,3,4` (argparse would take the value for an option)."""
    out, n = [], 0
    while n < len(argv):
        if argv[n] in _VALUE_OPTIONS and n + 1 < len(argv) and _NUMBER_LIST.match(argv[n + 1]):
            out.append(f"{argv[n]}={argv[n + 1]}")
            n += 2
        else:
            out.append(argv[n])
            n += 1
    return out


def _delegate(name: str, argv: list[str]) -> int:
    module_name = f"samadapt3d.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise SAMAdapt3DError(f"`samadapt3d {name}` needs the Python package {exc.name!r}, which is not "
                                  f"installed: {exc}") from exc
        raise SAMAdapt3DError(f"`samadapt3d {name}` is not available in this installation "
                              f"({module_name} is missing)") from exc
    result = module.main(argv)
    return int(result or 0)


def models_command() -> int:
    from .models import DEFAULT_MODEL, families

    specs = families()
    if not specs:
        print("no model families are installed")
        return 0
    for spec in specs:
        names = ", ".join(sorted(spec.builtin_names)) or "(weight files only)"
        print(f"{spec.name}: {names}" + (f"  - {spec.description}" if spec.description else ""))
    print(f"default model: {DEFAULT_MODEL}")
    return 0


def _output_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(OUTPUT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise InputError(f"output {path} must end in one of {', '.join(OUTPUT_SUFFIXES)}")


def _check_writable(path: Path, what: str) -> None:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise InputError(f"cannot write the {what} {path}: folder {parent} does not exist")
    if path.is_dir():
        raise InputError(f"cannot write the {what} {path}: it is a folder")


def segment_command(args) -> int:
    from .session import InteractiveSession, box_to_index, point_to_index

    output = Path(args.output)
    _output_suffix(output)
    _check_writable(output, "mask")
    overlay = Path(args.overlay) if args.overlay else None
    if overlay is not None:
        if overlay.suffix.lower() != ".png":
            raise InputError(f"--overlay {overlay} must end in .png")
        _check_writable(overlay, "overlay")
    if args.name is not None and not args.name.strip():
        raise InputError("--name must not be empty")
    seed_path, seed_segment = _seed_spec(args.seed_mask) if args.seed_mask is not None else (None, None)
    inputs = [Path(args.image)] + ([Path(seed_path)] if seed_path else [])
    _check_not_an_input(output, inputs)
    if overlay is not None:
        _check_not_an_input(overlay, inputs + [output])

    # everything about the input is checked before the (slow) model load
    volume = _read_image(args.image, args.max_image_mb)
    positive, negative, ordered = [], [], []
    for option, kind, space in _POINT_OPTIONS:
        for text in getattr(args, option[2:].replace("-", "_")):
            ijk = point_to_index(volume, _numbers(text, 3, option), space)
            (positive if kind == "point" else negative).append(ijk)
            ordered.append(("positive" if kind == "point" else "negative", ijk))
    box = None
    if args.box_ijk is not None:
        values = _numbers(args.box_ijk, 6, "--box-ijk")
        box = box_to_index(volume, values[:3], values[3:], "ijk")
    seed = None
    if seed_path is not None:
        seed = _read_seed(seed_path, seed_segment, volume, args.max_image_mb)
    if not positive and box is None and seed is None:
        raise InputError("nothing to segment: give at least one --point-ijk/--point-ras/--point-lps, a --box-ijk "
                         "or a --seed-mask")

    from .device import resolve_device
    from .models import load_model

    device = resolve_device(args.device)
    progress = _progress(args.quiet)
    try:
        progress.phase("loading the model")
        model = load_model(args.model, sam_checkpoint=args.sam_checkpoint, device=device,
                           options=_model_options(args.model_option), precision=args.precision)
        progress(1.0, "model loaded")
        progress.phase("preparing the image")
        session = InteractiveSession(model, progress=progress)
        session.set_image(volume)
        progress.phase("segmenting")
        mask = session.segment(positive=positive, negative=negative, box=box, seed=seed)
        progress.phase("writing")
        image = None
        if overlay is not None:
            first = ordered[0][1] if ordered else (np.add(*box) / 2 if box is not None else _centre(mask))
            from .overlay import render_overlay

            image = render_overlay(volume, mask, first, ordered, box=box, name=_segment_name(output, args.name))
        _save_mask(volume, mask, output, args.name)
        progress(0.9 if image is not None else 1.0, f"wrote {output.name}")
        if image is not None:
            from .overlay import save_png

            save_png(image, overlay)
            progress(1.0, f"wrote {overlay.name}")
    finally:
        progress.close()
    if not args.quiet:
        voxels = int(mask.sum())
        ml = voxels * float(np.prod(volume.spacing)) / 1000.0
        print(f"wrote {output}: {voxels} voxels ({ml:.2f} mL)" + (f"; overlay {overlay}" if overlay else ""))
    return 0


def auto_command(args) -> int:
    from .automatic import save_label_map, segment_all_classes
    from .device import resolve_device
    from .models import load_model

    output = Path(args.output)
    _output_suffix(output)
    _check_writable(output, "label map")
    if args.stride < 1:
        raise InputError(f"--stride must be at least 1, got {args.stride}")
    _check_not_an_input(output, [Path(args.image)])
    volume = _read_image(args.image, args.max_image_mb)
    device = resolve_device(args.device)
    progress = _progress(args.quiet)
    try:
        progress.phase("loading the model")
        model = load_model(args.model, sam_checkpoint=args.sam_checkpoint, device=device)
        progress(1.0, "model loaded")
        progress.phase("segmenting every class")
        labels, names = segment_all_classes(model, volume, stride=args.stride, progress=progress)
        progress.phase("writing")
        save_label_map(volume, labels, names, output)
        progress(1.0, f"wrote {output.name}")
    finally:
        progress.close()
    if not args.quiet:
        counts = np.bincount(labels.reshape(-1), minlength=len(names) + 1)
        print(f"wrote {output}: " + ", ".join(f"{name} {int(counts[n + 1])} voxels" for n, name in enumerate(names)))
    return 0


def _save_mask(volume, mask: np.ndarray, output: Path, name: str | None) -> None:
    """A 0/1 mask; a .seg.nrrd gets Slicer segment metadata (name, colour, extent) as `auto` writes it."""
    if not output.name.lower().endswith(".seg.nrrd"):
        volume.save(output, mask.astype(np.uint8))
        return
    from .automatic import save_label_map

    save_label_map(volume, mask.astype(np.uint8), (_segment_name(output, name),), output)


def _segment_name(output: Path, name: str | None) -> str:
    """--name, else the output's name without its suffix (liver.seg.nrrd -> liver)."""
    if name is not None:
        return name.strip()
    lowered = output.name.lower()
    suffix = max((s for s in OUTPUT_SUFFIXES if lowered.endswith(s)), key=len, default="")
    return output.name[: len(output.name) - len(suffix)] or "mask"


def _centre(mask: np.ndarray):
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return np.asarray(mask.shape[::-1]) // 2
    return idx.mean(axis=0)[::-1]


def _seed_spec(spec: str) -> tuple[str, str | None]:
    """`--seed-mask FILE[:SEGMENT]` -> (file, segment or None); `FILE:` (an empty name) is refused."""
    if Path(spec).is_file() or ":" not in spec:
        return spec, None
    path, segment = spec.rsplit(":", 1)
    if not segment.strip():
        raise InputError(f"--seed-mask {spec!r}: the segment name after ':' is empty; give a name or label value, "
                         "or leave out the ':' to use every segment")
    return path, segment.strip()


def _read_seed(path: str, segment: str | None, volume, max_mb: float | None) -> np.ndarray:
    from .image_files import native_stderr_silenced
    from .labels import mask_on_grid, read_labels

    with native_stderr_silenced():
        labels = read_labels(path, max_mb)
    mask = labels.mask(segment)
    what = f"segment {segment!r} of {path}" if segment is not None else f"the seed mask {path}"
    if not mask.any():
        raise InputError(f"{what} is empty: nothing to refine")
    moved = mask_on_grid(mask, labels.grid, volume)
    if not moved.any():
        def where(grid) -> str:
            return f"size {grid.size_ijk}, origin {tuple(round(float(v), 2) for v in grid.origin)}"

        raise InputError(f"{what} does not overlap the image: its {int(mask.sum())} voxels lie outside it "
                         f"(mask grid {where(labels.grid)}; image {where(volume)})")
    return moved


#: slices narrower than this fraction of their length shrink to nothing when a model resizes them (256 px and up)
MAX_SLICE_ASPECT = 128


def _read_image(path: str, max_mb: float | None):
    """The input volume, with every check that needs only the image (before the slow model load)."""
    from .image_files import native_stderr_silenced
    from .session import check_finite
    from .volume import Volume, check_float32_range

    with native_stderr_silenced():
        volume = Volume.from_file(path, max_mb)
    check_finite(volume.array, f"{path}")
    check_float32_range(volume.array, f"{path}")
    spacing_kji = tuple(volume.spacing[::-1])
    slicing = max(range(3), key=lambda a: (spacing_kji[a], -a))  # the acquisition axis, ties towards k
    plane = [n for a, n in enumerate(volume.array.shape) if a != slicing]
    if max(plane) > MAX_SLICE_ASPECT * min(plane):
        raise InputError(f"{path}: its slices of {plane[1]} x {plane[0]} voxels are too thin for the models (which "
                         f"resize the longer side to 256 pixels or more); the shorter side must be at least "
                         f"1/{MAX_SLICE_ASPECT} of the longer")
    low, high = np.min(volume.array), np.max(volume.array)
    if low == high:
        print(f"samadapt3d: warning: {path} is constant (every voxel is {float(low):g}): the mask will not follow "
              "any structure", file=sys.stderr)
    return volume


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_not_an_input(output: Path, inputs: list[Path]) -> None:
    """An output must never replace an input: same path, symlink or hard link (checked before the model loads)."""
    for source in inputs:
        if _same_file(output, source) or os.path.realpath(output) == os.path.realpath(source):
            raise InputError(f"output {output} is the input {source}: choose another output name")


class _Silent:
    """--quiet: the progress interface, saying nothing."""

    def phase(self, name: str) -> "_Silent":
        return self

    def __call__(self, fraction: float, message: str = "") -> None:
        pass

    def close(self) -> None:
        pass


def _progress(quiet: bool):
    """A bar on stderr when it is a terminal (cleared before any error); else plain lines on stdout, so that stderr
    holds only the one-line error (see samadapt3d.progress)."""
    if quiet:
        return _Silent()
    from .progress import Progress

    return Progress(sys.stderr) if sys.stderr.isatty() else Progress(sys.stdout, tty=False)


if __name__ == "__main__":
    sys.exit(main())
