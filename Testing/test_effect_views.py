"""The effect against what Slicer's own widgets do: the view a click came from reaches the session (the slice
propagation axis), and a 3D box is placed the way Slicer's markups place widget places an ROI (a preview point that
follows the mouse, two corner clicks, one-time place mode), twice in a row.

The place widget is reproduced with the calls Slicer's vtkSlicerMarkupsWidget makes (UpdatePreviewPoint ->
vtkMRMLMarkupsDisplayNode.UpdateActiveControlPointWorld with PositionPreview, then PositionDefined on the click;
PlacePoint ends a one-time place once the ROI has its required points), on slicer-core's real ROI node."""
from __future__ import annotations

import math

import numpy as np
import pytest
import vtk

from harness import scenes
from harness.fixtures import effect_idle, in_process_sessions, slicer_gui, wait_for  # noqa: F401
from harness.mrml_widgets import SliceViewWidget
from test_effect import click, setup_editor, slice_through

#: IJK -> RAS columns of a volume acquired sagittally: i runs S, j runs R, k runs A
PERMUTED = ((0, 1, 0), (0, 0, 1), (1, 0, 0))
NORMAL_INDEX = {"Axial": 2, "Sagittal": 0, "Coronal": 1}  # the RAS axis each view looks along


def set_direction(volume, segmentation, editor, rows) -> None:
    matrix = vtk.vtkMatrix4x4()
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            matrix.SetElement(r, c, float(value))
    volume.SetIJKToRASMatrix(matrix)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    editor.set_source_volume(volume)


@pytest.mark.parametrize("direction", ["identity", "permuted"])
@pytest.mark.parametrize("orientation", ["Axial", "Sagittal", "Coronal"])
def test_a_click_tells_the_session_which_image_axis_the_view_looks_along(slicer_gui, scene, in_process_sessions,
                                                                         orientation, direction):
    volume, segmentation, ids, editor, _ = setup_editor(slicer_gui, scene)
    if direction == "permuted":
        set_direction(volume, segmentation, editor, PERMUTED)
    # the ijk axis along the view normal, read off the direction table above (not from the code under test)
    rows = np.eye(3) if direction == "identity" else np.array(PERMUTED, dtype=float)
    expected = int(np.argmax(np.abs(rows[NORMAL_INDEX[orientation]])))
    view = SliceViewWidget(scene, f"View{orientation}", orientation)
    effect = editor.activate("SAMAdapt3D").self()
    ras = scenes.voxel_to_ras(volume, (6, 7, 7))  # inside the cube
    view.fit_to(volume, offset_ras=ras[NORMAL_INDEX[orientation]])
    click(editor, view, view.ras_to_xy(ras))
    wait_for(slicer_gui, effect_idle(effect))
    session = in_process_sessions[-1][2]
    assert [p.view_axis for p in session.prompts] == [expected]
    cube = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    cube[scenes.CUBE] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), cube), effect.lastStatus


def test_an_oblique_view_gives_no_axis_hint(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, _ = setup_editor(slicer_gui, scene)
    view = SliceViewWidget(scene, "Oblique", "Axial")
    c, s = math.cos(math.radians(40)), math.sin(math.radians(40))
    slice_to_ras = view.slice_node.GetSliceToRAS()
    for r, row in enumerate(((-1, 0, 0), (0, c, -s), (0, s, c))):  # tilted 40 degrees about R
        for col, value in enumerate(row):
            slice_to_ras.SetElement(r, col, value)
    view.slice_node.UpdateMatrices()
    effect = editor.activate("SAMAdapt3D").self()
    ras = scenes.voxel_to_ras(volume, (6, 7, 7))
    for col in range(3):  # the view's plane through the cube's voxel
        slice_to_ras.SetElement(col, 3, float(ras[col]))
    view.slice_node.UpdateMatrices()
    click(editor, view, view.ras_to_xy(ras))
    wait_for(slicer_gui, effect_idle(effect))
    assert [p.view_axis for p in in_process_sessions[-1][2].prompts] == [None]


def place_like_slicer(roi, corners, submitted, view_id="vtkMRMLSliceNodeRed", hovers=6):
    """Slicer's place widget on an ROI: for each click, a preview point follows the mouse (`hovers` moves), then the
    click defines it; a one-time place ends when the ROI has its required points (vtkSlicerMarkupsWidget.PlacePoint).
    Fails if the effect submitted a job while the mouse only hovered. Returns how many clicks were taken."""
    import slicer

    interaction = slicer.app.applicationLogic().GetInteractionNode()
    display = roi.GetDisplayNode()
    event = slicer.vtkMRMLInteractionEventData()
    orientation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    clicks = 0
    for corner in corners:
        if interaction.GetCurrentInteractionMode() != interaction.Place:
            break
        index, hovered = -1, len(submitted)
        for step in range(hovers - 1, -1, -1):  # the mouse comes to rest on the corner, then clicks there
            event.SetWorldPosition([float(v) for v in np.asarray(corner) + 3.0 * step])
            index = display.UpdateActiveControlPointWorld(index, event, orientation, view_id, "", roi.PositionPreview)
            assert not submitted[hovered:], f"hovering ran {submitted[hovered:]}"
        event.SetWorldPosition([float(v) for v in corner])
        display.UpdateActiveControlPointWorld(index, event, orientation, view_id, "", roi.PositionDefined)
        clicks += 1
        if roi.GetNumberOfControlPoints() >= roi.GetRequiredNumberOfControlPoints():
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    return clicks


def test_placing_two_3d_boxes_as_slicer_does_hovering_runs_nothing(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, _ = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    wait_for(slicer_gui, effect_idle(effect))
    submitted = []
    original = effect.submitPromptJob
    effect.submitPromptJob = lambda job: (submitted.append(job.kind), original(job))

    for low_kji, high_kji in (((4, 14, 12), (7, 19, 21)), ((2, 15, 13), (3, 18, 20))):
        effect.boxButton.click()
        roi = effect.nodes["box"]
        low, high = scenes.voxel_to_ras(volume, low_kji), scenes.voxel_to_ras(volume, high_kji)
        first_corner_only = place_like_slicer(roi, [low], submitted)
        assert first_corner_only == 1 and submitted == [], submitted  # hovering and the first corner run nothing
        assert place_like_slicer(roi, [high], submitted) == 1  # the second corner ends the one-time place
        assert editor.active is not None  # the effect stayed selected through its own placement
        np.testing.assert_allclose(sorted(roi.GetSize()), sorted(np.abs(high - low)), atol=1e-6)  # never zero-sized
        wait_for(slicer_gui, effect_idle(effect))
        assert submitted and set(submitted) == {"rebuild"}, submitted
        submitted.clear()
        mask = scenes.segment_array(segmentation, ids[0], volume)
        k0, k1 = low_kji[0], high_kji[0]
        assert mask[k0:k1 + 1].any(axis=(1, 2)).all(), effect.lastStatus  # every slice of the 3D box
        assert not mask[:k0].any() and not mask[k1 + 1:].any()  # and no other
        assert mask[scenes.SLAB].sum() == mask.sum()


def test_a_changed_server_gives_the_effect_a_new_session(slicer_gui, scene, in_process_sessions):
    """The module changed the server (its Python, mode, address) or was reloaded: the old session went with the old
    server, so the next prompt opens a new one, starting from the segment as it is."""
    from SAMAdapt3DSlicerLib import effect_session

    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 7)))  # the cube
    wait_for(slicer_gui, effect_idle(effect))
    assert len(in_process_sessions) == 1
    effect_session.server_changed()
    click(editor, view, slice_through(view, volume, (6, 16, 15)))  # the slab
    wait_for(slicer_gui, effect_idle(effect))
    assert len(in_process_sessions) == 2, effect.lastStatus
    assert len(in_process_sessions[1][2].prompts) == 1  # the new session: the segment as seed + this click
    expected = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    expected[scenes.CUBE] = expected[scenes.SLAB] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), expected), effect.lastStatus
    assert effect.nodes["positive"].GetNumberOfControlPoints() == 1  # the old session's prompts were cleared


def test_the_module_tells_the_effect_when_its_server_changes(slicer_gui, scene):
    from SAMAdapt3DSlicerLib import effect_session

    from harness.fixtures import MODULE_DIR

    w = slicer_gui.load_module(MODULE_DIR / "SAMAdapt3D.py").widget
    epoch = effect_session.server_epoch()
    w.onServerSettingsChanged()  # nothing changed
    assert effect_session.server_epoch() == epoch
    w.ui.serverPythonPathLineEdit.currentPath = "/opt/conda/bin/python"
    w.onServerSettingsChanged()
    assert effect_session.server_epoch() > epoch
    epoch = effect_session.server_epoch()
    slicer_gui.unload_module("SAMAdapt3D")  # Reload / exit: the module stops its server
    assert effect_session.server_epoch() > epoch


def test_the_scene_node_count_is_unchanged_after_many_effect_updates(slicer_gui, scene, in_process_sessions):
    """The prompt markups are made once; reading and writing the segment adds no node (no display node, colour
    table or label map per update)."""
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene, names=("a", "b", "c", "d"))
    effect = editor.activate("SAMAdapt3D").self()
    xy = slice_through(view, volume, (6, 7, 7))
    click(editor, view, xy)
    wait_for(slicer_gui, effect_idle(effect))
    count = scene.GetNumberOfNodes()
    for n in range(10):
        # each press farther than the grab distance from every point placed before (else it would move that point)
        click(editor, view, xy + 12.0 * np.array([n % 5 + 1, n // 5 + 1]), ctrl=bool(n % 2))
        wait_for(slicer_gui, effect_idle(effect))
    assert editor.undo_saves == 11, effect.lastStatus
    assert scene.GetNumberOfNodes() == count


def test_the_poll_timer_stops_once_the_effect_is_deselected_and_idle(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 7)))
    editor.activate(None)  # deselected while the update runs: its result still lands, then the timer stops
    wait_for(slicer_gui, lambda: not effect.timer.isActive())
    assert scenes.segment_array(segmentation, ids[0], volume).sum() == 6 * 6 * 6, effect.lastStatus
    editor.activate("SAMAdapt3D")
    assert effect.timer.isActive()


def test_a_server_that_died_for_good_gives_the_next_prompt_a_new_session(slicer_gui, scene, in_process_sessions):
    """The local server died and its launcher could not bring it back: the prompt gets a message, the segment is kept,
    and the next prompt opens a new session (a new server) instead of failing until the settings change."""
    from samadapt3d.client import ServerError

    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 7)))  # the cube
    wait_for(slicer_gui, effect_idle(effect))
    dead = in_process_sessions[0][2]

    def unreachable(*args, **kwargs):
        raise ServerError("the samadapt3d server at 127.0.0.1:1 cannot be reached", None)

    dead.add_point = dead.segment = unreachable
    click(editor, view, slice_through(view, volume, (6, 16, 15)))  # the slab: the server is gone
    wait_for(slicer_gui, effect_idle(effect))
    assert "new server session" in effect.lastStatus
    cube = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    cube[scenes.CUBE] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), cube)  # nothing lost
    click(editor, view, slice_through(view, volume, (6, 17, 19)))  # again: a new session, the segment as its seed
    wait_for(slicer_gui, effect_idle(effect))
    assert len(in_process_sessions) == 2, effect.lastStatus
    expected = cube.copy()
    expected[scenes.SLAB] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), expected), effect.lastStatus
