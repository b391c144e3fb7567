"""Model presets: axis order, spacing and intensity normalisation of what a model sees.

Model space convention (one definition, used everywhere): a volume is reoriented with ITK's
orientation code `Preset.orientation` (the anatomical direction each of i, j, k increases toward,
e.g. "LPS"; None keeps the acquisition order), resampled to `Preset.spacing` (given in (D, H, W)
order, None keeps the native grid), and read as a numpy array [D, H, W] = [k, j, i].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Preset:
    name: str
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)  # mm, (D, H, W) order
    orientation: str | None = "LPS"  # ITK code of axes (i, j, k) = (W, H, D)
    clip: tuple[float, float] | None = None
    normalization: str = "zscore"  # "zscore" (fixed mean/std, else per volume), "minmax", "none"
    mean: float | None = None
    std: float | None = None

    def normalize(self, array: np.ndarray) -> np.ndarray:
        """Clip then normalise intensities; returns float32."""
        out = np.asarray(array, dtype=np.float32)
        if self.clip is not None:
            out = np.clip(out, self.clip[0], self.clip[1])
        if self.normalization == "zscore":
            mean = float(out.mean()) if self.mean is None else self.mean
            std = float(out.std()) if self.std is None else self.std
            out = (out - mean) / max(std, 1e-8)
        elif self.normalization == "minmax":
            lo, hi = (self.clip if self.clip is not None else (float(out.min()), float(out.max())))
            out = (out - lo) / max(hi - lo, 1e-8)
        elif self.normalization != "none":
            raise ValueError(f"unknown normalization {self.normalization!r}")
        return out.astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preset":
        data = dict(data)
        for key in ("spacing", "clip"):
            if data.get(key) is not None:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)
