"""The appearance band widens with the object (SliceConfig.appearance_band_share / appearance_band_max): a model
whose boundary is drawn a few pixels inside a large object has the whole rim re-decided by intensity, while a small
object keeps the 2-px band (on the slicerio CT a wider one cost the spine up to 0.09 Dice).

The toy model draws the boxed object eroded by `SHRINK` pixels, as a box-trained model drew the body's wall inside
its subcutaneous fat on the slicerio CT.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.slice_objects import SliceObjects
from samadapt3d.engines.slices import SliceEngine

from test_slice_contract import ToySliceModel, largest_component

SHRINK = 4
SLICES, SIDE = 7, 96


class ShrunkModel(ToySliceModel):
    """A box gives the largest object of non-zero pixels inside it, eroded by SHRINK pixels."""

    def box_mask(self, image: np.ndarray, inside: np.ndarray) -> np.ndarray:
        return ndimage.binary_erosion(largest_component(inside & (image > 0)), iterations=SHRINK)


def boxed(side: int) -> tuple[np.ndarray, np.ndarray]:
    """A square object of `side` px on slices 1-5 (intensity 2.0 on a zero background) and its box result."""
    volume = np.zeros((SLICES, SIDE, SIDE), np.float32)
    lo = (SIDE - side) // 2
    volume[1:6, lo:lo + side, lo:lo + side] = 2.0
    engine = SliceEngine(ShrunkModel(), disk_cache=None)
    engine.set_image(volume, spacing=(3.0, 1.0, 1.0))
    box = (np.array([1, lo, lo], float), np.array([5, lo + side - 1, lo + side - 1], float))
    return volume > 0, engine.run(ModelPrompts(box=box)) > 0.5


def test_a_large_object_drawn_inside_its_boundary_gets_its_whole_rim():
    truth, result = boxed(70)  # drawn 62 px wide: a 2-px band would leave a 2-px rim (89 % of the object)
    assert not (result & ~truth).any()
    assert result.sum() >= 0.99 * truth.sum()


def test_the_band_is_2_px_up_to_a_22_px_object_and_at_most_5():
    engine = SliceEngine(ShrunkModel(), disk_cache=None)
    engine.set_image(np.zeros((SLICES, SIDE, SIDE), np.float32))
    walk = SliceObjects(engine.strategy, 0, ModelPrompts(), None, None)

    def width(side: int) -> int:
        mask = np.zeros((SIDE, SIDE), bool)
        mask[:side, :side] = True
        return walk.band_width({2: mask, 3: mask})

    # a vertebra on this CT is 12-16 px across: its neighbours lie within a wide band
    assert [width(s) for s in (8, 16, 27, 28, 44, 60, 90)] == [2, 2, 2, 3, 4, 5, 5]
