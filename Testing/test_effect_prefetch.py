"""The effect prepares a newly chosen volume in the background (InteractiveSession.prepare(background=True)), so the
first click is not queued behind a whole-volume warm-up; run for real in the harness on a slicer-core scene."""
from __future__ import annotations

from harness import scenes
from harness.fixtures import effect_idle, slicer_gui, toy_crop_model, wait_for  # noqa: F401
from test_effect import click, setup_editor, slice_through


def test_a_chosen_volume_is_prepared_in_the_background_before_the_click(slicer_gui, scene):
    from samadapt3d.session import InteractiveSession
    from SAMAdapt3DSlicerLib import effect_session

    calls = []

    class RecordingSession(InteractiveSession):
        def set_image(self, volume):
            calls.append("set_image")
            super().set_image(volume)

        def prepare(self, background=False):
            calls.append(("prepare", background))
            return super().prepare(background=background)

        def add_point(self, *args, **kwargs):
            calls.append("point")
            return super().add_point(*args, **kwargs)

    effect_session.set_session_opener(lambda model, device: RecordingSession(toy_crop_model()))
    try:
        volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
        effect = editor.activate("SAMAdapt3D").self()
        wait_for(slicer_gui, effect_idle(effect))
        click(editor, view, slice_through(view, volume, (6, 7, 7)))
        wait_for(slicer_gui, effect_idle(effect))
        assert calls[:3] == ["set_image", ("prepare", True), "point"], calls
        assert scenes.segment_array(segmentation, ids[0], volume).sum() == 6 * 6 * 6  # the click's object
    finally:
        effect_session.set_session_opener(None)
