"""The 3DSAM-adapter encoder's speed-ups are exact: attention run a few windows at a time with the relative
positions and shift mask added in place equals the naive masked attention, no float window mask is held,
and the allocator setting is applied once."""
from __future__ import annotations

import pytest
import torch
from test_sam3d_reference import literal_block, randomised

from samadapt3d.families.sam3d import SAM3DAdapter, Sam3DAdapterConfig, allocator, encoder

#: float32 results of a different summation order
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny() -> SAM3DAdapter:
    torch.manual_seed(0)
    return randomised(SAM3DAdapter(Sam3DAdapterConfig.tiny()), seed=7)


@pytest.mark.parametrize("chunk_bytes", [encoder.ATTENTION_CHUNK_BYTES, 3 * 4 * 64 * 64 * 4])
@pytest.mark.parametrize("index", [0, 1])  # shifted, then unshifted block
def test_chunked_in_place_attention_equals_naive(tiny, monkeypatch, index, chunk_bytes):
    # 3 windows per chunk: chunks that mix boundary and interior windows, and a last short chunk (8 windows)
    monkeypatch.setattr(encoder, "ATTENTION_CHUNK_BYTES", chunk_bytes)
    block = tiny.image_encoder.blocks[index]
    x = torch.randn(2, 8, 8, 8, 48)
    with torch.no_grad():
        ours = block(x)
        naive = torch.cat([literal_block(block, x[i:i + 1]) for i in range(2)])
    assert (ours - naive).abs().max() < TOLERANCE


@pytest.mark.parametrize("index", [0, 1])
def test_fused_sdpa_path_equals_naive(tiny, monkeypatch, index):
    # the GPU path (scaled_dot_product_attention with the bias as attn_mask), forced on the CPU
    monkeypatch.setattr(encoder, "SDPA_ON_CPU", True)
    block = tiny.image_encoder.blocks[index]
    x = torch.randn(1, 8, 8, 8, 48)
    with torch.no_grad():
        ours = block(x)
        naive = literal_block(block, x)
    assert (ours - naive).abs().max() < TOLERANCE


def test_training_path_has_gradients_equal_to_inference(tiny):
    block = tiny.image_encoder.blocks[0]
    x = torch.randn(1, 8, 8, 8, 48, requires_grad=True)
    out = block(x)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert (block(x) - out).abs().max() < 1e-6


def test_no_float_window_mask_is_held():
    model = SAM3DAdapter(Sam3DAdapterConfig.tiny())
    block = model.image_encoder.blocks[0]
    assert not any(b.dim() == 3 for b in model.buffers())
    assert block.window_regions.dtype == torch.int16
    # the published mask is still what a checkpoint file gets, built from the region ids on demand
    expected = torch.zeros(8, 64, 64)
    ids = block.window_regions.long()
    expected[ids[:, :, None] != ids[:, None, :]] = -100.0
    assert torch.equal(block.attn_mask, expected) and (expected != 0).any()
    # windows whose tokens lie in one region need no mask: exactly those are marked interior
    assert block.window_boundary.tolist() == [bool((row != row[0]).any()) for row in ids]
    assert not bool(block.window_boundary.all())


def test_keep_freed_memory_is_applied_once(monkeypatch):
    calls = []

    class FakeLibc:
        def __init__(self):
            self.mallopt = self

        def __call__(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: FakeLibc())
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True
    assert calls == [(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD_BYTES)]
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.OPT_OUT_VARIABLE, "0")
    assert allocator.keep_freed_memory() is False
    assert len(calls) == 2
