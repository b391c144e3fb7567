"""Previews of a running click in the effect: shown in a scratch segmentation node (real slicer-core scene), never in
the segment; the result replaces them with one undo step; a cancel leaves the segment and the scene as they were."""
from __future__ import annotations

import threading

import numpy as np

from harness import scenes
from harness.fixtures import MODULE_DIR, effect_idle, slicer_gui, toy_crop_model, wait_for  # noqa: F401
from harness.mrml_widgets import SliceViewWidget
from SAMAdapt3DSlicerLib import effect_session, segment_io
from SAMAdapt3DSlicerLib.effect_preview import PREVIEW_NODE_NAME, SegmentPreview

from test_effect import click, slice_through


def _preview_nodes(scene):
    return [n for n in scene.GetNodesByClass("vtkMRMLSegmentationNode") if n.GetName() == PREVIEW_NODE_NAME]


def test_a_preview_node_shows_the_mask_and_goes_away(scene):
    volume = scenes.add_volume(scene, scenes.toy_image())
    segmentation, ids = scenes.add_segmentation(scene, volume)
    source = segment_io.volume_image(volume, segmentation)
    preview = SegmentPreview(scene)
    half = np.zeros(scenes.SHAPE_KJI, bool)
    half[3:6, 4:10, 4:10] = True
    preview.show(half, source, segmentation, (0.2, 0.8, 0.2))
    (node,) = _preview_nodes(scene)
    assert node.GetHideFromEditors() and not node.GetSaveWithScene()
    (segment_id,) = node.GetSegmentation().GetSegmentIDs()
    assert np.array_equal(scenes.segment_array(node, segment_id, volume), half)
    assert np.allclose(node.GetSegmentation().GetSegment(segment_id).GetColor(), (0.2, 0.8, 0.2))

    whole = np.zeros(scenes.SHAPE_KJI, bool)
    whole[scenes.CUBE] = True
    preview.show(whole & ~half, source, segmentation)  # replaces, never adds
    assert _preview_nodes(scene) == [node]
    assert np.array_equal(scenes.segment_array(node, segment_id, volume), whole & ~half)
    assert scenes.segment_array(segmentation, ids[0], volume).sum() == 0  # the user's segment is untouched

    preview.clear()
    assert _preview_nodes(scene) == [] and not preview.showing
    assert scene.GetNodesByClass("vtkMRMLSegmentationDisplayNode").GetNumberOfItems() == 1  # no orphan display
    preview.clear()  # twice is harmless


class PreviewingSession:
    """The toy session, showing half the cube as its preview and then waiting for the test before it answers."""

    def __init__(self, session) -> None:
        self.inner = session
        self.preview = None
        self.shown, self.release, self.cancelled = threading.Event(), threading.Event(), False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def add_point(self, *args, **kwargs):
        from samadapt3d.errors import CancelledError

        half = np.zeros(scenes.SHAPE_KJI, bool)
        half[3:6, 4:10, 4:10] = True
        self.preview(half)
        self.shown.set()
        self.release.wait(10)
        if self.cancelled:
            raise CancelledError("segmentation cancelled")
        return self.inner.add_point(*args, **kwargs)

    def cancel(self):
        self.cancelled = True
        self.release.set()


def _editor_with(gui, scene, opened):
    from samadapt3d.session import InteractiveSession

    def opener(model, device):
        opened.append(PreviewingSession(InteractiveSession(toy_crop_model())))
        return opened[-1]

    effect_session.set_session_opener(opener)
    gui.load_module(MODULE_DIR / "SegmentEditorSAMAdapt3D.py")
    gui.start_up()
    volume = scenes.add_volume(scene, scenes.toy_image())
    segmentation, ids = scenes.add_segmentation(scene, volume)
    editor = gui.segment_editor()
    editor.set_segmentation(segmentation)
    editor.set_source_volume(volume)
    editor.select_segment(ids[0])
    return volume, segmentation, ids, editor, SliceViewWidget(scene, "Red", "Axial")


def test_the_effect_shows_previews_beside_the_segment_and_writes_the_result_once(slicer_gui, scene):
    opened = []
    try:
        volume, segmentation, ids, editor, view = _editor_with(slicer_gui, scene, opened)
        effect = editor.activate("SAMAdapt3D").self()
        wait_for(slicer_gui, effect_idle(effect))
        click(editor, view, slice_through(view, volume, (6, 7, 7)))
        wait_for(slicer_gui, lambda: opened and opened[0].shown.is_set())
        wait_for(slicer_gui, lambda: (effect.poll(), bool(_preview_nodes(scene)))[1])
        (node,) = _preview_nodes(scene)
        half = np.zeros(scenes.SHAPE_KJI, bool)
        half[3:6, 4:10, 4:10] = True
        assert np.array_equal(scenes.segment_array(node, node.GetSegmentation().GetSegmentIDs()[0], volume), half)
        assert scenes.segment_array(segmentation, ids[0], volume).sum() == 0 and editor.undo_saves == 0
        assert "preview" in effect.lastStatus

        opened[0].release.set()
        wait_for(slicer_gui, effect_idle(effect))
        expected = np.zeros(scenes.SHAPE_KJI, bool)
        expected[scenes.CUBE] = True
        assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), expected)
        assert _preview_nodes(scene) == [] and editor.undo_saves == 1
        editor.undo()
        assert scenes.segment_array(segmentation, ids[0], volume).sum() == 0
    finally:
        effect_session.set_session_opener(None)


def test_a_cancel_during_a_preview_leaves_the_segment_and_the_scene_as_they_were(slicer_gui, scene):
    opened = []
    try:
        volume, segmentation, ids, editor, view = _editor_with(slicer_gui, scene, opened)
        effect = editor.activate("SAMAdapt3D").self()
        wait_for(slicer_gui, effect_idle(effect))
        nodes_before = scene.GetNumberOfNodes()
        click(editor, view, slice_through(view, volume, (6, 7, 7)))
        wait_for(slicer_gui, lambda: (effect.poll(), bool(_preview_nodes(scene)))[1])
        effect.onCancel()
        wait_for(slicer_gui, effect_idle(effect))
        assert _preview_nodes(scene) == [] and scene.GetNumberOfNodes() == nodes_before
        assert scenes.segment_array(segmentation, ids[0], volume).sum() == 0 and editor.undo_saves == 0
        assert "Cancelled" in effect.lastStatus
    finally:
        effect_session.set_session_opener(None)
