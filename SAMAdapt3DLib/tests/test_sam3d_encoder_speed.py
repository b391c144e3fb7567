"""The 3DSAM-adapter encoder's speed-ups are exact: the packed attention (relative positions and shift mask as
extra q / k columns of one fused attention) equals the naive masked attention, no float window mask is held,
and the allocator setting is applied once."""
from __future__ import annotations

import pytest
import torch
from test_sam3d_reference import literal_block, randomised

from samadapt3d.families.sam3d import (
    SAM3DAdapter,
    Sam3DAdapterConfig,
    allocator,
    encoder,
    linear,
)

#: float32 results of a different summation order
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny() -> SAM3DAdapter:
    torch.manual_seed(0)
    return randomised(SAM3DAdapter(Sam3DAdapterConfig.tiny()), seed=7)


@pytest.mark.parametrize("index", [0, 1])  # shifted, then unshifted block
def test_packed_attention_equals_naive(tiny, index):
    # relative positions and the axis-split shift mask as extra q / k columns of one fused attention, two crops
    # in a batch (windows are batch-major: the shift terms repeat per crop)
    block = tiny.image_encoder.blocks[index]
    x = torch.randn(2, 8, 8, 8, 48)
    with torch.no_grad():
        ours = block(x)
        naive = torch.cat([literal_block(block, x[i:i + 1]) for i in range(2)])
    assert (ours - naive).abs().max() < TOLERANCE


def test_packed_head_dim_holds_the_relative_columns():
    assert encoder.packed_head_dim(64, 8) == 96  # published ViT-B: 64 + 3 * 8 = 88, rounded up
    assert encoder.packed_head_dim(12, 4) == 32
    assert encoder.packed_head_dim(8, 8) == 32
    onehots = encoder.axis_onehots(4, 0.5)
    assert onehots.shape == (64, 12) and torch.equal(onehots.sum(1), torch.full((64,), 6.0))
    assert onehots[1 * 16 + 2 * 4 + 3].nonzero().flatten().tolist() == [1, 4 + 2, 8 + 3]  # token (h, w, d) = (1, 2, 3)


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
    # the axis-split terms: -100 in the query's column of key position p on an axis where p is in another segment;
    # summed over the three axes, a pair gets a term < 0 exactly when the published mask has -100
    terms = block.shift_terms
    w = 4
    hwd = torch.stack(torch.meshgrid(*(torch.arange(w),) * 3, indexing="ij"), -1).reshape(-1, 3)
    summed = sum(terms[:, :, a * w:(a + 1) * w][:, :, hwd[:, a]] for a in range(3))  # [nW, n (query), n (key)]
    assert torch.equal(summed < 0, expected < 0)
    assert set(summed.unique().tolist()) <= {0.0, -100.0, -200.0, -300.0}


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


@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
def test_onednn_linear_equals_the_plain_layer(activation):
    torch.manual_seed(3)
    layer = torch.nn.Linear(48, 96)
    x = torch.randn(2, 4, 4, 4, 48)
    plain = {"none": lambda t: t, "relu": torch.relu, "gelu": torch.nn.GELU()}[activation](x @ layer.weight.T + layer.bias)
    with torch.inference_mode():
        fused = linear.linear(x, layer, activation)
    assert fused.shape == plain.shape and (fused - plain).abs().max() < TOLERANCE
    if activation != "none":  # the activation really ran: about half of the outputs were negative before it
        assert (plain == 0).float().mean() > 0.3 if activation == "relu" else (plain < 0).any()
