"""Command line: `samadapt3d segment | models | demo | bench`.

    samadapt3d segment IMAGE -o OUT [--model NAME_OR_PATH] [--point-ijk i,j,k]... [--negative-ijk i,j,k]...
        [--point-ras x,y,z]... [--negative-ras x,y,z]... [--point-lps x,y,z]... [--negative-lps x,y,z]...
        [--box-ijk i0,j0,k0,i1,j1,k1] [--seed-mask LABELS[:SEGMENT]] [--device auto|cpu|cuda|mps] [--overlay PNG]

Indices are in ITK order (i fastest, as SimpleITK's GetPixel); LPS as ITK, RAS as Slicer.
Every user error is printed as "samadapt3d: error: <message>" with exit status 1; nothing is written then.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError, SAMAdapt3DError

#: mask formats written as one file (so the write can be atomic)
OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha")
_POINT_OPTIONS = [(f"--{kind}-{space}", kind, space) for space in ("ijk", "ras", "lps") for kind in ("point", "negative")]


def _numbers(text: str, count: int, option: str) -> tuple[float, ...]:
    parts = [p for p in text.replace(" ", "").split(",") if p != ""]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(np.isfinite(values)):
        raise InputError(f"{option} expects {count} comma-separated numbers, got {text!r}")
    return values


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
    seg.add_argument("--quiet", action="store_true", help="no progress bar or summary")

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

    sub.add_parser("models", help="list the built-in model names and families")
    sub.add_parser("demo", help="run the demo (samadapt3d demo --help)", add_help=False)
    sub.add_parser("bench", help="run the benchmark (samadapt3d bench --help)", add_help=False)
    sub.add_parser("train", help="fine-tune adapters on labelled volumes (samadapt3d train --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in ("demo", "bench"):
            return _delegate(argv[0], argv[1:])
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
    from .session import InteractiveSession, box_to_index, check_finite, point_to_index
    from .volume import Volume

    output = Path(args.output)
    _output_suffix(output)
    _check_writable(output, "mask")
    overlay = Path(args.overlay) if args.overlay else None
    if overlay is not None:
        if overlay.suffix.lower() != ".png":
            raise InputError(f"--overlay {overlay} must end in .png")
        _check_writable(overlay, "overlay")

    # everything about the input is checked before the (slow) model load
    volume = Volume.from_file(args.image)
    check_finite(volume.array, f"{args.image}")
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
    if args.seed_mask is not None:
        seed = _read_seed(args.seed_mask, volume)
    if not positive and box is None and seed is None:
        raise InputError("nothing to segment: give at least one --point-ijk/--point-ras/--point-lps, a --box-ijk "
                         "or a --seed-mask")

    from .device import resolve_device
    from .models import load_model

    device = resolve_device(args.device)
    model = load_model(args.model, sam_checkpoint=args.sam_checkpoint, device=device)
    bar = _progress_bar(args.quiet)
    try:
        session = InteractiveSession(model, progress=bar.update_to if bar else None)
        session.set_image(volume)
        mask = session.segment(positive=positive, negative=negative, box=box, seed=seed)
    finally:
        if bar:
            bar.close()

    image = None
    if overlay is not None:
        first = ordered[0][1] if ordered else (np.add(*box) / 2 if box is not None else _centre(mask))
        from .overlay import render_overlay

        image = render_overlay(volume, mask, first, ordered)
    volume.save(output, mask.astype(np.uint8))
    if image is not None:
        from .overlay import save_png

        save_png(image, overlay)
    if not args.quiet:
        voxels = int(mask.sum())
        ml = voxels * float(np.prod(volume.spacing)) / 1000.0
        print(f"wrote {output}: {voxels} voxels ({ml:.2f} mL)" + (f"; overlay {overlay}" if overlay else ""))
    return 0


def auto_command(args) -> int:
    from .automatic import save_label_map, segment_all_classes
    from .device import resolve_device
    from .models import load_model
    from .session import check_finite
    from .volume import Volume

    output = Path(args.output)
    _output_suffix(output)
    _check_writable(output, "label map")
    if args.stride < 1:
        raise InputError(f"--stride must be at least 1, got {args.stride}")
    volume = Volume.from_file(args.image)
    check_finite(volume.array, f"{args.image}")
    model = load_model(args.model, sam_checkpoint=args.sam_checkpoint, device=resolve_device(args.device))
    bar = _progress_bar(args.quiet)
    try:
        labels, names = segment_all_classes(model, volume, stride=args.stride,
                                            progress=bar.update_to if bar else None)
    finally:
        if bar:
            bar.close()
    save_label_map(volume, labels, names, output)
    if not args.quiet:
        counts = np.bincount(labels.reshape(-1), minlength=len(names) + 1)
        print(f"wrote {output}: " + ", ".join(f"{name} {int(counts[n + 1])} voxels" for n, name in enumerate(names)))
    return 0


def _centre(mask: np.ndarray):
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return np.asarray(mask.shape[::-1]) // 2
    return idx.mean(axis=0)[::-1]


def _read_seed(spec: str, volume) -> np.ndarray:
    from .labels import read_mask

    path, segment = spec, None
    if not Path(spec).is_file() and ":" in spec:
        path, segment = spec.rsplit(":", 1)
    return read_mask(path, segment or None, reference=volume)


def _progress_bar(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    class _Bar(tqdm):
        def update_to(self, fraction: float, message: str) -> None:
            self.set_description_str(message, refresh=False)
            self.update(max(0.0, round(100.0 * fraction, 1) - self.n))

    return _Bar(total=100, unit="%", leave=False, disable=None, file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")


if __name__ == "__main__":
    sys.exit(main())
