"""Linear layers of the 3DSAM-adapter encoder through oneDNN on the CPU, with the activation fused.

PyTorch's CPU `F.linear` calls MKL's sgemm; on the 2-core AMD EPYC (Zen 4) of our measurements that ran at
71-80 GFLOP/s per CPU-second, oneDNN's linear (`mkldnn._linear_pointwise`, the kernel behind torch.compile's
CPU linear fusions) at 84-91, and it applies the following ReLU / GELU in the same pass. Same arithmetic up to
float32 summation order. Used for fp32 inference only: training (autograd), autocast and other devices take the
plain layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: off: every linear through F.linear (the tests compare both)
ONEDNN_LINEAR = True
#: the activations oneDNN fuses, as `_linear_pointwise` names them, and their plain equivalents
ACTIVATIONS = {"none": lambda x: x, "relu": F.relu, "gelu": F.gelu}


def _onednn(x: torch.Tensor) -> bool:
    return (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available())


def linear(x: torch.Tensor, layer: nn.Linear, activation: str = "none") -> torch.Tensor:
    """activation(layer(x)) for x [..., in_features]; activation one of ACTIVATIONS (GELU: the exact erf form)."""
    if _onednn(x):
        algorithm = "none" if activation == "gelu" else ""  # GELU's approximation: none = erf, as nn.GELU()
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, activation, [], algorithm)
    return ACTIVATIONS[activation](layer(x))
