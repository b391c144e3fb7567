"""Writing one segment never damages the others, whatever grid the segmentation is on (issue 13, part 5).

The segmentation's grid is finer, coarser or oblique relative to the volume the model sees; segments share layers,
overlap, or are 1 voxel thick. Every other segment is compared voxel for voxel ON ITS OWN GRID before and after,
with an oracle written here from Slicer's own calls (GetBinaryLabelmapRepresentation + ImageToWorld), not from the
code under test. The scene's node count stays the same after many updates.
"""
from __future__ import annotations

import numpy as np
import pytest
import vtk
from vtk.util import numpy_support

import slicer
from SAMAdapt3DSlicerLib import core
from SAMAdapt3DSlicerLib import scene_bridge as bridge
from samadapt3d.volume import Volume

VOLUME_SHAPE = (10, 12, 14)  # [k, j, i]
VOLUME_SPACING = (2.0, 2.0, 2.0)


def rotation_z(degrees):
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


#: segmentation grids relative to the volume (spacing scale, extra rotation)
GRIDS = {
    "same": (1.0, np.eye(3)),
    "finer": (0.5, np.eye(3)),
    "coarser": (1.5, np.eye(3)),
    "oblique_finer": (0.7, rotation_z(25.0)),
}


def make_volume_node(scene):
    array = np.random.default_rng(3).integers(0, 100, VOLUME_SHAPE).astype(np.int16)
    volume = Volume(array, spacing=VOLUME_SPACING, origin=(-10.0, 4.0, 2.0), direction=np.eye(3))
    return bridge.volume_to_node(volume, scene, "vol"), volume


def make_grid_node(scene, volume, grid):
    """A volume node whose geometry is the segmentation's grid: covers the same box as the volume."""
    scale, rot = GRIDS[grid]
    spacing = np.asarray(VOLUME_SPACING) * scale
    size = np.ceil(np.asarray(VOLUME_SHAPE[::-1]) / scale).astype(int) + (2 if grid.startswith("oblique") else 0)
    origin = volume.origin - (0.0 if not grid.startswith("oblique") else spacing)
    ref = Volume(np.zeros(size[::-1], np.uint8), spacing=spacing, origin=origin, direction=rot)
    return bridge.volume_to_node(ref, scene, f"grid-{grid}"), ref


def add_on_grid(seg_node, grid_volume, mask, name):
    """A segment made by Slicer's own API from a bool array on the segmentation's grid (the oracle side)."""
    image = slicer.vtkOrientedImageData()
    k, j, i = mask.shape
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.reshape(-1).astype(np.uint8)
    m = vtk.vtkMatrix4x4()
    ijk_to_ras = grid_volume.ijk_to_ras_matrix()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ijk_to_ras[r, c]))
    image.SetImageToWorldMatrix(m)
    return seg_node.AddSegmentFromBinaryLabelmapRepresentation(image, name)


def world_voxels(seg_node, segment_id) -> set:
    """Oracle: the world positions (0.01 mm) of a segment's voxels on its own grid."""
    image = slicer.vtkOrientedImageData()
    assert seg_node.GetBinaryLabelmapRepresentation(segment_id, image)
    ext = image.GetExtent()
    if ext[0] > ext[1] or ext[2] > ext[3] or ext[4] > ext[5]:
        return set()
    dims = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims)
    kji = np.argwhere(values != 0)
    ijk = np.c_[kji[:, ::-1] + [ext[0], ext[2], ext[4]], np.ones(len(kji))]
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    matrix = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    return {tuple(p) for p in np.round((matrix @ ijk.T).T[:, :3], 2)}


def grid_masks(shape):
    """Other segments on the segmentation's grid: a 1-voxel sheet, a ball, a slab overlapping the proposal."""
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = np.array(shape) // 2
    sheet = np.zeros(shape, bool)
    sheet[c[0], 1:-1, 1:-1] = True
    ball = (k - c[0]) ** 2 + (j - c[1] // 2) ** 2 + (i - c[2] // 2) ** 2 <= (min(shape) // 4) ** 2
    slab = np.zeros(shape, bool)
    slab[:, :, c[2]:] = True
    return {"sheet": sheet, "ball": ball, "slab": slab}


def proposal():
    """The model's mask on the volume grid: a box crossing the sheet, the ball and the slab."""
    mask = np.zeros(VOLUME_SHAPE, bool)
    mask[2:8, 3:9, 4:11] = True
    return mask


@pytest.fixture(params=sorted(GRIDS))
def setup(request, scene):
    node, volume = make_volume_node(scene)
    grid_node, grid_volume = make_grid_node(scene, volume, request.param)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(grid_node)
    others = {name: add_on_grid(seg, grid_volume, mask, name) for name, mask in grid_masks(grid_volume.array.shape).items()}
    target = bridge.add_segment(seg, "target")
    return dict(grid=request.param, node=node, seg=seg, others=others, target=target)


def test_other_segments_unchanged_on_their_own_grid(setup):
    seg, node, target = setup["seg"], setup["node"], setup["target"]
    before = {sid: world_voxels(seg, sid) for sid in setup["others"].values()}
    assert all(before.values())
    bridge.write_segment_mask(seg, target, proposal(), node)
    for name, sid in setup["others"].items():
        assert world_voxels(seg, sid) == before[sid], f"{name} changed ({setup['grid']} grid)"
    got = bridge.segment_mask(seg, target, node)
    if setup["grid"] in ("same", "finer"):  # the segmentation's grid can hold the proposal exactly
        assert np.array_equal(got, proposal())
    else:
        dice = 2 * (got & proposal()).sum() / (got.sum() + proposal().sum())
        assert dice > 0.7, dice  # a 6-voxel box on a 1.5x coarser grid: nearest-voxel quantisation
    # a second click (refinement) keeps the others too
    smaller = proposal()
    smaller[:, :, 9:] = False
    bridge.write_segment_mask(seg, target, smaller, node)
    for sid in setup["others"].values():
        assert world_voxels(seg, sid) == before[sid]


def test_refining_keeps_the_target_s_own_fine_voxels_outside_the_change(setup):
    seg, node, target = setup["seg"], setup["node"], setup["target"]
    bridge.write_segment_mask(seg, target, proposal(), node)
    first = world_voxels(seg, target)
    grown = proposal()
    grown[2:8, 3:9, 11:13] = True  # only voxels at i = 11, 12 change
    bridge.write_segment_mask(seg, target, grown, node)
    assert first <= world_voxels(seg, target)


def test_overwrite_removes_only_the_added_voxels_from_others(setup):
    seg, node, target = setup["seg"], setup["node"], setup["target"]
    before = {sid: world_voxels(seg, sid) for sid in setup["others"].values()}
    bridge.write_segment_mask(seg, target, proposal(), node, overwrite_mode=bridge.OVERWRITE_ALL)
    after_target = world_voxels(seg, target)
    for name, sid in setup["others"].items():
        after = world_voxels(seg, sid)
        assert after <= before[sid], name  # nothing added, nothing moved to another grid
        assert not (after & after_target), name  # no overlap left
        assert before[sid] - after <= after_target, name  # only what the target took


def test_segment_all_classes_keeps_other_segments(setup):
    seg, node = setup["seg"], setup["node"]
    before = {sid: world_voxels(seg, sid) for sid in setup["others"].values()}
    labels = np.zeros(VOLUME_SHAPE, np.uint8)
    labels[1:4, 2:6, 2:6] = 1
    labels[5:9, 6:10, 7:12] = 2
    write = core.write_classes(labels, ["liver", "spleen"], node, seg)
    assert sorted(write.written) == ["liver", "spleen"]
    for sid in setup["others"].values():
        assert world_voxels(seg, sid) == before[sid]
    core.undo_classes(write, node, seg)
    assert seg.GetSegmentation().GetNumberOfSegments() == 4
    for sid in setup["others"].values():
        assert world_voxels(seg, sid) == before[sid]


def disjoint_proposal():
    """A box on the volume grid that touches none of the shared-layer segments (so Slicer keeps the layer shared)."""
    mask = np.zeros(VOLUME_SHAPE, bool)
    mask[0:2, 0:2, 11:14] = True
    return mask


@pytest.mark.parametrize("make_proposal", [proposal, disjoint_proposal], ids=["overlapping", "disjoint"])
def test_shared_layer_segments_survive_on_a_finer_grid(scene, make_proposal):
    """Segments imported from one labelmap (one shared layer) on a grid finer than the volume."""
    node, volume = make_volume_node(scene)
    grid_node, grid_volume = make_grid_node(scene, volume, "finer")
    shape = grid_volume.array.shape
    labels = np.zeros(shape, np.uint8)
    labels[shape[0] // 2, 2:-2, 2:-2] = 1  # a 1-voxel sheet
    labels[2:9, 4:16, 4:20] = np.where(labels[2:9, 4:16, 4:20] == 0, 2, labels[2:9, 4:16, 4:20])
    labels[12:18, 14:22, 6:26] = 3
    labelmap = bridge.volume_to_node(grid_volume, scene, "labels", labelmap=True, array=labels)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(grid_node)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    ids = list(seg.GetSegmentation().GetSegmentIDs())
    assert len(ids) == 3 and seg.GetSegmentation().GetNumberOfLayers() == 1
    before = {sid: world_voxels(seg, sid) for sid in ids}
    assert len(before[ids[0]]) == (shape[1] - 4) * (shape[2] - 4)
    # rewrite the middle segment with a box on the volume grid (overlapping the other two, or not)
    bridge.write_segment_mask(seg, ids[1], make_proposal(), node)
    assert np.array_equal(bridge.segment_mask(seg, ids[1], node), make_proposal())
    for sid in (ids[0], ids[2]):
        assert world_voxels(seg, sid) == before[sid]


def test_node_count_unchanged_after_many_updates(scene):
    node, volume = make_volume_node(scene)
    grid_node, grid_volume = make_grid_node(scene, volume, "finer")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(grid_node)
    for name, mask in grid_masks(grid_volume.array.shape).items():
        add_on_grid(seg, grid_volume, mask, name)
    target = bridge.add_segment(seg, "target")
    count = scene.GetNumberOfNodes()
    mask = proposal()
    for n in range(10):
        mask[2:8, 3:9, 4 + n % 3:11] = True
        bridge.write_segment_mask(seg, target, mask, node, overwrite_mode=bridge.OVERWRITE_VISIBLE)
        bridge.segment_mask(seg, target, node)
        bridge.editable_mask(seg, node, target, bridge.MASK_OUTSIDE_ALL)
    assert scene.GetNumberOfNodes() == count


def test_write_result_reads_the_segment_editor_node(setup, scene):
    """core.write_result takes the masking settings from a real vtkMRMLSegmentEditorNode."""
    seg, node, target = setup["seg"], setup["node"], setup["target"]
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMaskMode(bridge.MASK_OUTSIDE_ALL)
    editor.SetOverwriteMode(bridge.OVERWRITE_ALL)  # overwrite is moot: nothing may be added inside others
    before = {sid: world_voxels(seg, sid) for sid in setup["others"].values()}
    result = core.write_result(proposal(), node, seg, target, editor)
    for sid in setup["others"].values():
        assert world_voxels(seg, sid) == before[sid]
    assert result.blocked > 0 and not result.overwritten
    assert not (world_voxels(seg, target) & set().union(*before.values()))
