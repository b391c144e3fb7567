"""Activation checkpointing of the 3DSAM-adapter encoder: the same gradients, each block run twice."""
from __future__ import annotations

import numpy as np
import torch

from samadapt3d.training import build_task
from samadapt3d.training.cli import build_parser, config_from_args
from samadapt3d.training.loss import dice_ce_loss
from samadapt3d.training.tasks import network


def _gradients(task, net, image, mask):
    net.zero_grad(set_to_none=True)
    logits, target = task.logits(net, image, mask, np.random.default_rng(0))
    dice_ce_loss(logits, target).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad and p.grad is not None}


def test_checkpointed_blocks_give_the_same_gradients_and_recompute():
    torch.manual_seed(0)
    task = build_task("sam3d-adapter", config="tiny")
    net = network(task).train()
    shape = tuple(task.model.crop_size)
    image = torch.randn(1, 1, *shape)
    mask = torch.zeros(1, 1, *shape)
    mask[..., 4:12, 4:12, 4:12] = 1
    calls = []
    for block in task.model.image_encoder.blocks:
        # a pre-hook: the recomputation stops early, once it has what the backward needs, so post-hooks may not run
        block.register_forward_pre_hook(lambda *_: calls.append(1))

    plain = _gradients(task, net, image, mask)
    plain_calls, calls[:] = len(calls), []
    task.model.image_encoder.checkpoint_blocks = True
    recomputed = _gradients(task, net, image, mask)
    depth = len(task.model.image_encoder.blocks)
    assert plain_calls == depth and len(calls) == 2 * depth  # the backward ran every block again
    assert plain.keys() == recomputed.keys() and any("adapter" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # inference is unaffected: no recomputation without autograd
        calls[:] = []
        task.model.image_encoder(image.permute(0, 1, 3, 4, 2))
        assert len(calls) == depth


def test_cli_flag_reaches_the_config(tmp_path):
    args = build_parser().parse_args(["--data", str(tmp_path), "--target", "1", "--model", "sam3d-adapter",
                                      "--checkpoint-activations"])
    config, _ = config_from_args(args)
    assert config.checkpoint_activations
