"""A small, honest CropModel for testing the session, the CropEngine and the CLI without weights.

It is the library's ThresholdCropModel (samadapt3d.server.threshold_model) plus call counters and a flood fill.
encode: the crop scaled by a learnable-looking parameter (so the model has parameters and a device).
decode: for each point, the similarity exp(-((I - I[p]) / sigma)^2) to the clicked voxel's intensity,
squashed by a sigmoid so that p > 0.5 exactly where the similarity is > 0.5, restricted to the
6-connected region of similar voxels that contains the point (a flood fill); points merge by max.
So on a piecewise-constant image the mask is exactly the clicked object's part inside the crop.
Exposes `FAMILY` so tests can register it with `samadapt3d.models` under the name "toy-crop".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from samadapt3d.models import FamilySpec
from samadapt3d.preprocess import Preset
from samadapt3d.server.threshold_model import ThresholdCropModel

TOY_PRESET = Preset("toy", spacing=None, orientation="LPS", normalization="none")


class ToyCropModel(ThresholdCropModel):
    family = "toy-crop"

    def __init__(self, crop_size=(12, 12, 12), preset: Preset = TOY_PRESET, sigma: float = 10.0) -> None:
        super().__init__(crop_size, preset, sigma)
        self.encode_calls = 0
        self.decode_calls = 0

    def encode(self, crop: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        assert tuple(crop.shape[2:]) == self.crop_size, crop.shape
        return super().encode(crop)

    def decode(self, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        self.decode_calls += 1
        return super().decode(features, points)

    def click_probability(self, similarity: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The threshold model's map, kept only in the similar region connected to the clicked voxel."""
        allowed = (similarity > 0.5).float()
        region = torch.zeros_like(allowed)
        region[idx[0], idx[1], idx[2]] = 1.0
        while True:
            grown = F.max_pool3d(region[None, None], 3, stride=1, padding=1)[0, 0] * allowed
            grown = torch.maximum(grown, region)
            # a 3x3x3 window: 26-connected, as the CropEngine's negative-click regions
            if torch.equal(grown, region):
                break
            region = grown
        return super().click_probability(similarity, idx) * region


def _builtin(sam_checkpoint=None):
    return ToyCropModel()


FAMILY = FamilySpec(name="toy-crop", detect=lambda obj: False, load=lambda obj, **kw: None,
                    builtin_names={"toy-crop": _builtin}, description="test-only crop model")
