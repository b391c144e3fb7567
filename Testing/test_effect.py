"""The SAMAdapt3D Segment Editor effect, run for real in the harness on a slicer-core scene: registration at start-up,
clicks and drags in a slice view, results through Slicer's segment-editor logic (masking, overwrite, undo).

The oracle is the image: the toy model segments exactly the clicked object's connected region of equal intensity,
and the objects of the test image are known by construction (harness.scenes)."""
from __future__ import annotations

import numpy as np
import vtk

from harness import scenes
from harness.fixtures import MODULE_DIR, effect_idle, in_process_sessions, slicer_gui, wait_for  # noqa: F401
from harness.mrml_widgets import SliceViewWidget

PRESS, MOVE, RELEASE = (vtk.vtkCommand.LeftButtonPressEvent, vtk.vtkCommand.MouseMoveEvent,
                        vtk.vtkCommand.LeftButtonReleaseEvent)


def setup_editor(gui, scene, names=("structure",)):
    gui.load_module(MODULE_DIR / "SegmentEditorSAMAdapt3D.py")
    gui.start_up()
    volume = scenes.add_volume(scene, scenes.toy_image())
    segmentation, ids = scenes.add_segmentation(scene, volume, names)
    editor = gui.segment_editor()
    editor.set_segmentation(segmentation)
    editor.set_source_volume(volume)
    editor.select_segment(ids[0])
    view = SliceViewWidget(scene, "Red", "Axial")
    return volume, segmentation, ids, editor, view


def slice_through(view, volume, kji):
    """Put the axial view on voxel kji's slice; its (x, y) in the view."""
    ras = scenes.voxel_to_ras(volume, kji)
    view.fit_to(volume, offset_ras=ras[2])
    return view.ras_to_xy(ras)


def click(editor, view, xy, ctrl=False):
    assert editor.interact(view, PRESS, *xy, ctrl=ctrl)
    assert editor.interact(view, RELEASE, *xy, ctrl=ctrl)


def test_effect_registers_at_startup_and_clicks_segment_the_object(slicer_gui, scene, in_process_sessions):
    from harness.segment_editor import EffectFactory

    slicer_gui.load_module(MODULE_DIR / "SegmentEditorSAMAdapt3D.py")
    assert EffectFactory.instance().registeredEffects() == []  # not before the application has started
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    assert [e.name for e in EffectFactory.instance().registeredEffects()] == ["SAMAdapt3D"]
    effect = editor.activate("SAMAdapt3D").self()
    wait_for(slicer_gui, effect_idle(effect))
    assert effect.nodes["positive"].GetNumberOfControlPoints() == 0

    xy = slice_through(view, volume, (6, 7, 7))  # inside the cube
    click(editor, view, xy)
    wait_for(slicer_gui, effect_idle(effect))
    expected = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    expected[scenes.CUBE] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), expected), effect.lastStatus
    assert effect.nodes["positive"].GetNumberOfControlPoints() == 1  # the prompt is shown
    assert editor.undo_saves == 1 and editor.modifications == [(0, ids[0])]  # Set, through the editor
    assert in_process_sessions[0][:2] == ("litemedsam", "auto")  # the effect's default model and device

    # Ctrl+click: a negative point on the cube removes it again (the toy model's negative cuts its region)
    click(editor, view, xy + np.array([20.0, 0.0]), ctrl=True)
    wait_for(slicer_gui, effect_idle(effect))
    assert effect.nodes["negative"].GetNumberOfControlPoints() == 1
    assert editor.undo_saves == 2


def test_undo_is_slicers_and_clears_the_prompts(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 7)))
    wait_for(slicer_gui, effect_idle(effect))
    assert scenes.segment_array(segmentation, ids[0], volume).sum() == 6 * 6 * 6

    editor.undo()  # the Segment Editor's Ctrl+Z
    assert scenes.segment_array(segmentation, ids[0], volume).sum() == 0
    # the prompts described the undone result: cleared once the editor's events are processed
    wait_for(slicer_gui, lambda: effect.nodes["positive"].GetNumberOfControlPoints() == 0)
    wait_for(slicer_gui, effect_idle(effect))
    assert scenes.segment_array(segmentation, ids[0], volume).sum() == 0  # nothing re-applied


def test_drag_places_a_box_on_that_slice(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    a = slice_through(view, volume, (6, 15, 13))  # the slab, corners inside it on slice k = 6
    b = view.ras_to_xy(scenes.voxel_to_ras(volume, (6, 18, 20)))
    assert editor.interact(view, PRESS, *a)
    assert editor.interact(view, MOVE, *((a + b) / 2))
    assert editor.interact(view, RELEASE, *b)
    wait_for(slicer_gui, effect_idle(effect))
    mask = scenes.segment_array(segmentation, ids[0], volume)
    assert effect.nodes["box"].GetNumberOfControlPoints() == 1  # the box is shown as an ROI
    size = effect.nodes["box"].GetSize()
    assert abs(size[2]) < 1e-6 and size[0] > 5 and size[1] > 2  # flat: on that slice
    assert mask.any() and mask[scenes.SLAB].sum() == mask.sum()  # only the slab
    assert not mask[:6].any() and not mask[7:].any()  # bounded by the box: that slice only
    assert effect.nodes["positive"].GetNumberOfControlPoints() == 0


def test_results_respect_the_editors_masking_and_overwrite(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene, names=("new", "other"))
    other = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    other[3:9, 4:10, 4:7] = True  # a third of the cube belongs to another segment
    scenes.set_segment(segmentation, ids[1], other, volume)
    editor.node.SetOverwriteMode(editor.node.OverwriteNone)  # "allow overlap"
    editor.node.SetMaskMode(segmentation.EditAllowedOutsideAllSegments)
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 8)))
    wait_for(slicer_gui, effect_idle(effect))
    mask = scenes.segment_array(segmentation, ids[0], volume)
    cube = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    cube[scenes.CUBE] = True
    assert np.array_equal(mask, cube & ~other)  # only the editable area (outside all segments)
    assert np.array_equal(scenes.segment_array(segmentation, ids[1], volume), other)  # untouched


def test_the_modules_model_choice_opens_a_new_session(slicer_gui, scene, in_process_sessions):
    from SAMAdapt3DSlicerLib import effect_session

    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    wait_for(slicer_gui, effect_idle(effect))
    try:
        effect_session.set_model_choice("my-model.safetensors", "cpu")  # what the setup module does
        click(editor, view, slice_through(view, volume, (6, 7, 7)))
        wait_for(slicer_gui, effect_idle(effect))
    finally:
        effect_session.set_model_choice(effect_session.DEFAULT_MODEL)
    assert [opened[:2] for opened in in_process_sessions] == [("litemedsam", "auto"), ("my-model.safetensors", "cpu")]
    assert scenes.segment_array(segmentation, ids[0], volume).sum() == 6 * 6 * 6  # the click ran on the new one


def test_moving_and_deleting_prompts_restates_them(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 7)))  # the cube
    wait_for(slicer_gui, effect_idle(effect))
    positive = effect.nodes["positive"]

    # the user drags the point onto the slab (the markups widget moves it and ends the interaction)
    positive.SetNthControlPointPositionWorld(0, *scenes.voxel_to_ras(volume, (6, 16, 15)))
    positive.InvokeEvent(positive.PointEndInteractionEvent)
    wait_for(slicer_gui, effect_idle(effect))
    slab = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    slab[scenes.SLAB] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), slab)

    positive.RemoveNthControlPoint(0)  # deleted: no prompt left, the segment returns to what it was (empty)
    wait_for(slicer_gui, effect_idle(effect))
    assert not scenes.segment_array(segmentation, ids[0], volume).any()
    assert editor.undo_saves == 3  # every result is one undo step


def test_a_click_outside_the_image_is_a_message_and_changes_nothing(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    wait_for(slicer_gui, effect_idle(effect))
    xy = slice_through(view, volume, (6, 7, 7))
    outside = view.ras_to_xy(scenes.voxel_to_ras(volume, (6, 7, -30)))  # 30 voxels beyond the first column
    click(editor, view, outside)
    wait_for(slicer_gui, effect_idle(effect))
    assert "outside" in effect.lastStatus, effect.lastStatus
    assert editor.modifications == [] and not scenes.segment_array(segmentation, ids[0], volume).any()
    click(editor, view, xy)  # and the effect still works
    wait_for(slicer_gui, effect_idle(effect))
    assert scenes.segment_array(segmentation, ids[0], volume).sum() == 6 * 6 * 6


def test_closing_the_scene_mid_update_writes_nothing(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    wait_for(slicer_gui, effect_idle(effect))
    click(editor, view, slice_through(view, volume, (6, 7, 7)))
    scene.Clear(0)  # before the result is polled
    wait_for(slicer_gui, effect_idle(effect))
    assert editor.modifications == [] and effect._context is None and effect.nodes == {}
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsNode") == 0


def test_a_segment_with_voxels_is_refined(slicer_gui, scene, in_process_sessions):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    before = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    before[0:2, 0:3, 0:3] = True  # a corner of the background, drawn earlier by the user
    scenes.set_segment(segmentation, ids[0], before, volume)
    effect = editor.activate("SAMAdapt3D").self()
    wait_for(slicer_gui, effect_idle(effect))
    click(editor, view, slice_through(view, volume, (6, 16, 15)))  # the slab
    wait_for(slicer_gui, effect_idle(effect))
    slab = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    slab[scenes.SLAB] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), before | slab)  # added to it


def own_grid_voxels(segmentation, segment_id) -> set:
    """A segment's voxels on its own (internal) grid, as absolute (i, j, k) indices of that grid."""
    import slicer

    from SAMAdapt3DSlicerLib.effect_prompts import image_array

    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    rep = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    extent = rep.GetExtent()
    k, j, i = np.nonzero(image_array(rep) == segment.GetLabelValue())
    return set(zip((i + extent[0]).tolist(), (j + extent[2]).tolist(), (k + extent[4]).tolist()))


def test_other_segments_on_a_finer_grid_are_left_voxel_for_voxel(slicer_gui, scene, in_process_sessions):
    """The segmentation's grid is twice as fine as the volume's; a 1-voxel sheet of another segment inside the
    cube must survive (overlap allowed), compared on its own grid."""
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene, names=("new", "sheet"))
    fine = scenes.add_volume(scene, np.zeros(tuple(2 * s for s in scenes.SHAPE_KJI)), spacing=(0.5, 0.5, 0.5),
                             origin=(-0.25, -0.25, -0.25), name="fine grid")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(fine)
    sheet = np.zeros(tuple(2 * s for s in scenes.SHAPE_KJI), dtype=bool)
    sheet[12, 8:20, 8:20] = True  # one fine voxel thick, inside the cube
    scenes.set_segment(segmentation, ids[1], sheet, fine)
    before = own_grid_voxels(segmentation, ids[1])
    assert len(before) == 144
    editor.set_source_volume(volume)  # re-aligns the source to the (fine) reference geometry
    editor.node.SetOverwriteMode(editor.node.OverwriteNone)
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 7)))
    wait_for(slicer_gui, effect_idle(effect))
    written = scenes.segment_array(segmentation, ids[0], volume)
    cube = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    cube[scenes.CUBE] = True
    assert np.array_equal(written, cube)
    assert own_grid_voxels(segmentation, ids[1]) == before


def test_3d_box_button_places_a_true_3d_roi_and_t_toggles_polarity(slicer_gui, scene, in_process_sessions):
    import slicer

    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    wait_for(slicer_gui, effect_idle(effect))
    effect.boxButton.click()
    interaction = slicer.app.applicationLogic().GetInteractionNode()
    selection = slicer.app.applicationLogic().GetSelectionNode()
    roi = effect.nodes["box"]
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert selection.GetActivePlaceNodeID() == roi.GetID()
    assert editor.active is not None  # placing our own box keeps the effect selected

    # the user draws the ROI (Slicer's place widget), then drags a handle: a box over slices k = 4..7 of the slab
    low, high = scenes.voxel_to_ras(volume, (4, 14, 12)), scenes.voxel_to_ras(volume, (7, 19, 21))
    roi.AddControlPoint(vtk.vtkVector3d(*((low + high) / 2)))
    roi.SetSize(*np.abs(high - low))
    roi.InvokeEvent(roi.PointEndInteractionEvent)
    wait_for(slicer_gui, effect_idle(effect))
    mask = scenes.segment_array(segmentation, ids[0], volume)
    assert mask[4:8].any(axis=(1, 2)).all() and not mask[:4].any() and not mask[8:].any()  # 3D: those slices only
    assert mask[scenes.SLAB].sum() == mask.sum()

    # T toggles the polarity of plain clicks (while the effect is active)
    assert effect.positiveButton.checked
    effect._shortcuts[0].activated.emit()
    assert effect.negativeButton.checked and effect.scriptedEffect.parameter("Polarity") == "negative"

    # placing another markup deselects the effect (as for every effect), and with it its keys
    other = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "landmarks")
    selection.SetActivePlaceNodeID(other.GetID())
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    interaction.SetCurrentInteractionMode(interaction.Place)
    assert editor.active is None and effect._shortcuts == []
    assert interaction.GetCurrentInteractionMode() == interaction.Place  # the user's placement goes on


def test_an_oblique_volume_with_anisotropic_voxels(slicer_gui, scene, in_process_sessions):
    """IJK -> RAS rotated 30 degrees about S, spacing (0.8, 1.2, 2.0): the click lands on the cube in world space and
    the mask comes back on the same voxels (geometry handed to the session as LPS, written on the editor's grid)."""
    import math

    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    matrix = vtk.vtkMatrix4x4()
    for r, row in enumerate(((c * 0.8, -s * 1.2, 0, 10.0), (s * 0.8, c * 1.2, 0, -5.0), (0, 0, 2.0, 3.0))):
        for col, value in enumerate(row):
            matrix.SetElement(r, col, value)
    volume.SetIJKToRASMatrix(matrix)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    editor.set_source_volume(volume)
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 7)))
    wait_for(slicer_gui, effect_idle(effect))
    cube = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    cube[scenes.CUBE] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), cube), effect.lastStatus
