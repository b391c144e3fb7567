"""The scene bridge against a real MRML scene (slicer-core, headless): geometry, prompts, segments, masking."""
from __future__ import annotations

import numpy as np
import pytest
import vtk

from SAMAdapt3DSlicerLib import scene_bridge as bridge
import slicer
from samadapt3d.volume import Volume


def rotation(axis, degrees):
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    a = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
         "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    return np.array(a, dtype=np.float64)


OBLIQUE = rotation("z", 30) @ rotation("x", 20) @ rotation("y", -15)
GEOMETRIES = {
    "axis_aligned_iso": dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3)),
    "anisotropic": dict(spacing=(0.7, 0.9, 3.0), origin=(-20.0, 15.0, 40.0), direction=np.eye(3)),
    "oblique_anisotropic": dict(spacing=(0.8, 1.3, 2.5), origin=(12.5, -30.0, 7.0), direction=OBLIQUE),
    "flipped": dict(spacing=(1.5, 1.0, 2.0), origin=(5.0, 5.0, 5.0), direction=np.diag([-1.0, 1.0, -1.0])),
}


def make_volume(geometry, shape=(12, 20, 16)):
    rng = np.random.default_rng(0)
    array = rng.integers(-100, 100, size=shape).astype(np.int16)  # [k, j, i]
    return Volume(array, **GEOMETRIES[geometry])


def vtk_ijk_to_ras(node, ijk):
    """Slicer's own conversion (the node's IJKToRAS matrix through VTK) as the oracle."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array(m.MultiplyPoint([*map(float, ijk), 1.0])[:3])


@pytest.fixture(params=sorted(GEOMETRIES))
def geometry(request):
    return request.param


# ---- volumes -------------------------------------------------------------------------------------------------
def test_volume_round_trip_matches_slicer_geometry(scene, geometry):
    volume = make_volume(geometry)
    node = bridge.volume_to_node(volume, scene, "vol")
    back = bridge.volume_from_node(node)
    assert back.array.shape == volume.array.shape and np.array_equal(back.array, volume.array)
    assert back.same_geometry(volume, tol=1e-9)
    np.testing.assert_allclose(node.GetSpacing(), volume.spacing, atol=1e-9)
    # Slicer's origin is RAS = LPS with x, y negated
    np.testing.assert_allclose(node.GetOrigin(), volume.origin * [-1, -1, 1], atol=1e-9)
    for ijk in [(0, 0, 0), (15, 19, 11), (3, 7, 2)]:
        np.testing.assert_allclose(vtk_ijk_to_ras(node, ijk), back.index_to_physical(ijk, "ras"), atol=1e-9)
        # voxel value at (i, j, k) is array[k, j, i] in both
        assert node.GetImageData().GetScalarComponentAsDouble(*ijk, 0) == back.array[ijk[2], ijk[1], ijk[0]]


def test_volume_under_linear_transform_uses_world_coordinates(scene):
    volume = make_volume("anisotropic")
    node = bridge.volume_to_node(volume, scene, "vol")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, :3] = rotation("z", 90)
    m[:3, 3] = [10, -5, 3]
    transform.SetMatrixTransformToParent(bridge._vtk_matrix_from_np(m))
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = bridge.volume_from_node(node)
    np.testing.assert_allclose(world.ijk_to_ras_matrix(), m @ volume.ijk_to_ras_matrix(), atol=1e-9)


def test_multicomponent_volume_is_a_clear_error(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(image)
    with pytest.raises(bridge.InputError, match="components"):
        bridge.volume_from_node(node)


# ---- prompts -------------------------------------------------------------------------------------------------
def test_points_in_ras_land_on_the_right_voxels(scene, geometry):
    volume = make_volume(geometry)
    node = bridge.volume_to_node(volume, scene, "vol")
    vol = bridge.volume_from_node(node)
    positive = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "pos")
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "neg")
    targets_pos = [(2, 3, 4), (15, 19, 11)]
    targets_neg = [(7, 1, 0)]
    rng = np.random.default_rng(1)
    for node_, targets in ((positive, targets_pos), (negative, targets_neg)):
        for ijk in targets:
            jitter = rng.uniform(-0.3, 0.3, size=3)  # anywhere inside the voxel
            ras = vtk_ijk_to_ras(node, np.asarray(ijk) + jitter)
            node_.AddControlPoint(*ras)
    prompts = bridge.collect_prompts(vol, positive, negative, None)
    assert not prompts.ignored
    got = [(tuple(int(v) for v in np.round(p.ijk)), p.positive) for p in prompts.usable_points]
    assert got == [(t, True) for t in targets_pos] + [(t, False) for t in targets_neg]
    for p in prompts.points:  # agrees with the Volume's own RAS -> index conversion
        np.testing.assert_allclose(p.ijk, volume.physical_to_index(p.ras, "ras"), atol=1e-9)


def test_points_under_a_parent_transform_use_world_positions(scene):
    volume = make_volume("oblique_anisotropic")
    node = bridge.volume_to_node(volume, scene, "vol")
    vol = bridge.volume_from_node(node)
    target = np.array([5, 6, 7])
    ras = vtk_ijk_to_ras(node, target)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [4.0, -2.0, 1.0]
    transform.SetMatrixTransformToParent(bridge._vtk_matrix_from_np(shift))
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    points.SetAndObserveTransformNodeID(transform.GetID())
    points.AddControlPoint(*(ras - shift[:3, 3]))  # local position; world = local + shift = the target
    (prompt,) = bridge.points_from_markups(points, vol, positive=True)
    np.testing.assert_allclose(prompt.ijk, target, atol=1e-6)


def test_points_outside_the_volume_are_reported_and_not_used(scene, geometry):
    volume = make_volume(geometry)
    node = bridge.volume_to_node(volume, scene, "vol")
    vol = bridge.volume_from_node(node)
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    points.AddControlPoint(*vtk_ijk_to_ras(node, (3, 3, 3)))
    points.AddControlPoint(*vtk_ijk_to_ras(node, (-2, 3, 3)))  # left of the volume
    points.AddControlPoint(*vtk_ijk_to_ras(node, (3, 3, 12)))  # k = 12 is one past the last slice (11)
    points.AddControlPoint(*vtk_ijk_to_ras(node, (15.4, 19.4, 11.4)))  # still inside the last voxel
    prompts = bridge.collect_prompts(vol, points)
    assert [p.inside for p in prompts.points] == [True, False, False, True]
    assert len(prompts.usable_points) == 2 and len(prompts.ignored) == 2
    assert all("outside the volume" in m for m in prompts.ignored)


def test_points_being_placed_are_not_prompts(scene):
    vol = make_volume("axis_aligned_iso")
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    points.AddControlPoint(1, 1, 1)
    points.UnsetNthControlPointPosition(0)  # e.g. a skipped point of a place list
    assert bridge.points_from_markups(points, vol, True) == []


def test_roi_becomes_an_index_box(scene, geometry):
    volume = make_volume(geometry)
    node = bridge.volume_to_node(volume, scene, "vol")
    vol = bridge.volume_from_node(node)
    lo, hi = np.array([2.0, 3.0, 1.0]), np.array([9.0, 12.0, 6.0])
    corners_ras = np.array([vtk_ijk_to_ras(node, [(lo, hi)[b][a] for a, b in enumerate(bits)])
                            for bits in np.ndindex(2, 2, 2)])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    if geometry in ("axis_aligned_iso", "anisotropic", "flipped"):  # an axis-aligned ROI fits exactly
        roi.SetCenter(*corners_ras.mean(axis=0))
        roi.SetSize(*(corners_ras.max(axis=0) - corners_ras.min(axis=0)))
        box = bridge.box_from_roi(roi, vol)
        np.testing.assert_allclose(box.ijk_min, lo, atol=1e-6)
        np.testing.assert_allclose(box.ijk_max, hi, atol=1e-6)
    else:  # oblique volume: an ROI rotated with the volume (through a parent transform) fits exactly
        axes = vol.ijk_to_ras_matrix()[:3, :3]
        unit = axes / np.linalg.norm(axes, axis=0)
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        m = np.eye(4)
        m[:3, :3] = unit
        transform.SetMatrixTransformToParent(bridge._vtk_matrix_from_np(m))
        roi.SetAndObserveTransformNodeID(transform.GetID())
        roi.SetCenter(*(unit.T @ corners_ras.mean(axis=0)))
        roi.SetSize(*((hi - lo) * vol.spacing))
        box = bridge.box_from_roi(roi, vol)
        np.testing.assert_allclose(box.ijk_min, lo, atol=1e-6)
        np.testing.assert_allclose(box.ijk_max, hi, atol=1e-6)
    assert box.inside and not box.clipped


def test_roi_outside_or_partly_outside(scene):
    vol = make_volume("axis_aligned_iso")
    node = bridge.volume_to_node(vol, scene, "vol")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(*vtk_ijk_to_ras(node, (0, 5, 5)))
    roi.SetSize(6, 4, 4)
    box = bridge.box_from_roi(roi, vol)
    assert box.inside and box.clipped and box.ijk_min[0] == 0
    roi.SetCenter(*vtk_ijk_to_ras(node, (-50, 5, 5)))
    prompts = bridge.collect_prompts(vol, roi_node=roi)
    assert not prompts.box.inside and "does not overlap" in prompts.ignored[0]


def test_view_axis_from_slice_views(scene, geometry):
    vol = make_volume(geometry)
    slice_node = slicer.vtkMRMLSliceNode()
    scene.AddNode(slice_node)
    axes = vol.ijk_to_ras_matrix()[:3, :3]
    for axis in range(3):
        normal = axes[:, axis] / np.linalg.norm(axes[:, axis])
        assert bridge.view_axis_from_normal(normal, vol) == axis
        assert bridge.view_axis_from_normal(-normal, vol) == axis
    slice_node.SetOrientation("Axial")
    expected = bridge.view_axis_from_normal([0, 0, 1], vol)
    assert bridge.view_axis_from_slice_node(slice_node, vol) == expected
    if geometry != "oblique_anisotropic":
        assert expected == 2  # axial views look along k for these volumes
    assert bridge.view_axis_from_slice_node(None, vol) is None
    assert bridge.view_axis_from_normal(None, vol) is None


# ---- segments ------------------------------------------------------------------------------------------------
def ball(shape, centre_kji, radius):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = centre_kji
    return (k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 <= radius**2


def make_segmentation(scene, volume_node, names=("target",)):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    ids = [bridge.add_segment(seg, n) for n in names]
    return seg, ids


def test_segment_written_on_the_right_voxels_and_round_trips(scene, geometry):
    volume = make_volume(geometry)
    node = bridge.volume_to_node(volume, scene, "vol")
    seg, (sid,) = make_segmentation(scene, node)
    mask = ball(volume.array.shape, (6, 8, 5), 4)
    mask[0, 0, 0] = True  # a corner voxel
    result = bridge.write_segment_mask(seg, sid, mask, node)
    assert result.voxels == mask.sum() and result.changed == mask.sum()
    back = bridge.segment_mask(seg, sid, node)
    assert np.array_equal(back, mask)
    # independent check: export through a labelmap and compare voxel positions in RAS
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(sid)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg, ids, labelmap, node)
    lab = bridge.volume_from_node(labelmap)
    assert lab.same_geometry(volume, tol=1e-6)
    assert np.array_equal(lab.array != 0, mask)
    # writing back what was read changes nothing; a one-voxel edit changes exactly that voxel
    assert bridge.write_segment_mask(seg, sid, back, node).changed == 0
    edited = back.copy()
    edited[6, 8, 5] = False  # the ball's centre
    again = bridge.write_segment_mask(seg, sid, edited, node)
    assert again.changed == 1 and again.voxels == mask.sum() - 1
    assert np.array_equal(bridge.segment_mask(seg, sid, node), edited)


def test_segmentation_without_geometry_gets_the_volumes(scene):
    volume = make_volume("oblique_anisotropic")
    node = bridge.volume_to_node(volume, scene, "vol")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    sid = bridge.add_segment(seg, "s")
    mask = ball(volume.array.shape, (5, 10, 8), 3)
    bridge.write_segment_mask(seg, sid, mask, node)
    assert np.array_equal(bridge.segment_mask(seg, sid, node), mask)


def test_wrong_mask_shape_and_unknown_segment_are_clear_errors(scene):
    volume = make_volume("anisotropic")
    node = bridge.volume_to_node(volume, scene, "vol")
    seg, (sid,) = make_segmentation(scene, node)
    with pytest.raises(bridge.InputError, match="shape"):
        bridge.write_segment_mask(seg, sid, np.zeros((3, 3, 3), bool), node)
    with pytest.raises(bridge.InputError, match="not found"):
        bridge.write_segment_mask(seg, "nope", np.zeros(volume.array.shape, bool), node)


@pytest.fixture
def three_segments(scene):
    """A target segment and two finished neighbours overlapping the model's proposed mask."""
    volume = make_volume("oblique_anisotropic")
    node = bridge.volume_to_node(volume, scene, "vol")
    seg, (target, left, right) = make_segmentation(scene, node, ("target", "left", "right"))
    shape = volume.array.shape
    left_mask = np.zeros(shape, bool)
    left_mask[:, :, :6] = True
    right_mask = np.zeros(shape, bool)
    right_mask[:, :, 11:] = True
    old_target = np.zeros(shape, bool)
    old_target[0:2, 0:3, 7:9] = True  # an existing bit of the target (refining)
    bridge.write_segment_mask(seg, left, left_mask, node)
    bridge.write_segment_mask(seg, right, right_mask, node)
    bridge.write_segment_mask(seg, target, old_target, node)
    proposed = np.zeros(shape, bool)
    proposed[3:9, 4:16, 2:14] = True  # overlaps both neighbours
    return dict(node=node, seg=seg, ids=(target, left, right), left=left_mask, right=right_mask, old=old_target,
                proposed=proposed)


MASK_CASES = ["everywhere", "outside_all", "outside_visible", "inside_single", "inside_all"]
OVERWRITE_CASES = ["none", "visible", "all"]


@pytest.mark.parametrize("overwrite", OVERWRITE_CASES)
@pytest.mark.parametrize("mask_mode", MASK_CASES)
def test_masking_and_overwrite_modes(three_segments, mask_mode, overwrite):
    t = three_segments
    seg, node = t["seg"], t["node"]
    target, left, right = t["ids"]
    seg.GetDisplayNode().SetSegmentVisibility(right, False)  # right is hidden
    modes = {
        "everywhere": (bridge.MASK_EVERYWHERE, ""),
        "outside_all": (bridge.MASK_OUTSIDE_ALL, ""),
        "outside_visible": (bridge.MASK_OUTSIDE_VISIBLE, ""),
        "inside_single": (bridge.MASK_INSIDE_SEGMENT, left),
        "inside_all": (bridge.MASK_INSIDE_ALL, ""),
    }
    mode, mask_segment = modes[mask_mode]
    allowed = {
        "everywhere": np.ones_like(t["left"]),
        "outside_all": ~(t["left"] | t["right"]),
        "outside_visible": ~t["left"],
        "inside_single": t["left"],
        "inside_all": t["left"] | t["right"],
    }[mask_mode]
    if mask_mode != "inside_single":  # Slicer's GenerateEditMask: the edited segment itself stays editable
        allowed = allowed | t["old"]
    overwrite_mode = {"none": bridge.OVERWRITE_NONE, "visible": bridge.OVERWRITE_VISIBLE,
                      "all": bridge.OVERWRITE_ALL}[overwrite]
    result = bridge.write_segment_mask(seg, target, t["proposed"], node, mode, mask_segment, overwrite_mode)
    expected_target = np.where(allowed, t["proposed"], t["old"])
    got_target = bridge.segment_mask(seg, target, node)
    assert np.array_equal(got_target, expected_target)
    added = expected_target & ~t["old"]
    expected_left = t["left"] & ~added if overwrite in ("visible", "all") else t["left"]
    expected_right = t["right"] & ~added if overwrite == "all" else t["right"]
    assert np.array_equal(bridge.segment_mask(seg, left, node), expected_left)
    assert np.array_equal(bridge.segment_mask(seg, right, node), expected_right)
    assert result.voxels == expected_target.sum()
    if mask_mode in ("outside_all", "outside_visible") or overwrite == "none":
        # the finished neighbour "left" (visible) is never changed by these settings
        assert np.array_equal(bridge.segment_mask(seg, left, node), t["left"])


def test_intensity_range_masking(scene):
    volume = make_volume("anisotropic")
    node = bridge.volume_to_node(volume, scene, "vol")
    seg, (sid,) = make_segmentation(scene, node)
    proposed = ball(volume.array.shape, (6, 10, 8), 5)
    bridge.write_segment_mask(seg, sid, proposed, node, intensity_range=(0, 100))
    expected = proposed & (volume.array >= 0) & (volume.array <= 100)
    assert np.array_equal(bridge.segment_mask(seg, sid, node), expected)


def test_other_segments_untouched_even_when_sharing_a_layer(scene):
    """Segments imported from one labelmap share a layer; writing one must not disturb the others."""
    volume = make_volume("axis_aligned_iso")
    node = bridge.volume_to_node(volume, scene, "vol")
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[2:6, 2:8, 2:8] = 1
    labels[6:10, 2:8, 2:8] = 2
    labelmap = bridge.volume_to_node(volume, scene, "labels", labelmap=True, array=labels)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    ids = list(seg.GetSegmentation().GetSegmentIDs())
    assert len(ids) == 2
    proposed = np.zeros(volume.array.shape, bool)
    proposed[4:8, 4:12, 4:12] = True  # overlaps segment 2
    bridge.write_segment_mask(seg, ids[0], proposed, node, overwrite_mode=bridge.OVERWRITE_NONE)
    assert np.array_equal(bridge.segment_mask(seg, ids[0], node), proposed)
    assert np.array_equal(bridge.segment_mask(seg, ids[1], node), labels == 2)


def test_float_masks_are_thresholded_at_one_half_and_nan_is_refused(scene):
    volume = make_volume("anisotropic")
    node = bridge.volume_to_node(volume, scene, "vol")
    seg, (sid,) = make_segmentation(scene, node)
    probability = np.zeros(volume.array.shape, np.float32)
    probability[2, 3, 4] = 0.3  # below one half: not set
    probability[5, 6, 7] = 0.7
    probability[6, 6, 7] = 0.5  # exactly one half: not set (the session's mask is probability > 0.5)
    bridge.write_segment_mask(seg, sid, probability, node)
    expected = np.zeros(volume.array.shape, bool)
    expected[5, 6, 7] = True
    assert np.array_equal(bridge.segment_mask(seg, sid, node), expected)
    probability[1, 1, 1] = np.nan
    with pytest.raises(bridge.InputError, match="NaN"):
        bridge.write_segment_mask(seg, sid, probability, node)
    assert np.array_equal(bridge.segment_mask(seg, sid, node), expected)  # unchanged by the refused write
