"""SAMAdapt3D's self-test: runs inside 3D Slicer (Developer mode: Reload and Test, or ctest -R py_SAMAdapt3D).
SAMAdapt3D.py imports the class, so Slicer finds it as <Module>Test.

It passes in a clean Slicer: the scene parts need nothing installed; the model check needs the server's
dependencies (PyTorch and the default weights, which come from the network) and is skipped, with the reason, when
they are missing. It never installs or downloads anything and never imports torch in Slicer's process.
"""
from __future__ import annotations

import logging
import unittest

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from SAMAdapt3DSlicerLib.effect_session import DEFAULT_MODEL

#: the embedded model must find the test ball this well from one click at its centre
MIN_DICE = 0.7


class SAMAdapt3DTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.skipped = []
        for test in (self.test_SceneBridge, self.test_OtherSegmentsKeptOnAFinerGrid, self.test_ClassesWriteAndUndo,
                     self.test_LibraryShippedWithTheModule, self.test_EmbeddedModelThroughTheServer):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as reason:  # needs what a clean Slicer lacks (network, dependencies)
                self.skipped.append(f"{test.__name__}: {reason}")
                logging.warning(f"SAMAdapt3D self-test skipped {test.__name__}: {reason}")
        self.delayDisplay("Test passed" + (f" ({len(self.skipped)} skipped: {'; '.join(self.skipped)})"
                                           if self.skipped else ""))

    @staticmethod
    def _volume(array, spacing=(1.0, 1.0, 1.0)):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        slicer.util.updateVolumeFromArray(node, array)
        node.SetSpacing(*spacing)
        return node

    def test_SceneBridge(self):
        """Volume geometry and a RAS click through the bridge agree with Slicer's IJKToRAS."""
        import numpy as np
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

        node = self._volume(np.zeros((5, 6, 7), dtype=np.int16), (0.5, 0.75, 2.0))
        node.SetOrigin(10, -5, 3)
        volume = bridge.volume_from_node(node)
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        ras = m.MultiplyPoint([3, 2, 1, 1])[:3]
        np.testing.assert_allclose(volume.physical_to_index(ras, "ras"), [3, 2, 1], atol=1e-6)

    def test_OtherSegmentsKeptOnAFinerGrid(self):
        """A segmentation on a grid twice as fine as the volume: writing one segment keeps a 1-voxel sheet."""
        import numpy as np
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

        volumeNode = self._volume(np.zeros((8, 10, 12), dtype=np.int16), (2.0, 2.0, 2.0))
        fine = self._volume(np.zeros((16, 20, 24), dtype=np.uint8))
        fine.SetOrigin(*[o - 0.5 for o in volumeNode.GetOrigin()])
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(fine)
        sheet = np.zeros((16, 20, 24), np.uint8)
        sheet[7, 2:-2, 2:-2] = 1
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.util.updateVolumeFromArray(labelmap, sheet)
        labelmap.SetOrigin(fine.GetOrigin())
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode)
        from SAMAdapt3DSlicerLib import segment_io

        sheetID = segmentationNode.GetSegmentation().GetNthSegmentID(0)
        before = segment_io.own_grid(segmentationNode, sheetID)
        self.assertEqual(before.count, int(sheet.sum()))
        targetID = bridge.add_segment(segmentationNode, "target")
        mask = np.zeros((8, 10, 12), bool)
        mask[0:2, 0:2, 0:2] = True  # away from the sheet
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        bridge.write_segment_mask(segmentationNode, targetID, mask, volumeNode)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        self.assertTrue(segment_io.own_grid(segmentationNode, sheetID).same_as(before))
        self.assertEqual(int(bridge.segment_mask(segmentationNode, targetID, volumeNode).sum()), int(mask.sum()))

    def test_ClassesWriteAndUndo(self):
        """'Segment all classes' scene path: one segment per class by name, an existing one reused, undo."""
        import numpy as np
        from SAMAdapt3DSlicerLib import core
        from SAMAdapt3DSlicerLib import scene_bridge as bridge

        volumeNode = self._volume(np.zeros((6, 20, 20), dtype=np.int16))
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        liverID = bridge.add_segment(segmentationNode, "liver")
        labels = np.zeros((6, 20, 20), np.uint8)
        labels[1:3, 2:8, 2:8] = 1
        labels[3:5, 10:18, 10:18] = 2
        write = core.write_classes(labels, ["liver", "spleen"], volumeNode, segmentationNode)
        self.assertEqual(bridge.segment_id_by_name(segmentationNode, "liver"), liverID)
        self.assertEqual(int(bridge.segment_mask(segmentationNode, liverID, volumeNode).sum()), int((labels == 1).sum()))
        self.assertIsNotNone(bridge.segment_id_by_name(segmentationNode, "spleen"))
        core.undo_classes(write, volumeNode, segmentationNode)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertEqual(int(bridge.segment_mask(segmentationNode, liverID, volumeNode).sum()), 0)

    def test_LibraryShippedWithTheModule(self):
        """The extension carries SAMAdapt3DLib; its torch-free client imports in Slicer's Python."""
        import importlib

        from SAMAdapt3DSlicerLib import dependencies
        from SAMAdapt3DSlicerLib.logic import MODULE_DIR

        self.assertIsNotNone(dependencies.put_library_on_path(MODULE_DIR), "SAMAdapt3DLib is not installed with the module")
        client = importlib.import_module("samadapt3d.client")
        self.assertTrue(hasattr(client, "LocalServer"))

    def test_EmbeddedModelThroughTheServer(self):
        """One click at the centre of a bright ball: the embedded LiteMedSAM, run by a local server started with
        the server's Python, segments it (Dice against the ball)."""
        import numpy as np
        from SAMAdapt3DSlicerLib import dependencies, scene_bridge as bridge, server_control
        from SAMAdapt3DSlicerLib.logic import slicer_python

        python = slicer_python()  # a server of its own: the module's settings and server are left alone
        environment = dependencies.probe(python)
        if not environment.ready:
            raise unittest.SkipTest(f"needs the server's dependencies ({', '.join(environment.missing())}: "
                                    "network); install them in the module's Dependencies section")
        k, j, i = np.ogrid[:24, :64, :64]
        ball = (k - 12) ** 2 + ((j - 32) / 2.0) ** 2 + ((i - 32) / 2.0) ** 2 <= 8 ** 2  # 1 x 0.5 x 0.5 mm voxels
        array = np.where(ball, 600, -100).astype(np.int16) + np.random.default_rng(0).normal(0, 20, ball.shape).astype(np.int16)
        volumeNode = self._volume(array, (0.5, 0.5, 1.0))
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentID = bridge.add_segment(segmentationNode, "ball")
        server = server_control.ServerControl(python)
        try:
            self.delayDisplay("Starting a local server and the embedded model")
            session = server.session_opener(DEFAULT_MODEL, "auto")
            session.set_image(bridge.volume_from_node(volumeNode))
            mask = session.add_point((32, 32, 12))
            bridge.write_segment_mask(segmentationNode, segmentID, mask, volumeNode)
        finally:
            server.stop()
        got = bridge.segment_mask(segmentationNode, segmentID, volumeNode)
        dice = 2.0 * (got & ball).sum() / max(got.sum() + ball.sum(), 1)
        self.assertGreater(dice, MIN_DICE, f"Dice {dice:.3f}")
