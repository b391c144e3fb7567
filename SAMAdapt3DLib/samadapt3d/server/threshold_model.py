"""A crop model with (almost) no compute, for measuring everything around the model.

overhead_bench runs it ("bench-threshold"), and the tests' toy crop models build on it (they add a flood fill
or call counters), so the click-to-probability rule is written once.
"""
from __future__ import annotations

import torch

from ..families.base import CropModel
from ..preprocess import Preset

BENCH_PRESET = Preset("bench", spacing=None, orientation=None, normalization="none")
BENCH_CROP = (32, 32, 32)
SIMILARITY_SIGMA = 10.0  # intensity units: a voxel 10 from the clicked one has similarity 1/e
SIGMOID_GAIN = 8.0  # how sharply p crosses 0.5 where the similarity does


class ThresholdCropModel(CropModel):
    """Per click: p = sigmoid(8 (exp(-((I - I[click]) / sigma)^2) - 0.5)) in the crop; clicks merge by max."""

    family = "bench-threshold"

    def __init__(self, crop_size: tuple[int, int, int] = BENCH_CROP, preset: Preset = BENCH_PRESET,
                 sigma: float = SIMILARITY_SIGMA) -> None:
        super().__init__(preset)
        self.crop_size = tuple(int(v) for v in crop_size)
        self.scale = torch.nn.Parameter(torch.ones(()))  # so the model has a parameter and a device
        self.sigma = float(sigma)

    def encode(self, crop: torch.Tensor) -> torch.Tensor:
        return crop.float() * self.scale

    def decode(self, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(features)
        size = torch.tensor(features.shape[2:], device=features.device)
        for b in range(features.shape[0]):
            image = features[b, 0]
            for point in points[b]:
                idx = torch.minimum(torch.clamp(torch.floor(point + 0.5).long(), min=0), size - 1)
                similarity = torch.exp(-(((image - image[idx[0], idx[1], idx[2]]) / self.sigma) ** 2))
                out[b, 0] = torch.maximum(out[b, 0], self.click_probability(similarity, idx))
        return out

    def click_probability(self, similarity: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """One click's probability map from its similarity map (idx: the clicked voxel, for subclasses)."""
        return torch.sigmoid(SIGMOID_GAIN * (similarity - 0.5))
