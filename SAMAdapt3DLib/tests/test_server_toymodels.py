"""Models for the server / client tests (no tests here): registered with `--model-family test_server_toymodels`
in a server child, or through models.FAMILY_MODULES in process.

- "toy-crop": the session tests' ToyCropModel (mask = the clicked object);
- "toy-slow": the same, each encode taking SLOW_ENCODE_S (so a run can be cancelled or its server killed mid-way);
- "toy-classes": a prompt-free multi-class model: class 1 where the intensity is near 100, class 2 near 200.
"""
from __future__ import annotations

import time

import torch

from samadapt3d.families.base import SegmentationModel
from samadapt3d.models import FamilySpec
from test_session_toymodel import TOY_PRESET, ToyCropModel

SLOW_ENCODE_S = 1.5
CLASS_LEVELS = (100.0, 200.0)


class SlowToyCropModel(ToyCropModel):
    family = "toy-slow"

    def encode(self, crop: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW_ENCODE_S)
        return super().encode(crop)


class ToyClassModel(SegmentationModel):
    """Per slice: p(class c) = exp(-((I - level_c) / 20)^2), background = the rest (all slabs of one slice)."""

    family = "toy-classes"
    class_names = ("hundred", "two-hundred")
    slab_size = 1

    def __init__(self) -> None:
        super().__init__(TOY_PRESET)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def predict_slab(self, slab) -> torch.Tensor:
        image = torch.as_tensor(slab, dtype=torch.float32) * self.scale  # [slab, H, W]
        fg = [torch.exp(-(((image - level) / 20.0) ** 2)) for level in CLASS_LEVELS]
        background = torch.clamp(1.0 - fg[0] - fg[1], min=0.0)
        return torch.stack([background] + fg, dim=1)


FAMILY = FamilySpec(name="toy-server", detect=lambda obj: False, load=lambda obj, **kw: None,
                    builtin_names={"toy-crop": lambda sam_checkpoint=None: ToyCropModel(),
                                   "toy-slow": lambda sam_checkpoint=None: SlowToyCropModel(),
                                   "toy-classes": lambda sam_checkpoint=None: ToyClassModel()},
                    description="test-only models of the server tests")
