"""Clicks composed one by one, so that the result obeys the interaction contract by construction
(docs/SESSION.md), whatever the network does with each prompt. Used by the crop and slab engines.

Start from the seed (or nothing), then take the prompts in the order they were given:
- the box first (when there is one): its object (the engine's, bounded by the box) is added;
- a positive click: its object (the engine's `object_of`), plus the click's own voxel, minus what the earlier
  negative clicks cut from it (`negative_cut`: ties go to the positives), is ADDED to the result: a positive
  never removes anything, and objects of separate clicks give their union;
- a negative click: the part of the result it cuts (`negative_cut` with the positives so far) is REMOVED:
  a negative never adds anything, and its own voxel leaves the result. With a network that understands
  negatives (`refine`), the result is first intersected with what the network keeps given all clicks so far
  (the positive clicks' own voxels stay).
Two clicks on one voxel: the latest wins (a negative on a positive's voxel takes that positive back, so it no
longer shields its object; a positive on a negative's voxel puts it back).
Objects come from the engine's cache, so replaying the prompts after an undo decodes nothing; the state after
the previous run is kept, so a prompt appended to the same list costs one step.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .base import ModelPrompts
from .prompts import click_voxel, label_components, negative_cut

#: (point (d, h, w), the clicks before it as (positive?, point)) -> foreground probability [D, H, W] of its object
ObjectOf = Callable[[np.ndarray, list], np.ndarray]
#: (the clicks so far, the latest a negative) -> probability of what a model that understands negatives keeps
#: (None: negatives are emulated by cutting only)
Refine = Callable[[list], np.ndarray]


@dataclass
class _Fold:
    key: tuple
    probability: np.ndarray
    positives: list[tuple[int, ...]] = field(default_factory=list)
    negatives: list[tuple[int, ...]] = field(default_factory=list)


def _seed_key(seed: np.ndarray | None) -> bytes:
    if seed is None:
        return b""
    return hashlib.blake2b(np.packbits(np.asarray(seed, bool)).tobytes() + str(seed.shape).encode(),
                           digest_size=16).digest()


def _box_key(box) -> tuple:
    return () if box is None else tuple(float(v) for c in box for v in c)


class ClickComposer:
    """Folds prompts into one probability [D, H, W]; remembers the last fold to extend it by one prompt."""

    def __init__(self) -> None:
        self._last: _Fold | None = None

    def reset(self) -> None:
        self._last = None

    def compose(self, shape: tuple[int, int, int], prompts: ModelPrompts, seed: np.ndarray | None,
                object_of: ObjectOf, box_object: Callable[[], np.ndarray] | None = None,
                cancel_check: Callable[[], None] | None = None, refine: Refine | None = None) -> np.ndarray:
        clicks = prompts.clicks()
        base_key = (_seed_key(seed), _box_key(prompts.box))
        keys = [base_key] + [base_key + tuple((pos, tuple(float(v) for v in p)) for pos, p in clicks[:n + 1])
                             for n in range(len(clicks))]
        last = self._last
        if last is not None and last.key in keys:
            done = keys.index(last.key)
            fold = _Fold(last.key, last.probability.copy(), list(last.positives), list(last.negatives))
        else:
            done = 0
            probability = np.zeros(shape, np.float32)
            if seed is not None:
                probability[np.asarray(seed, bool)] = 1.0
            if box_object is not None:
                probability = np.maximum(probability, box_object())
            fold = _Fold(base_key, probability)
        for n in range(done, len(clicks)):
            if cancel_check is not None:
                cancel_check()
            positive, point = clicks[n]
            self._step(fold, positive, point, lambda p: object_of(p, clicks[:n]),
                       None if refine is None else lambda: refine(clicks[:n + 1]))
            fold.key = keys[n + 1]
        self._last = _Fold(fold.key, fold.probability.copy(), list(fold.positives), list(fold.negatives))
        return fold.probability

    @staticmethod
    def _step(fold: _Fold, positive: bool, point: np.ndarray, object_of: Callable[[np.ndarray], np.ndarray],
              refine: Callable[[], np.ndarray] | None) -> None:
        prob = fold.probability
        voxel = click_voxel(point, prob.shape)
        if positive:
            fold.negatives = [v for v in fold.negatives if v != voxel]  # the latest click on a voxel wins
            fold.positives.append(voxel)
            found = np.asarray(object_of(point), np.float32)
            obj = found > 0.5
            obj[voxel] = True
            if fold.negatives and obj.any():
                labels = label_components(obj)
                cut = np.zeros_like(obj)
                for negative in fold.negatives:
                    cut |= negative_cut(obj, negative, fold.positives, labels)
                obj &= ~cut
            np.maximum(prob, np.where(obj, found, 0.0).astype(np.float32), out=prob)
            prob[voxel] = 1.0
        else:
            fold.positives = [v for v in fold.positives if v != voxel]  # a negative on a positive's voxel overrides it
            fold.negatives.append(voxel)
            if refine is not None:  # a network that understands negatives: keep only what it still keeps
                np.minimum(prob, np.asarray(refine(), np.float32), out=prob)
                for v in fold.positives:
                    prob[v] = 1.0  # they were in before: restoring them adds nothing
            mask = prob > 0.5
            prob[negative_cut(mask, voxel, fold.positives)] = 0.0
