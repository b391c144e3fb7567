"""A box's object whose model mask takes in another tissue goes on as the part at its own level
(SliceConfig.level_continuation): the body wall around the lungs.

The toy model here draws what a box-trained model draws for a body: everything non-zero in the box, holes filled.
The body spans the slice's full width (as a CT body reaches the field of view), so its own-intensity region is not
filled and the box's object is not one of uniform intensity. A "lung" inside it is 40 % of the body on the box's
middle slice and 60 % above it: there the body's mask has the lung's level, and the walk used to stop.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from samadapt3d.engines.base import ModelPrompts
from samadapt3d.engines.slices import SliceEngine

from test_slice_contract import ToySliceModel, largest_component

SLICES, ROWS, COLS = 12, 40, 48
MIDDLE = 6  # the box's middle slice (slices 1-11)
BODY_ROWS = slice(6, 34)


class FilledBodyModel(ToySliceModel):
    """A box gives the largest filled component of the non-zero pixels inside it."""

    def box_mask(self, image: np.ndarray, inside: np.ndarray) -> np.ndarray:
        return ndimage.binary_fill_holes(largest_component(inside & (image > 0)))


def body_volume(lung_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(volume, body wall, lung): a body of 2.0 (0.5 once normalised) on slices 1-11; a lung of `lung_value`
    inside it on slices 4-11, 40 % of the body's area on slices 4-6, 60 % on 7-11."""
    v = np.zeros((SLICES, ROWS, COLS), np.float32)
    lung = np.zeros(v.shape, bool)
    v[1:, BODY_ROWS, :] = 2.0
    body_area = (BODY_ROWS.stop - BODY_ROWS.start) * COLS
    for k in range(4, SLICES):
        share = 0.4 if k <= MIDDLE else 0.6
        rows = BODY_ROWS.stop - BODY_ROWS.start - 4
        cols = int(round(share * body_area / rows))
        lung[k, BODY_ROWS.start + 2:BODY_ROWS.stop - 2, (COLS - cols) // 2:(COLS - cols) // 2 + cols] = True
    v[lung] = lung_value
    wall = (v == 2.0)
    return v, wall, lung


def box_result(volume: np.ndarray) -> np.ndarray:
    engine = SliceEngine(FilledBodyModel(), disk_cache=None)
    engine.set_image(volume, spacing=(3.0, 1.0, 1.0))
    box = (np.array([1, BODY_ROWS.start, 0], float), np.array([SLICES - 1, BODY_ROWS.stop - 1, COLS - 1], float))
    return engine.run(ModelPrompts(box=box)) > 0.5


def test_a_box_walk_goes_on_as_the_body_wall_where_the_mask_takes_in_the_lung():
    volume, wall, lung = body_volume(lung_value=0.4)  # 0.1 normalised: air beside soft tissue
    result = box_result(volume)
    above = slice(MIDDLE + 1, SLICES)
    # the old walk stopped at the first slice where the lung is most of the body's mask: nothing there
    assert (result[above] & wall[above]).sum() >= 0.9 * wall[above].sum()
    assert (result & lung)[above].sum() <= 0.01 * lung[above].sum()  # the lung's corners read the body (3 x 3 median)
    assert (result[:MIDDLE + 1] & wall[:MIDDLE + 1]).sum() >= 0.9 * wall[:MIDDLE + 1].sum()


def test_a_level_change_within_one_tissue_still_ends_the_walk():
    volume, wall, lung = body_volume(lung_value=1.4)  # 0.35 normalised: 0.15 from the body (bone beside muscle)
    result = box_result(volume)
    assert not result[MIDDLE + 1:].any()
    assert result[MIDDLE].sum() >= 0.9 * (wall[MIDDLE] | lung[MIDDLE]).sum()
