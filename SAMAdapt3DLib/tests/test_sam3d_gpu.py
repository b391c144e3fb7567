"""3DSAM-adapter on a CUDA GPU (run by Testing/gpu_check.sh): the same answers as on the CPU, and bf16
autocast close to fp32. Skipped without a GPU, except when SAMADAPT3D_GPU_TESTS=1 (then a missing GPU fails)."""
from __future__ import annotations

import os

import pytest
import torch
from test_sam3d_reference import randomised

from samadapt3d.families.sam3d import SAM3DAdapter, Sam3DAdapterConfig

#: float32 on another device: different kernels and summation orders
DEVICE_TOLERANCE = 1e-4
#: bf16 autocast against fp32, on probabilities (measured on CPU: 7e-3 on the small bench network)
BF16_TOLERANCE = 0.05

if not torch.cuda.is_available():
    if os.environ.get("SAMADAPT3D_GPU_TESTS") == "1":
        pytest.fail("SAMADAPT3D_GPU_TESTS=1 but CUDA is not available", pytrace=False)
    pytest.skip("no CUDA GPU", allow_module_level=True)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cpu = randomised(SAM3DAdapter(Sam3DAdapterConfig.tiny()), seed=11)
    gpu = randomised(SAM3DAdapter(Sam3DAdapterConfig.tiny()), seed=11).to("cuda")
    return cpu, gpu


def test_cuda_equals_cpu_for_full_crop_and_cached_click(pair):
    cpu, gpu = pair
    crop = torch.randn(1, 1, *cpu.crop_size)
    clicks = [torch.tensor([[[5.0, 20.0, 11.0]]]), torch.tensor([[[30.0, 2.0, 17.0]]])]
    with torch.inference_mode():
        features = gpu.encode(crop.cuda())
        for points in clicks:
            expected = cpu.predict_crop(crop, points)
            ours = gpu.decode(features, points.cuda()).cpu()
            assert (ours - expected).abs().max() < DEVICE_TOLERANCE


def test_cuda_bf16_autocast_is_close_to_fp32(pair):
    _, gpu = pair
    crop = torch.randn(1, 1, *gpu.crop_size, device="cuda")
    points = torch.tensor([[[16.0, 16.0, 16.0]]], device="cuda")
    with torch.inference_mode():
        exact = gpu.predict_crop(crop, points)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = gpu.predict_crop(crop, points)
    assert (fast.float() - exact).abs().max() < BF16_TOLERANCE
