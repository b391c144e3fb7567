"""Models for the evaluate tests (no tests here), registered through models.FAMILY_MODULES:

- "tiny-sam3d": a 3DSAM-adapter of the tiny configuration with random weights (crop engine);
- "tiny-slice": a LiteMedSAM-adapter of the tiny configuration with random weights (slice engine; slow-ish);
- "toy-slice": ToySliceModel, a box-prompted 2D model for the slice engine: inside the box, the pixels whose
  intensity is near the box centre's (no weights, fast);
- "toy-crop": the session tests' ToyCropModel (the mask is the clicked object).
The random networks check the protocol and the contract plumbing, not accuracy."""
from __future__ import annotations

import numpy as np
import torch

from samadapt3d.families.base import SliceModel
from samadapt3d.models import FamilySpec
from test_session_toymodel import TOY_PRESET, ToyCropModel

TOY_SLICE_SIZE = 64  # the square model input; slices must fit in it (they are padded, not resized)


class ToySliceModel(SliceModel):
    family = "toy-slice"
    prompt_kinds = frozenset({"box"})
    image_size = TOY_SLICE_SIZE

    def __init__(self, sigma: float = 10.0) -> None:
        super().__init__(TOY_PRESET)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.sigma = sigma

    def preprocess_slice(self, slice2d):
        rows, cols = slice2d.shape
        assert rows <= self.image_size and cols <= self.image_size, slice2d.shape
        image = torch.zeros(3, self.image_size, self.image_size)
        image[:, :rows, :cols] = torch.as_tensor(np.asarray(slice2d, np.float32))
        return image, (rows, cols)

    def embed(self, images):
        return images[:, :1].float() * self.scale

    @staticmethod
    def box_to_model(transform, r0, c0, r1, c1):
        return np.array([c0, r0, c1, r1], dtype=np.float64)

    @staticmethod
    def mask_to_slice(transform, logits):
        rows, cols = transform
        return logits[..., :rows, :cols]

    def decode(self, embeddings, points=None, boxes=None, mask_input=None, multimask_output=False):
        image = embeddings[0, 0]
        size = image.shape[-1]
        boxes = torch.zeros(0, 4) if boxes is None else boxes
        out = torch.full((len(boxes), 1, size, size), -10.0)
        for n, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            x0, y0 = max(x0, 0), max(y0, 0)
            x1, y1 = min(max(x1, x0), size - 1), min(max(y1, y0), size - 1)
            centre = image[(y0 + y1) // 2, (x0 + x1) // 2]
            near = torch.exp(-(((image[y0:y1 + 1, x0:x1 + 1] - centre) / self.sigma) ** 2))
            out[n, 0, y0:y1 + 1, x0:x1 + 1] = 10.0 * (near - 0.5)
        return out, torch.full((len(boxes), 1), 0.9)


def tiny_sam3d(sam_checkpoint=None):
    from samadapt3d.families.sam3d import SAM3DAdapter, Sam3DAdapterConfig

    torch.manual_seed(0)
    return SAM3DAdapter(Sam3DAdapterConfig.tiny())


def tiny_slice(sam_checkpoint=None):
    from samadapt3d.families.litemedsam_adapter import LiteMedSAMAdapter, LiteMedSAMAdapterConfig

    torch.manual_seed(0)
    return LiteMedSAMAdapter(LiteMedSAMAdapterConfig.tiny())


FAMILY = FamilySpec(name="evaluate-test-models", detect=lambda obj: False, load=lambda obj, **kw: None,
                    builtin_names={"tiny-sam3d": tiny_sam3d, "tiny-slice": tiny_slice,
                                   "toy-slice": lambda sam_checkpoint=None: ToySliceModel(),
                                   "toy-crop": lambda sam_checkpoint=None: ToyCropModel()},
                    description="test-only models of the evaluate tests")
