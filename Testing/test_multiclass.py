"""Multi-class models (SAMed, MA-SAM) in the module: one segment per class, named after the class, with undo.

A randomly initialised tiny SAMed stands in for the published weights (the plumbing is what is tested; the network
itself is tested against the published algorithm in SAMAdapt3DLib/tests/test_samed.py). In Slicer the label map
comes from the server (ServerClient.auto, which runs the same segment_all_classes); here it is computed in the test
process, and what is tested is the module's scene side.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from SAMAdapt3DSlicerLib import core
from SAMAdapt3DSlicerLib import scene_bridge as bridge
from samadapt3d.automatic import segment_all_classes
from samadapt3d.errors import InputError
from samadapt3d.families.samed import SYNAPSE_CLASSES, SAMedModel
from samadapt3d.volume import Volume


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(5)
    net = SAMedModel("vit_tiny", rank=4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.eval()


@pytest.fixture
def world(scene, model):
    rng = np.random.default_rng(0)
    array = (rng.normal(0, 120, (3, 40, 36)) + np.linspace(-200, 300, 36)).astype(np.int16)
    volume = Volume(array, spacing=(0.8, 0.8, 3.0), origin=(5.0, -3.0, 1.0))
    node = bridge.volume_to_node(volume, scene, "ct")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    return dict(volume=volume, node=node, seg=seg)


def test_every_class_becomes_a_named_segment_and_undo_restores(world, model):
    node, seg = world["node"], world["seg"]
    shape = world["volume"].array.shape
    # a segment the user already has for one class, and one unrelated segment
    liver_id = bridge.add_segment(seg, "liver")
    old_liver = np.zeros(shape, bool)
    old_liver[1, 5:9, 5:9] = True
    bridge.write_segment_mask(seg, liver_id, old_liver, node)
    tumour_id = bridge.add_segment(seg, "tumour")
    tumour = np.zeros(shape, bool)
    tumour[:, 20:30, 10:20] = True
    bridge.write_segment_mask(seg, tumour_id, tumour, node)

    labels, names = segment_all_classes(model, bridge.volume_from_node(node))
    assert tuple(names) == tuple(SYNAPSE_CLASSES)
    present = [n for n in range(1, len(names) + 1) if (labels == n).any()]
    assert len(present) >= 2, "the test needs a label map with several classes"

    write = core.write_classes(labels, names, node, seg)
    for n, name in enumerate(names, start=1):
        sid = bridge.segment_id_by_name(seg, name)
        if n in present or name == "liver":
            assert sid is not None, name
            np.testing.assert_array_equal(bridge.segment_mask(seg, sid, node), labels == n)
        else:
            assert sid is None, f"an empty class ({name}) should not add a segment"
    assert bridge.segment_id_by_name(seg, "liver") == liver_id  # reused, not duplicated
    np.testing.assert_array_equal(bridge.segment_mask(seg, tumour_id, node), tumour)
    assert "class segment" in write.summary()

    core.undo_classes(write, node, seg)
    ids = [seg.GetSegmentation().GetNthSegmentID(i) for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert sorted(ids) == sorted([liver_id, tumour_id])
    np.testing.assert_array_equal(bridge.segment_mask(seg, liver_id, node), old_liver)
    np.testing.assert_array_equal(bridge.segment_mask(seg, tumour_id, node), tumour)


def test_label_map_that_does_not_fit_is_refused(world):
    node, seg = world["node"], world["seg"]
    with pytest.raises(InputError, match="does not match"):
        bridge.write_class_segments(seg, node, np.zeros((2, 2, 2), np.uint8), ["a"])
    with pytest.raises(InputError, match="class names"):
        bridge.write_class_segments(seg, node, np.full(world["volume"].array.shape, 3, np.uint8), ["a", "b"])
    assert seg.GetSegmentation().GetNumberOfSegments() == 0
