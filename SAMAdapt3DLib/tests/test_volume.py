"""Volume: index <-> LPS/RAS, file round trips, bad inputs."""
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from samadapt3d.errors import InputError
from samadapt3d.volume import Volume


def rotation(angles):
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


@settings(max_examples=30, deadline=None)
@given(st.tuples(*[st.floats(-3, 3)] * 3), st.tuples(*[st.floats(0.2, 4)] * 3), st.tuples(*[st.floats(-100, 100)] * 3))
def test_index_physical_round_trip_matches_simpleitk(angles, spacing, origin):
    direction = rotation(angles)
    vol = Volume(np.zeros((3, 4, 5), np.int16), spacing, origin, direction)
    image = vol.to_sitk()
    ijk = np.array([1.25, 2.5, 0.75])
    lps = vol.index_to_physical(ijk, "lps")
    assert np.allclose(lps, image.TransformContinuousIndexToPhysicalPoint(tuple(ijk)), atol=1e-6)
    ras = vol.index_to_physical(ijk, "ras")
    assert np.allclose(ras, lps * [-1, -1, 1])
    assert np.allclose(vol.physical_to_index(ras, "ras"), ijk, atol=1e-6)
    assert np.allclose(vol.to_index(lps, "lps"), ijk, atol=1e-6)
    assert np.allclose(vol.ijk_to_ras_matrix() @ [*ijk, 1], [*ras, 1])


def test_array_order_is_kji_like_simpleitk_getpixel():
    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = Volume(arr).to_sitk()
    assert image.GetSize() == (5, 4, 3)
    assert image.GetPixel(4, 2, 1) == arr[1, 2, 4]


def test_contains_index_uses_nearest_voxel():
    vol = Volume(np.zeros((2, 3, 4)))
    assert vol.contains_index([[3.4, 2.4, 1.4], [0, 0, 0], [-0.4, 0, 0]]).all()
    assert not vol.contains_index([[3.6, 0, 0]]).any()
    assert not vol.contains_index([[0, 0, -0.6]]).any()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_file_round_trip_keeps_geometry(tmp_path, suffix):
    arr = np.random.default_rng(0).integers(-1000, 1000, (4, 5, 6)).astype(np.int16)
    direction = rotation((0.3, -0.2, 0.5)) @ np.diag([1, -1, 1])  # oblique and flipped
    vol = Volume(arr, (0.7, 1.3, 2.5), (-10, 20.5, 3), direction)
    path = tmp_path / f"img{suffix}"
    vol.save(path)
    back = Volume.from_file(path)
    assert np.array_equal(back.array, arr)
    assert back.same_geometry(vol, tol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="3D"):
        Volume(np.zeros((4, 5)))
    with pytest.raises(InputError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(InputError, match="direction"):
        Volume(np.zeros((2, 2, 2)), direction=np.zeros((3, 3)))
    with pytest.raises(InputError, match="not found"):
        Volume.from_file(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read"):
        Volume.from_file(junk)
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(5, 6, sitk.sitkUInt8), str(flat))
    with pytest.raises(InputError, match="3D"):
        Volume.from_file(flat)
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.Image([3, 4, 5, 2], sitk.sitkFloat32), str(four))
    with pytest.raises(InputError, match="3D"):
        Volume.from_file(four)
    with pytest.raises(InputError, match="unknown coordinate space"):
        Volume(np.zeros((2, 2, 2))).to_index([0, 0, 0], "xyz")
