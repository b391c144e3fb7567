"""Prompts simulated from the label, as the papers train: clicks inside the object (3DSAM-adapter) and
per-slice boxes around it (LiteMedSAM, which the slice engine prompts with boxes)."""
from __future__ import annotations

import numpy as np
import torch

from ..engines.slices import bbox_2d


def sample_clicks(mask: torch.Tensor, count: int, rng: np.random.Generator) -> torch.Tensor:
    """Clicks [B, count, 3] (float voxel indices along D, H, W) drawn uniformly from each mask [B, 1, D, H, W]
    (an empty mask gets clicks at the crop centre: the caller avoids that for click-prompted models)."""
    out = []
    for m in mask[:, 0].detach().cpu():  # on the CPU: the generator and the fallback clicks live there
        fg = torch.nonzero(m > 0.5)
        if len(fg) == 0:
            out.append(torch.tensor([[(s - 1) / 2 for s in m.shape]] * count))
            continue
        pick = torch.as_tensor(rng.integers(len(fg), size=count))
        out.append(fg[pick].float())
    return torch.stack(out)


def centre_click(mask: torch.Tensor) -> torch.Tensor:
    """A deterministic click per mask [B, 1, D, H, W]: the foreground voxel nearest its centroid -> [B, 1, 3]."""
    out = []
    for m in mask[:, 0].detach().cpu():
        fg = torch.nonzero(m > 0.5).float()
        if len(fg) == 0:
            out.append(torch.tensor([[(s - 1) / 2 for s in m.shape]]))
            continue
        centre = fg.mean(0)
        out.append(fg[torch.argmin(((fg - centre) ** 2).sum(1))][None])
    return torch.stack(out)


def slice_boxes(mask: np.ndarray, rng: np.random.Generator | None, margin: float = 0.1,
                jitter: float = 0.1) -> list[tuple[float, float, float, float]]:
    """One box per slice of a stack [S, H, W]: the slice's own bounding box grown by `margin` (as the engine
    grows the neighbour's box) and jittered; a slice without foreground gets the box of the nearest slice that
    has some (the engine's situation where the object ends: the right answer is an empty mask), or a random box."""
    s, h, w = mask.shape
    own = [bbox_2d(mask[k]) for k in range(s)]
    filled = [k for k in range(s) if own[k] is not None]
    boxes = []
    for k in range(s):
        if own[k] is not None:
            box = own[k]
        elif filled:
            box = own[min(filled, key=lambda j: abs(j - k))]
        else:
            r = rng if rng is not None else np.random.default_rng(k)
            r0, c0 = int(r.integers(h)), int(r.integers(w))
            box = (r0, c0, min(r0 + h // 4, h - 1), min(c0 + w // 4, w - 1))
        r0, c0, r1, c1 = box
        pad = margin * max(r1 - r0 + 1, c1 - c0 + 1)
        noise = (rng.uniform(-1, 1, 4) * jitter * max(r1 - r0 + 1, c1 - c0 + 1)) if rng is not None else np.zeros(4)
        r0, c0, r1, c1 = (r0 - pad + noise[0], c0 - pad + noise[1], r1 + pad + noise[2], c1 + pad + noise[3])
        boxes.append((float(np.clip(r0, 0, h - 1)), float(np.clip(c0, 0, w - 1)),
                      float(np.clip(r1, 0, h - 1)), float(np.clip(c1, 0, w - 1))))
    return boxes
