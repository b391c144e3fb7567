"""Outputs of `samadapt3d evaluate`: results.csv (one row per case and class), steps.csv (one row per step),
summary.json (means per class and overall) and dice_per_step.png (mean Dice per step, one line per class,
drawn with PIL so that no plotting package is needed)."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import Box, Click, ObjectResult


@dataclass
class Row:
    case: str
    label: str
    result: ObjectResult
    voxels: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"case": self.case, "class": self.label, "voxels": self.voxels}
        for n, step in enumerate(self.result.steps):
            out[f"dice_{n}"] = round(step.dice, 6)
        for n, step in enumerate(self.result.steps):
            out[f"nsd_{n}"] = round(step.nsd, 6)
        for n, step in enumerate(self.result.steps):
            out[f"seconds_{n}"] = round(step.seconds, 4)
        out.update(dsc_auc=round(self.result.dsc_auc, 6), nsd_auc=round(self.result.nsd_auc, 6),
                   final_dice=round(self.result.final_dice, 6), final_nsd=round(self.result.final_nsd, 6))
        return out

    def step_dicts(self) -> list[dict[str, Any]]:
        rows = []
        for n, step in enumerate(self.result.steps):
            p = step.prompt
            kind = "box" if isinstance(p, Box) else "none" if p is None else ("positive" if p.positive else "negative")
            where = (f"{p.lo_kji}-{p.hi_kji}" if isinstance(p, Box) else str(p.kji) if isinstance(p, Click) else "")
            rows.append({"case": self.case, "class": self.label, "step": n, "prompt": kind, "kji": where,
                         "dice": round(step.dice, 6), "nsd": round(step.nsd, 6), "seconds": round(step.seconds, 4)})
        return rows


def summarise(rows: list[Row], config: dict[str, Any]) -> dict[str, Any]:
    def means(group: list[Row]) -> dict[str, Any]:
        steps = len(group[0].result.steps)
        return {
            "cases": len(group),
            "final_dice": float(np.mean([r.result.final_dice for r in group])),
            "final_nsd": float(np.mean([r.result.final_nsd for r in group])),
            "dsc_auc": float(np.mean([r.result.dsc_auc for r in group])),
            "nsd_auc": float(np.mean([r.result.nsd_auc for r in group])),
            "dice_per_step": [float(np.mean([r.result.steps[n].dice for r in group])) for n in range(steps)],
            "nsd_per_step": [float(np.mean([r.result.steps[n].nsd for r in group])) for n in range(steps)],
            "seconds_per_step": [float(np.mean([r.result.steps[n].seconds for r in group])) for n in range(steps)],
            "largest_drop": float(max((0.0, *[r.result.steps[n - 1].dice - r.result.steps[n].dice
                                               for r in group for n in range(1, steps)]))),
        }

    labels = sorted({r.label for r in rows})
    return {"config": config, "overall": means(rows) if rows else None,
            "classes": {label: means([r for r in rows if r.label == label]) for label in labels}}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv_text(dicts: list[dict[str, Any]]) -> str:
    import io

    buffer = io.StringIO()
    if dicts:
        writer = csv.DictWriter(buffer, fieldnames=list(dicts[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(dicts)
    return buffer.getvalue()


def write_outputs(out: Path, rows: list[Row], summary: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.csv", out / "steps.csv", out / "summary.json", out / "dice_per_step.png"]
    _write_atomic(paths[0], _csv_text([r.to_dict() for r in rows]))
    _write_atomic(paths[1], _csv_text([s for r in rows for s in r.step_dicts()]))
    _write_atomic(paths[2], json.dumps(summary, indent=2) + "\n")
    plot_dice_per_step(summary, paths[3])
    return paths


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_dice_per_step(summary: dict[str, Any], path: Path, size: tuple[int, int] = (720, 420)) -> None:
    """Mean Dice per step (x: box / first click, then clicks 1..n; y: 0..1), one line per class."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 50, 190, 20, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    draw.rectangle([x0, y1, x1, y0], outline="black")
    classes = summary["classes"]
    steps = max((len(c["dice_per_step"]) for c in classes.values()), default=1)
    first = "click" if summary["config"].get("clicks_only") else "box"

    def to_xy(n: int, value: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * n / max(steps - 1, 1), y0 - (y0 - y1) * float(value)

    for tick in range(0, 11, 2):
        _, y = to_xy(0, tick / 10)
        draw.line([x0 - 4, y, x0, y], fill="black")
        draw.text((x0 - 34, y - 6), f"{tick / 10:.1f}", fill="black")
    for n in range(steps):
        x, _ = to_xy(n, 0)
        draw.line([x, y0, x, y0 + 4], fill="black")
        draw.text((x - 10, y0 + 8), first if n == 0 else str(n), fill="black")
    draw.text((x0, height - 16), "step (corrective clicks)", fill="black")
    draw.text((x0 + 4, y1 + 2), "mean Dice", fill="black")
    for n, (label, values) in enumerate(sorted(classes.items())):
        colour = _COLOURS[n % len(_COLOURS)]
        points = [to_xy(s, v) for s, v in enumerate(values["dice_per_step"])]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((x1 + 12, y1 + 16 * n), f"{label[:18]} {values['final_dice']:.2f}", fill=colour)
    tmp = path.with_name(path.name + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)
