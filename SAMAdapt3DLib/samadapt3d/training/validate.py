"""Validation: each held-out case predicted the same way every epoch, scored with Dice and NSD."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..preprocess import extract_crop
from .data import CaseArrays
from .loss import dice_score, nsd_score
from .tasks import LiteMedSAMTask, Task


@torch.no_grad()
def predict_case(task: Task, net: nn.Module, case: CaseArrays, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) bool arrays of the region scored for `case`.

    3DSAM-adapter: the model crop centred on the object's centroid, one click at the voxel nearest it.
    LiteMedSAM-adapter: every slice of the object (one more each side) as whole slices in stacks of the training
    stack length, each prompted with the box of its own truth grown by 10% (a neighbour's box for the extra
    slices, where the right answer is empty), mapped back to the slice grid."""
    fg = np.argwhere(case.mask)
    if isinstance(task, LiteMedSAMTask):
        lo, hi = max(int(fg[:, 0].min()) - 1, 0), min(int(fg[:, 0].max()) + 1, case.mask.shape[0] - 1)
        stack = task.crop_size[0]
        preds = []
        model = task.model
        for start in range(lo, hi + 1, stack):
            stop = min(start + stack, hi + 1)
            image = torch.from_numpy(case.image[start:stop])[None, None].to(device)
            mask = torch.from_numpy(case.mask[start:stop].astype(np.float32))[None, None].to(device)
            logits, _ = task.logits(net, image, mask, None)
            tr = model.slice_transform(*case.image.shape[1:])
            preds.append(model.mask_to_slice(tr, logits.float().cpu())[:, 0].numpy() > 0)
        return np.concatenate(preds), case.mask[lo:hi + 1]
    size = np.asarray(task.crop_size)
    centre = np.round(fg.mean(0)).astype(int)
    start = centre - size // 2
    image = extract_crop(case.image, start, size, float(case.image.min()))
    truth = extract_crop(case.mask, start, size, False)
    img = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device)
    msk = torch.from_numpy(truth.astype(np.float32))[None, None].to(device)
    logits, _ = task.logits(net, img, msk, None)
    return logits[0, 0].float().cpu().numpy() > 0, truth


def evaluate(task: Task, net: nn.Module, cases: list[CaseArrays], device: torch.device,
             tolerance_mm: float = 2.0) -> dict[str, float]:
    """Mean Dice and NSD over `cases` (the network is put in eval mode and back)."""
    was_training = net.training
    net.eval()
    dices, nsds = [], []
    try:
        for case in cases:
            pred, truth = predict_case(task, net, case, device)
            dices.append(dice_score(pred, truth))
            nsds.append(nsd_score(pred, truth, case.spacing, tolerance_mm))
    finally:
        net.train(was_training)
    return {"dice": float(np.mean(dices)), "nsd": float(np.mean(nsds))}
