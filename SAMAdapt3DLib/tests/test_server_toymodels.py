"""Models and helpers for the server / client tests (no tests here). The models are registered with
`--model-family test_server_toymodels` in a server child, or through models.FAMILY_MODULES in process:

- "toy-crop": the session tests' ToyCropModel (mask = the clicked object);
- "toy-slow": the same, each encode taking SLOW_ENCODE_S (so a run can be cancelled or its server killed mid-way);
- "toy-fast": a cheaper crop model for the load test and the benchmark: every voxel of the crop whose intensity is
  near a clicked one (no flood fill);
- "toy-classes": a prompt-free multi-class model: class 1 where the intensity is near 100, class 2 near 200.
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest
import torch

from samadapt3d.families.base import SegmentationModel
from samadapt3d.models import FamilySpec
from samadapt3d.server.threshold_model import ThresholdCropModel
from test_session_toymodel import TOY_PRESET, ToyCropModel

SLOW_ENCODE_S = 1.0
CLASS_LEVELS = (100.0, 200.0)


class SlowToyCropModel(ToyCropModel):
    family = "toy-slow"

    def encode(self, crop: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW_ENCODE_S)
        return super().encode(crop)


class FastToyCropModel(ToyCropModel):
    family = "toy-fast"

    def click_probability(self, similarity: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return ThresholdCropModel.click_probability(self, similarity, idx)  # no flood fill


class ToyClassModel(SegmentationModel):
    """Per slice: p(class c) = exp(-((I - level_c) / 20)^2), background = the rest (all slabs of one slice)."""

    family = "toy-classes"
    class_names = ("hundred", "two-hundred")
    slab_size = 1
    engine = "slab"

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
                                   "toy-fast": lambda sam_checkpoint=None: FastToyCropModel(),
                                   "toy-classes": lambda sam_checkpoint=None: ToyClassModel()},
                    description="test-only models of the server tests")


def require(condition: bool, why: str) -> None:
    """Skip locally when something the test needs is missing; fail in CI (CI=true)."""
    if not condition:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)


@contextlib.contextmanager
def serve_in_thread(config, loader=None):
    """The app on a free loopback port in a thread of this process: yields its URL."""
    import uvicorn

    from samadapt3d.server.app import create_app

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as `samadapt3d serve` does (server/cli.py)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(config, loader), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
