"""PNG overlays a person can read at a glance (Pillow only): masks, every prompt, orientation and a legend.

Slices are shown in the radiological convention, whatever the file's direction: the volume is turned onto the
nearest LPS-aligned grid (SimpleITK's DICOMOrient, no resampling), so that
- axial: patient left on the image's right, anterior up;
- coronal: patient left on the image's right, superior up;
- sagittal: anterior on the left, superior up;
each panel carries its R/L, A/P, S/I marks. CT is shown in a CT window (lung W1500/L-600 for air-filled structures,
else soft tissue W400/L40); other images between their 1st and 99th percentiles. A click lying on the shown slice is a
cross; one on another slice is drawn where it projects, as a hollow circle; the box is drawn where it projects (solid
when the slice passes through it, dashed otherwise). Pixels are stretched by the voxel spacing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .volume import Volume

MASK_RGB = (255, 60, 40)
POSITIVE_RGB = (40, 220, 60)
NEGATIVE_RGB = (60, 140, 255)
BOX_RGB = (255, 220, 0)
TEXT_RGB = (255, 255, 0)
#: (width, level) in HU
SOFT_TISSUE_WINDOW = (400.0, 40.0)
LUNG_WINDOW = (1500.0, -600.0)
#: an image is taken for CT when it spans air to bone in HU
CT_AIR_HU, CT_BONE_HU = -500.0, 300.0
#: a structure whose median is below this is air-filled (lung): lung window
AIR_FILLED_HU = -400.0
MARGIN = 18  # pixels around each panel for the orientation marks
LEGEND_ROW = 18


@dataclass(frozen=True)
class Layer:
    """One structure drawn on the slices: a bool mask [k, j, i] on the volume's grid, its colour and legend text."""

    mask: np.ndarray
    rgb: tuple[int, int, int]
    label: str


@dataclass(frozen=True)
class _Oriented:
    """The volume (and its layers) on the nearest LPS-aligned grid: array [k, j, i] with i -> L, j -> P, k -> S."""

    image: np.ndarray
    masks: list[np.ndarray]
    spacing: np.ndarray  # (si, sj, sk) after orienting
    to_index: object  # original continuous ijk (n, 3) -> oriented continuous ijk (n, 3)


def _orient(volume: Volume, masks: Sequence[np.ndarray]) -> _Oriented:
    import SimpleITK as sitk

    image = sitk.DICOMOrient(volume.to_sitk(), "LPS")
    oriented_masks = [sitk.GetArrayFromImage(sitk.DICOMOrient(volume.to_sitk(np.asarray(m, np.uint8)), "LPS")) > 0
                      for m in masks]

    def to_index(ijk: np.ndarray) -> np.ndarray:
        lps = volume.index_to_physical(np.asarray(ijk, dtype=np.float64).reshape(-1, 3), "lps")
        return np.asarray([image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p)) for p in lps])

    return _Oriented(sitk.GetArrayFromImage(image), oriented_masks, np.asarray(image.GetSpacing()), to_index)


def choose_window(array: np.ndarray, masks: Sequence[np.ndarray] = ()) -> tuple[float, float]:
    """(low, high) grey range: a CT window when the image is CT (lung window when the masks are air-filled)."""
    data = np.asarray(array, dtype=np.float64)
    if data.size and data.min() <= CT_AIR_HU and data.max() >= CT_BONE_HU:
        inside = [data[m] for m in masks if np.any(m)]
        median = float(np.median(np.concatenate(inside))) if inside else 0.0
        width, level = LUNG_WINDOW if median < AIR_FILLED_HU else SOFT_TISSUE_WINDOW
        return level - width / 2, level + width / 2
    lo, hi = np.percentile(data, [1.0, 99.0]) if data.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _font(size: int = 13):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


# one view: the oriented axis held fixed, (row axis, flip rows), (column axis, flip columns), marks (top, bottom,
# left, right), name; axes are oriented ijk (0 = i -> L, 1 = j -> P, 2 = k -> S)
_VIEWS = {
    "axial": (2, (1, False), (0, False), ("A", "P", "R", "L")),
    "coronal": (1, (2, True), (0, False), ("S", "I", "R", "L")),
    "sagittal": (0, (2, True), (1, False), ("S", "I", "A", "P")),
}


def _panel(oriented: _Oriented, layers: Sequence[Layer], view: str, index: int, window, prompts_oriented,
           box_oriented, panel_size: int, alpha: float):
    from PIL import Image, ImageDraw

    fixed_axis, (row_axis, flip_rows), (col_axis, flip_cols), marks = _VIEWS[view]
    take = [slice(None)] * 3
    take[2 - fixed_axis] = index  # array order is [k, j, i]
    lo, hi = window
    grey = np.clip((oriented.image[tuple(take)].astype(np.float64) - lo) / (hi - lo), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for layer, mask in zip(layers, oriented.masks):
        m = mask[tuple(take)]
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(layer.rgb, dtype=np.float64)
    # the 2D array's rows / columns are the remaining array axes in [k, j, i] order: the larger ijk axis first
    if row_axis < col_axis:
        rgb = rgb.transpose(1, 0, 2)
    rows, cols = rgb.shape[:2]
    if flip_rows:
        rgb = rgb[::-1]
    if flip_cols:
        rgb = rgb[:, ::-1]
    height, width = rows * oriented.spacing[row_axis], cols * oriented.spacing[col_axis]
    scale = panel_size / max(height, width)
    out_w, out_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    tile = Image.fromarray(rgb.astype(np.uint8), "RGB").resize((out_w, out_h), Image.NEAREST)
    canvas = Image.new("RGB", (out_w + 2 * MARGIN, out_h + 2 * MARGIN), (0, 0, 0))
    canvas.paste(tile, (MARGIN, MARGIN))
    draw = ImageDraw.Draw(canvas)

    def to_pixel(ijk) -> tuple[float, float]:
        r, c = float(ijk[row_axis]), float(ijk[col_axis])
        r = rows - 1 - r if flip_rows else r
        c = cols - 1 - c if flip_cols else c
        return MARGIN + (c + 0.5) * out_w / cols, MARGIN + (r + 0.5) * out_h / rows

    if box_oriented is not None:
        lo_c, hi_c = box_oriented.min(axis=0), box_oriented.max(axis=0)
        (x0, y0), (x1, y1) = to_pixel(lo_c), to_pixel(hi_c)  # voxel centres; widened by half a voxel below
        x0, x1 = sorted((x0 - 0.5 * out_w / cols, x1 + 0.5 * out_w / cols))
        y0, y1 = sorted((y0 - 0.5 * out_h / rows, y1 + 0.5 * out_h / rows))
        through = lo_c[fixed_axis] - 0.5 <= index <= hi_c[fixed_axis] + 0.5
        _rectangle(draw, (x0, y0, x1, y1), BOX_RGB, dashed=not through)
    for kind, ijk in prompts_oriented:
        x, y = to_pixel(ijk)
        colour = POSITIVE_RGB if kind == "positive" else NEGATIVE_RGB
        if abs(float(ijk[fixed_axis]) - index) <= 0.5:
            draw.line([(x - 6, y), (x + 6, y)], fill=colour, width=2)
            draw.line([(x, y - 6), (x, y + 6)], fill=colour, width=2)
        else:  # on another slice: where it projects
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=colour, width=2)
    font = _font()
    top, bottom, left, right = marks
    w, h = canvas.size
    draw.text((w / 2, 2), top, fill=TEXT_RGB, font=font, anchor="mt")
    draw.text((w / 2, h - 2), bottom, fill=TEXT_RGB, font=font, anchor="mb")
    draw.text((3, h / 2), left, fill=TEXT_RGB, font=font, anchor="lm")
    draw.text((w - 3, h / 2), right, fill=TEXT_RGB, font=font, anchor="rm")
    title = f"{view} {index + 1}/{oriented.image.shape[2 - fixed_axis]}"
    small = _font(11)
    draw.rectangle(draw.textbbox((MARGIN + 3, MARGIN + 2), title, font=small), fill=(0, 0, 0))  # readable on bone
    draw.text((MARGIN + 3, MARGIN + 2), title, fill=TEXT_RGB, font=small)
    return canvas


def _rectangle(draw, xyxy, colour, dashed: bool, dash: float = 5.0) -> None:
    x0, y0, x1, y1 = xyxy
    if not dashed:
        draw.rectangle(xyxy, outline=colour, width=2)
        return
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay), 1.0)
        for t in np.arange(0.0, length, 2 * dash):
            u, v = t / length, min(t + dash, length) / length
            draw.line([(ax + (bx - ax) * u, ay + (by - ay) * u), (ax + (bx - ax) * v, ay + (by - ay) * v)],
                      fill=colour, width=1)


def _legend(width: int, layers: Sequence[Layer], prompt_kinds: set[str], has_box: bool):
    from PIL import Image, ImageDraw

    entries = [(layer.rgb, "fill", layer.label) for layer in layers]
    if "positive" in prompt_kinds:
        entries.append((POSITIVE_RGB, "cross", "click (o: on another slice)"))
    if "negative" in prompt_kinds:
        entries.append((NEGATIVE_RGB, "cross", "background click"))
    if has_box:
        entries.append((BOX_RGB, "box", "box (dashed: outside this slice)"))
    font = _font(12)
    per_row = max(1, width // 230)
    rows = (len(entries) + per_row - 1) // per_row
    legend = Image.new("RGB", (width, 6 + rows * LEGEND_ROW), (0, 0, 0))
    draw = ImageDraw.Draw(legend)
    for n, (rgb, kind, text) in enumerate(entries):
        x, y = 8 + (n % per_row) * (width // per_row), 4 + (n // per_row) * LEGEND_ROW
        if kind == "fill":
            draw.rectangle([x, y + 2, x + 12, y + 12], fill=rgb)
        elif kind == "cross":
            draw.line([(x, y + 7), (x + 12, y + 7)], fill=rgb, width=2)
            draw.line([(x + 6, y + 1), (x + 6, y + 13)], fill=rgb, width=2)
        else:
            draw.rectangle([x, y + 2, x + 12, y + 12], outline=rgb, width=2)
        draw.text((x + 18, y + 1), text, fill=(255, 255, 255), font=font)
    return legend


def _sheet(panels, legend):
    from PIL import Image

    gap = 4
    width = max(sum(p.width for p in panels) + gap * (len(panels) - 1), legend.width)
    height = max(p.height for p in panels)
    sheet = Image.new("RGB", (width, height + legend.height), (0, 0, 0))
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + gap
    sheet.paste(legend, (0, height))
    return sheet


def render_views(volume: Volume, layers: Sequence[Layer], point_ijk, prompts=(), box=None, panel_size: int = 320,
                 alpha: float = 0.45, views: Sequence[tuple[str, float]] | None = None):
    """A PIL image: axial, coronal and sagittal slices through `point_ijk` (original i, j, k), or the given
    (view, oriented index) panels; every prompt ((kind, ijk) pairs) and the box ((lo, hi) ijk) drawn; a legend."""
    oriented = _orient(volume, [layer.mask for layer in layers])
    window = choose_window(volume.array, [layer.mask for layer in layers])
    point = oriented.to_index(point_ijk)[0]
    size = oriented.image.shape[::-1]
    centre = [int(np.clip(np.floor(v + 0.5), 0, n - 1)) for v, n in zip(point, size)]
    prompts_oriented = [(kind, oriented.to_index(ijk)[0]) for kind, ijk in prompts]
    box_oriented = None
    if box is not None:
        lo, hi = (np.asarray(c, dtype=np.float64) for c in box)
        corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]] for a in (0, 1) for b in (0, 1)
                            for c in (0, 1)])
        box_oriented = oriented.to_index(corners)
    if views is None:
        views = [(name, centre[_VIEWS[name][0]]) for name in ("axial", "coronal", "sagittal")]
    panels = [_panel(oriented, layers, name, int(index), window, prompts_oriented, box_oriented, panel_size, alpha)
              for name, index in views]
    width = sum(p.width for p in panels) + 4 * (len(panels) - 1)
    legend = _legend(width, layers, {kind for kind, _ in prompts}, box is not None)
    return _sheet(panels, legend)


def render_overlay(volume: Volume, mask: np.ndarray, point_ijk, prompts=(), box=None, name: str = "mask",
                   panel_size: int = 320, alpha: float = 0.45):
    """The `segment --overlay` picture: the three slices through `point_ijk` with the mask and every prompt."""
    label = f"{name} ({int(np.count_nonzero(mask))} voxels)"
    return render_views(volume, [Layer(np.asarray(mask, dtype=bool), MASK_RGB, label)], point_ijk, prompts, box,
                        panel_size, alpha)


def save_png(image, path: str | os.PathLike) -> None:
    """Write atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
