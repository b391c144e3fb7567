"""SAMAdapt3D's self-test: runs inside 3D Slicer (Developer mode: Reload and Test, or ctest -R py_SAMAdapt3D).
SAMAdapt3D.py imports the class, so Slicer finds it as <Module>Test."""
from __future__ import annotations

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from SAMAdapt3DSlicerLib.logic import SAMAdapt3DLogic


#
# SAMAdapt3DTest
#
class SAMAdapt3DTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode: Reload and Test, or ctest -R py_SAMAdapt3D)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SceneBridge()
        self.setUp()
        self.test_EmbeddedModelOnCTChest()
        self.setUp()
        self.test_MultiClassModelWritesOneSegmentPerClass()

    def test_SceneBridge(self):
        """Volume geometry and a RAS click through the bridge agree with Slicer's IJKToRAS."""
        import numpy as np
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

        self.delayDisplay("Scene bridge")
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        slicer.util.updateVolumeFromArray(node, np.zeros((5, 6, 7), dtype=np.int16))
        node.SetSpacing(0.5, 0.75, 2.0)
        node.SetOrigin(10, -5, 3)
        volume = bridge.volume_from_node(node)
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        ras = m.MultiplyPoint([3, 2, 1, 1])[:3]
        np.testing.assert_allclose(volume.physical_to_index(ras, "ras"), [3, 2, 1], atol=1e-6)

    def test_EmbeddedModelOnCTChest(self):
        """CTChest with a 10 mm-radius ball of contrast (600 HU) inserted in the mediastinum, so the answer is
        known: one click at its centre must give a segment of about the ball's volume, centred on it, and a
        finished neighbouring segment stays untouched under the Segment Editor's "outside all segments" masking."""
        import numpy as np
        import SampleData
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

        logic = SAMAdapt3DLogic()
        missing = logic.missingDependencies()
        if missing:
            logic.installDependencies(missing)
        self.delayDisplay("Loading CTChest")
        volumeNode = SampleData.SampleDataLogic().downloadSample("CTChest")
        self.assertIsNotNone(volumeNode)
        array = slicer.util.arrayFromVolume(volumeNode)
        volume = bridge.volume_from_node(volumeNode)
        centre = np.array(volume.size_ijk) // 2  # (i, j, k)
        radiusMm = 10.0
        ijkToRas = bridge.ijk_to_world_ras_matrix(volumeNode)
        reach = np.ceil(radiusMm / volume.spacing).astype(int) + 1  # voxels per axis (i, j, k) around the centre
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, volume.size_ijk)
        k, j, i = np.mgrid[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        offsetsMm = (np.stack([i, j, k], axis=-1) - centre) @ ijkToRas[:3, :3].T
        ball = np.zeros(array.shape, bool)
        ball[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = np.linalg.norm(offsetsMm, axis=-1) <= radiusMm
        array[ball] = 600
        slicer.util.arrayFromVolumeModified(volumeNode)

        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentID = bridge.add_segment(segmentationNode, "ball")
        neighbourID = bridge.add_segment(segmentationNode, "finished")
        neighbour = np.zeros(array.shape, bool)
        neighbour[:, :, centre[0] + 4:] = True  # covers the ball's right part (i > centre + 4)
        bridge.write_segment_mask(segmentationNode, neighbourID, neighbour, volumeNode)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
        editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)

        p = logic.getParameterNode()
        p.inputVolume = volumeNode
        p.segmentation = segmentationNode
        p.segmentID = segmentID
        p.model = "litemedsam"
        p.device = "auto"
        logic.ensurePromptNodes(p)
        p.positivePoints.AddControlPoint(*(ijkToRas @ np.r_[centre, 1.0])[:3])

        self.delayDisplay("Running the embedded model")
        result = logic.segmentNow(p, viewAxis=2, segmentEditorNode=editorNode)
        self.assertIsNotNone(result)
        got = bridge.segment_mask(segmentationNode, segmentID, volumeNode)
        expected = ball & ~neighbour
        voxels = int(got.sum())
        self.assertGreater(voxels, 0.5 * expected.sum(), f"{voxels} voxels, expected about {expected.sum()}")
        self.assertLess(voxels, 2.0 * expected.sum(), f"{voxels} voxels, expected about {expected.sum()}")
        dice = 2.0 * (got & expected).sum() / (got.sum() + expected.sum())
        self.assertGreater(dice, 0.7, f"Dice {dice:.3f}")
        centroid = np.argwhere(got).mean(axis=0)[::-1]  # (i, j, k)
        distanceMm = np.linalg.norm(ijkToRas[:3, :3] @ (centroid - centre))
        self.assertLess(distanceMm, 0.5 * radiusMm, f"centroid {distanceMm:.1f} mm from the ball's centre")
        self.assertFalse((got & neighbour).any(), "the masked neighbour's voxels were written")
        self.assertTrue(np.array_equal(bridge.segment_mask(segmentationNode, neighbourID, volumeNode), neighbour))

        # a click outside the volume is ignored with a message and changes nothing
        p.positivePoints.AddControlPoint(*(ijkToRas @ np.r_[centre + [0, 0, 10 * volume.size_ijk[2]], 1.0])[:3])
        request = logic.segmenter().make_request(volumeNode, segmentationNode, segmentID, p.positivePoints,
                                                 p.negativePoints, p.box)
        self.assertTrue(any("outside the volume" in m for m in request.messages))
        self.assertIsNone(logic.segmenter().compute(request))

        # undo returns to the empty segment
        self.assertIsNotNone(logic.segmentNow(p, action="undo", segmentEditorNode=editorNode))
        self.assertEqual(int(bridge.segment_mask(segmentationNode, segmentID, volumeNode).sum()), 0)
        self.delayDisplay("Test passed")

    def test_MultiClassModelWritesOneSegmentPerClass(self):
        """A (randomly initialised, tiny) SAMed: 'Segment all classes' adds one segment per class present, named
        after the class; an existing segment of a class's name is reused; undo puts everything back."""
        import numpy as np
        import torch
        from SAMAdapt3DSlicerLib import scene_bridge as bridge
        from samadapt3d.families.samed import SAMedModel

        logic = SAMAdapt3DLogic()
        torch.manual_seed(5)
        model = SAMedModel("vit_tiny", rank=4)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        rng = np.random.default_rng(0)
        slicer.util.updateVolumeFromArray(
            volumeNode, (rng.normal(0, 120, (3, 40, 36)) + np.linspace(-200, 300, 36)).astype(np.int16))
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        liverID = bridge.add_segment(segmentationNode, "liver")
        p = logic.getParameterNode()
        p.inputVolume = volumeNode
        p.segmentation = segmentationNode
        p.model = "tiny-samed"
        p.device = "cpu"
        logic.segmenter().set_model(model.eval(), logic.modelKey(p))
        write = logic.segmentClassesNow(p)
        names = [name for name, (_, voxels, _) in write.written.items() if voxels]
        self.assertGreaterEqual(len(names), 2)
        for name in names:
            self.assertIsNotNone(bridge.segment_id_by_name(segmentationNode, name))
        self.assertEqual(bridge.segment_id_by_name(segmentationNode, "liver"), liverID)
        self.assertTrue(logic.canUndo())
        logic.run(p, action="undo")
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
