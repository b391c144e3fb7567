"""The slice engine's default slicing axis: the axis a scan was acquired along, from the voxel size alone."""
import pytest
from samadapt3d.engines.slices import acquisition_axis


@pytest.mark.parametrize("spacing_dhw, axis", [
    ((10.0, 3.05, 3.05), 0),   # the slicerio CT: thick axial slices
    ((1.13, 3.05, 3.05), 0),   # thin slices of coarse pixels: still axial (the largest spacing would say coronal)
    ((0.625, 0.78, 0.78), 0),  # a modern CT: 0.625 mm slices of 0.78 mm pixels
    ((1.0, 1.0, 1.0), 0),      # isotropic: the first axis
    ((1.0, 1.0, 4.0), 2),      # a sagittal MR stack: 1 mm pixels, 4 mm apart along the last axis
    ((1.0, 2.0, 5.0), 2),      # no square plane: the squarest (2 x 1 mm pixels, 5 mm apart)
    ((3.0, 0.5, 1.0), 0),      # non-square pixels, thick slices
    ((3.05, 1.13, 3.05), 1),   # the 1.13 mm axis stored second (a coronal acquisition)
])
def test_acquisition_axis_is_the_scanner_plane(spacing_dhw, axis):
    assert acquisition_axis(spacing_dhw) == axis


def test_acquisition_axis_follows_a_permutation():
    spacing = (0.7, 0.7, 2.5)  # axial slices stored along the last array axis
    assert acquisition_axis(spacing) == 2
    assert acquisition_axis((spacing[2], spacing[0], spacing[1])) == 0
