"""Previews of a running click in the effect: shown in a scratch segmentation node (real slicer-core scene), never in
the segment; the result replaces them with one undo step; a cancel leaves the segment and the scene as they were."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from harness import scenes
from harness.fixtures import MODULE_DIR, effect_idle, slicer_gui, toy_crop_model, wait_for  # noqa: F401
from harness.mrml_widgets import SliceViewWidget
from SAMAdapt3DSlicerLib import effect_session, segment_io
from SAMAdapt3DSlicerLib.effect_preview import PREVIEW_NODE_NAME, SegmentPreview

from test_effect import click, slice_through


def half_cube() -> np.ndarray:
    """The upper half of the toy image's cube: what the previewing session shows before its result."""
    half = np.zeros(scenes.SHAPE_KJI, bool)
    half[3:6, 4:10, 4:10] = True
    return half


def _preview_nodes(scene):
    return [n for n in scene.GetNodesByClass("vtkMRMLSegmentationNode") if n.GetName() == PREVIEW_NODE_NAME]


def test_a_preview_node_shows_the_mask_and_goes_away(scene):
    volume = scenes.add_volume(scene, scenes.toy_image())
    segmentation, ids = scenes.add_segmentation(scene, volume)
    source = segment_io.volume_image(volume, segmentation)
    preview = SegmentPreview(scene)
    half = half_cube()
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

        self.preview(half_cube())
        self.shown.set()
        self.release.wait(10)
        if self.cancelled:
            raise CancelledError("segmentation cancelled")
        return self.inner.add_point(*args, **kwargs)

    def cancel(self):
        self.cancelled = True
        self.release.set()


@dataclass
class PreviewingEditor:
    volume: object
    segmentation: object
    segment_id: str
    editor: object
    view: object
    effect: object
    opened: list


@pytest.fixture
def previewing_editor(slicer_gui, scene):
    """The effect on the toy scene, its sessions PreviewingSession (in `opened`), active and idle."""
    from samadapt3d.session import InteractiveSession

    opened = []

    def opener(model, device):
        opened.append(PreviewingSession(InteractiveSession(toy_crop_model())))
        return opened[-1]

    effect_session.set_session_opener(opener)
    try:
        slicer_gui.load_module(MODULE_DIR / "SegmentEditorSAMAdapt3D.py")
        slicer_gui.start_up()
        volume = scenes.add_volume(scene, scenes.toy_image())
        segmentation, ids = scenes.add_segmentation(scene, volume)
        editor = slicer_gui.segment_editor()
        editor.set_segmentation(segmentation)
        editor.set_source_volume(volume)
        editor.select_segment(ids[0])
        effect = editor.activate("SAMAdapt3D").self()
        wait_for(slicer_gui, effect_idle(effect))
        yield PreviewingEditor(volume, segmentation, ids[0], editor, SliceViewWidget(scene, "Red", "Axial"), effect,
                               opened)
    finally:
        effect_session.set_session_opener(None)


def test_the_effect_shows_previews_beside_the_segment_and_writes_the_result_once(slicer_gui, scene,
                                                                                previewing_editor):
    e = previewing_editor
    click(e.editor, e.view, slice_through(e.view, e.volume, (6, 7, 7)))
    wait_for(slicer_gui, lambda: e.opened and e.opened[0].shown.is_set())
    wait_for(slicer_gui, lambda: (e.effect.poll(), bool(_preview_nodes(scene)))[1])
    (node,) = _preview_nodes(scene)
    assert np.array_equal(scenes.segment_array(node, node.GetSegmentation().GetSegmentIDs()[0], e.volume),
                          half_cube())
    assert scenes.segment_array(e.segmentation, e.segment_id, e.volume).sum() == 0 and e.editor.undo_saves == 0
    assert "preview" in e.effect.lastStatus

    e.opened[0].release.set()
    wait_for(slicer_gui, effect_idle(e.effect))
    expected = np.zeros(scenes.SHAPE_KJI, bool)
    expected[scenes.CUBE] = True
    assert np.array_equal(scenes.segment_array(e.segmentation, e.segment_id, e.volume), expected)
    assert _preview_nodes(scene) == [] and e.editor.undo_saves == 1
    e.editor.undo()
    assert scenes.segment_array(e.segmentation, e.segment_id, e.volume).sum() == 0


def test_a_cancel_during_a_preview_leaves_the_segment_and_the_scene_as_they_were(slicer_gui, scene,
                                                                                 previewing_editor):
    e = previewing_editor
    nodes_before = scene.GetNumberOfNodes()
    click(e.editor, e.view, slice_through(e.view, e.volume, (6, 7, 7)))
    wait_for(slicer_gui, lambda: (e.effect.poll(), bool(_preview_nodes(scene)))[1])
    e.effect.onCancel()
    wait_for(slicer_gui, effect_idle(e.effect))
    assert _preview_nodes(scene) == [] and scene.GetNumberOfNodes() == nodes_before
    assert scenes.segment_array(e.segmentation, e.segment_id, e.volume).sum() == 0 and e.editor.undo_saves == 0
    assert "Cancelled" in e.effect.lastStatus
