"""A PNG of the three index-space slices through a point with the mask drawn on them (Pillow only).

Panels, left to right: the k slice (rows j, columns i), the j slice and the i slice (rows k, drawn
with k increasing upward). Pixels are stretched by the voxel spacing so anatomy keeps its shape.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .volume import Volume

MASK_RGB = (255, 60, 40)
POSITIVE_RGB = (40, 220, 60)
NEGATIVE_RGB = (60, 140, 255)


def _window(array: np.ndarray) -> tuple[float, float]:
    data = np.asarray(array, dtype=np.float64)
    lo, hi = np.percentile(data, [1.0, 99.0]) if data.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    return float(lo), float(hi if hi > lo else lo + 1.0)


def render_overlay(volume: Volume, mask: np.ndarray, point_ijk, prompts=(), panel_size: int = 320, alpha: float = 0.45):
    """A PIL image of the three slices through `point_ijk` (i, j, k). `prompts`: (kind, ijk) pairs."""
    from PIL import Image, ImageDraw

    i, j, k = (int(np.clip(np.floor(v + 0.5), 0, n - 1)) for v, n in zip(point_ijk, volume.size_ijk))
    lo, hi = _window(volume.array)
    si, sj, sk = volume.spacing
    # (2D image, 2D mask, (row spacing, column spacing), flip rows, axes of (row, col) in ijk, fixed axis)
    panels = [
        (volume.array[k], mask[k], (sj, si), False, (1, 0), (2, k)),
        (volume.array[:, j, :], mask[:, j, :], (sk, si), True, (2, 0), (1, j)),
        (volume.array[:, :, i], mask[:, :, i], (sk, sj), True, (2, 1), (0, i)),
    ]
    tiles = []
    for image2d, mask2d, (srow, scol), flip, (row_axis, col_axis), (fixed_axis, fixed) in panels:
        grey = np.clip((np.asarray(image2d, dtype=np.float64) - lo) / (hi - lo), 0, 1) * 255
        rgb = np.repeat(grey[..., None], 3, axis=2)
        m = np.asarray(mask2d, dtype=bool)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(MASK_RGB, dtype=np.float64)
        if flip:
            rgb = rgb[::-1]
        rows, cols = rgb.shape[:2]
        height, width = rows * srow, cols * scol
        scale = panel_size / max(height, width)
        out_w, out_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
        tile = Image.fromarray(rgb.astype(np.uint8), "RGB").resize((out_w, out_h), Image.NEAREST)
        draw = ImageDraw.Draw(tile)
        for kind, ijk in prompts:
            ijk = np.asarray(ijk, dtype=np.float64)
            if abs(ijk[fixed_axis] - fixed) > 0.5:
                continue
            r = ijk[row_axis] if not flip else rows - 1 - ijk[row_axis]
            x, y = (ijk[col_axis] + 0.5) * out_w / cols, (r + 0.5) * out_h / rows
            colour = POSITIVE_RGB if kind == "positive" else NEGATIVE_RGB
            draw.line([(x - 5, y), (x + 5, y)], fill=colour, width=2)
            draw.line([(x, y - 5), (x, y + 5)], fill=colour, width=2)
        draw.text((4, 2), f"{'ijk'[fixed_axis]}={fixed}", fill=(255, 255, 0))
        tiles.append(tile)
    gap = 4
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)))
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + gap
    return canvas


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
