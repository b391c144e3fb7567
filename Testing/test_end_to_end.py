"""Scene -> bridge -> InteractiveSession -> model -> segment, headless (slicer-core), as the module runs it.

A small deterministic crop model (intensity similarity to the clicked voxel, flood-filled from the click) makes the
expected segment exact, so the test checks the plumbing: RAS clicks on an oblique anisotropic volume, refinement
from an existing segment, masking, undo / redo, moved / deleted prompts, prompts outside the volume. A second test
runs the embedded default model (LiteMedSAM) once on a synthetic ball.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import vtk

from SAMAdapt3DSlicerLib import core
from SAMAdapt3DSlicerLib import scene_bridge as bridge
from samadapt3d.families.base import CropModel
from samadapt3d.preprocess import Preset
from samadapt3d.volume import Volume

OBLIQUE = np.array([[0.866, -0.5, 0.0], [0.5, 0.866, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, 0.94, -0.342], [0.0, 0.342, 0.94]])


class SimilarityModel(CropModel):
    """p > 0.5 on the 26-connected region of voxels within 50 of the clicked voxel's intensity."""

    family = "test-similarity"

    def __init__(self):
        super().__init__(Preset("test", spacing=None, orientation="LPS", normalization="none"))
        self.crop_size = (24, 24, 24)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode(self, crop):
        return crop.float() * self.scale

    def decode(self, features, points):
        out = torch.zeros_like(features)
        size = torch.tensor(features.shape[2:])
        for b in range(features.shape[0]):
            image = features[b, 0]
            for point in points[b]:
                idx = torch.minimum(torch.clamp(torch.floor(point + 0.5).long(), min=0), size - 1)
                allowed = ((image - image[idx[0], idx[1], idx[2]]).abs() < 50).float()
                region = torch.zeros_like(allowed)
                region[idx[0], idx[1], idx[2]] = 1.0
                while True:
                    grown = torch.maximum(F.max_pool3d(region[None, None], 3, 1, 1)[0, 0] * allowed, region)
                    if torch.equal(grown, region):
                        break
                    region = grown
                out[b, 0] = torch.maximum(out[b, 0], region)
        return out


def ball(shape, centre_kji, radius):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (k - centre_kji[0]) ** 2 + (j - centre_kji[1]) ** 2 + (i - centre_kji[2]) ** 2 <= radius**2


@pytest.fixture
def world(scene):
    shape = (14, 20, 18)  # [k, j, i]
    target = ball(shape, (7, 9, 8), 3.5)
    array = np.where(target, 400, 0).astype(np.int16)
    volume = Volume(array, spacing=(0.9, 1.1, 2.5), origin=(10.0, -20.0, 5.0), direction=OBLIQUE)
    node = bridge.volume_to_node(volume, scene, "vol")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    sid = bridge.add_segment(seg, "tumour")
    other = bridge.add_segment(seg, "finished")
    other_mask = np.zeros(shape, bool)
    other_mask[:, :, 10:] = True  # covers part of the ball
    bridge.write_segment_mask(seg, other, other_mask, node)
    pos = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    neg = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.RemoveAllControlPoints()
    segmenter = core.Segmenter()
    segmenter.set_model(SimilarityModel())

    def ras(ijk):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return m.MultiplyPoint([*map(float, ijk), 1.0])[:3]

    def run(action="sync", settings=None, view_axis=None):
        request = segmenter.make_request(node, seg, sid, pos, neg, None, view_axis=view_axis, action=action)
        mask = segmenter.compute(request)
        if mask is not None:
            core.write_result(mask, node, seg, sid, settings)
        return request, mask

    return dict(volume=volume, node=node, seg=seg, sid=sid, other=other, other_mask=other_mask, target=target,
                pos=pos, neg=neg, ras=ras, run=run, segmenter=segmenter)


def test_click_refine_undo_redo_and_masking(world):
    w = world
    seg, node, sid = w["seg"], w["node"], w["sid"]
    outside_all = dict(mask_mode=bridge.MASK_OUTSIDE_ALL, overwrite_mode=bridge.OVERWRITE_NONE)
    # a click at the ball's centre (i, j, k) = (8, 9, 7), given in RAS as Slicer's markups are
    w["pos"].AddControlPoint(*w["ras"]((8, 9, 7)))
    request, mask = w["run"](settings=outside_all, view_axis=2)
    assert not request.messages and mask is not None
    assert np.array_equal(mask, w["target"])  # the session found the ball
    expected = w["target"] & ~w["other_mask"]  # the finished segment is not editable
    assert np.array_equal(bridge.segment_mask(seg, sid, node), expected)
    assert np.array_equal(bridge.segment_mask(seg, w["other"], node), w["other_mask"])

    # nothing changed in the scene -> no model run, no write
    assert w["run"](settings=outside_all)[1] is None

    # a click outside the volume is reported and ignored
    w["pos"].AddControlPoint(*w["ras"]((8, 9, 40)))
    request, mask = w["run"](settings=outside_all)
    assert mask is None and any("outside the volume" in m for m in request.messages)
    w["pos"].RemoveNthControlPoint(1)

    # a negative click in the background keeps the ball
    w["neg"].AddControlPoint(*w["ras"]((1, 1, 1)))
    request, mask = w["run"](settings=outside_all)
    assert np.array_equal(mask, w["target"])
    assert len(w["segmenter"].session.prompts) == 2

    # moving the positive point to the background re-runs with the whole list: the ball is gone
    w["pos"].SetNthControlPointPositionWorld(0, *w["ras"]((2, 2, 2)))
    _, mask = w["run"](settings=outside_all)
    assert mask is not None and not (mask & w["target"]).any()

    # undo twice: back to the ball
    segmenter = w["segmenter"]
    _, mask = w["run"]("undo", settings=outside_all)
    assert np.array_equal(mask, w["target"])
    assert np.array_equal(bridge.segment_mask(seg, sid, node), expected)
    _, mask = w["run"]("redo", settings=outside_all)
    assert not (mask & w["target"]).any()
    pos, neg, box = segmenter.session_prompts_ras()
    np.testing.assert_allclose(pos[0], w["ras"]((2, 2, 2)), atol=1e-6)  # markups can be rewritten from these
    assert len(neg) == 1 and box is None
    assert np.array_equal(bridge.segment_mask(seg, w["other"], node), w["other_mask"])


def test_refining_an_existing_segment_starts_from_its_voxels(world):
    w = world
    seg, node, sid = w["seg"], w["node"], w["sid"]
    existing = np.zeros(w["target"].shape, bool)
    existing[0:2, 0:2, 0:2] = True
    bridge.write_segment_mask(seg, sid, existing, node)
    request = w["segmenter"].make_request(node, seg, sid, w["pos"], w["neg"])
    assert request.seed is not None and np.array_equal(request.seed, existing)
    w["pos"].AddControlPoint(*w["ras"]((8, 9, 7)))
    _, mask = w["run"]()
    assert np.array_equal(mask, w["target"] | existing)  # a positive click adds to the seed
    assert np.array_equal(bridge.segment_mask(seg, sid, node), w["target"] | existing)
    # "clear prompts": back to the segment as it was before the prompts, not an empty segment
    _, mask = w["run"]("reset")
    assert np.array_equal(mask, existing) and np.array_equal(bridge.segment_mask(seg, sid, node), existing)


def test_embedded_default_model_segments_a_ball(scene):
    """LiteMedSAM (the embedded default) once through the whole path; CPU, a few seconds."""
    try:
        from samadapt3d.session import make_engine
        import samadapt3d

        model = samadapt3d.load_model(core.DEFAULT_MODEL, device="cpu")
        make_engine(model)
    except (ImportError, ModuleNotFoundError) as exc:
        pytest.skip(f"the embedded model's engine is not in samadapt3d yet: {exc}")
    shape = (24, 64, 64)
    target = ball(shape, (12, 32, 32), 9)
    rng = np.random.default_rng(0)
    array = (np.where(target, 200.0, -100.0) + rng.normal(0, 5, shape)).astype(np.int16)
    volume = Volume(array, spacing=(1.0, 1.0, 2.0), origin=(0, 0, 0))
    node = bridge.volume_to_node(volume, scene, "ct")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    sid = bridge.add_segment(seg, "ball")
    pos = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    pos.AddControlPoint(*m.MultiplyPoint([32.0, 32.0, 12.0, 1.0])[:3])
    segmenter = core.Segmenter()
    segmenter.set_model(model)
    # the module prepares as soon as volume and model are chosen: every slice along k (largest spacing) embedded
    assert segmenter.prepare(bridge.volume_from_node(node), core.volume_key(node)) == shape[0]
    embedded = segmenter.session.engine.stats["embedded"]
    request = segmenter.make_request(node, seg, sid, pos, None, view_axis=2)
    mask = segmenter.compute(request)
    assert segmenter.session.engine.stats["embedded"] == embedded  # the click only decoded
    core.write_result(mask, node, seg, sid)
    got = bridge.segment_mask(seg, sid, node)
    dice = 2 * (got & target).sum() / (got.sum() + target.sum())
    assert got[12, 32, 32] and dice > 0.6, dice
