"""The real SAMAdapt3D setup module (SAMAdapt3D.py + its .ui) run in the harness: a user's session on a real
slicer-core scene, and static checks of the .ui that need no GUI.

What Slicer does and the harness reproduces: the .ui's top widget is a qMRMLWidget; a qMRML widget inside it knows
the scene only through a `mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*)` connection in the .ui
(or an explicit call), and without a scene it lists nothing and creates nothing.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from harness import scenes
from harness.fixtures import MODULE_DIR, effect_idle, in_process_sessions, slicer_gui, wait_for  # noqa: F401
from test_effect import click, setup_editor, slice_through

UI = MODULE_DIR / "Resources" / "UI" / "SAMAdapt3D.ui"
MRML_WIDGET_CLASSES = {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget", "qMRMLSegmentsTableView",
                       "qMRMLSubjectHierarchyTreeView", "qMRMLCheckableNodeComboBox", "qMRMLSpinBox",
                       "qMRMLSliderWidget"}


def mrml_widgets_in_ui(root) -> list[str]:
    return [w.get("name") for w in root.iter("widget") if w.get("class") in MRML_WIDGET_CLASSES]


def test_every_mrml_widget_of_the_ui_is_connected_to_the_scene():
    root = ET.parse(UI).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget", "the top widget must be a qMRMLWidget (it has mrmlSceneChanged)"
    connected = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                 for c in root.iter("connection")}
    widgets = mrml_widgets_in_ui(root)
    assert widgets, "the module's .ui has MRML widgets"
    for name in widgets:
        assert (top.get("name"), "mrmlSceneChanged(vtkMRMLScene*)", name, "setMRMLScene(vtkMRMLScene*)") in connected, (
            f"{name} never receives the scene: add the mrmlSceneChanged -> setMRMLScene connection to the .ui")


def ui_widgets(ui) -> dict:
    return {name: widget for name, widget in vars(ui).items() if hasattr(widget, "className")}


def test_loaded_module_gives_every_mrml_widget_the_scene(slicer_gui, scene):
    loaded = slicer_gui.load_module(MODULE_DIR / "SAMAdapt3D.py")
    widgets = ui_widgets(loaded.widget.ui)
    mrml = {name: w for name, w in widgets.items() if w.className() in MRML_WIDGET_CLASSES}
    assert set(mrml) == set(mrml_widgets_in_ui(ET.parse(UI).getroot()))
    for name, widget in mrml.items():
        assert widget.mrmlScene() is scene, f"{name} has no scene"


def test_without_the_ui_connections_a_selector_has_no_scene(slicer_gui, scene, tmp_path):
    """The control: the harness gives no scene for free (the defect the issue found in the shipped .ui)."""
    import slicer

    root = ET.parse(UI).getroot()
    connections = root.find("connections")
    if connections is not None:
        root.remove(connections)
    stripped = tmp_path / "stripped.ui"
    ET.ElementTree(root).write(stripped)
    widget = slicer.util.loadUI(str(stripped))
    widget.setMRMLScene(scene)
    ui = slicer.util.childWidgetVariables(widget)
    selectors = [w for w in ui_widgets(ui).values() if w.className() == "qMRMLNodeComboBox"]
    assert selectors and all(s.mrmlScene() is None for s in selectors)
    assert all(s.addNode() is None for s in selectors)  # "Create new ..." cannot work without a scene


def test_a_users_session_pick_create_segment_undo_close_reload(slicer_gui, scene, in_process_sessions, capfd):
    loaded = slicer_gui.load_module(MODULE_DIR / "SAMAdapt3D.py")
    widgets = ui_widgets(loaded.widget.ui)
    volume = scenes.add_volume(scene, scenes.toy_image())
    combos = [w for w in widgets.values() if w.className() == "qMRMLNodeComboBox"]
    volume_selectors = [w for w in combos if "vtkMRMLScalarVolumeNode" in w.nodeTypes]
    segmentation_selectors = [w for w in combos if "vtkMRMLSegmentationNode" in w.nodeTypes]
    assert volume_selectors and segmentation_selectors
    assert volume_selectors[0].currentNode() is volume or volume_selectors[0].nodes() == [volume]
    volume_selectors[0].setCurrentNode(volume)  # pick the volume
    created = segmentation_selectors[0].addNode()  # "Create new Segmentation"
    assert created is not None and scene.IsNodePresent(created)
    created.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = created.GetSegmentation().AddEmptySegment("liver", "liver")

    # segment in the Segment Editor's SAMAdapt3D effect, then Ctrl+Z
    slicer_gui.load_module(MODULE_DIR / "SegmentEditorSAMAdapt3D.py")
    slicer_gui.start_up()
    in_process_sessions.install()  # instead of the server the setup module configured
    editor = slicer_gui.segment_editor()
    editor.set_segmentation(created)
    editor.set_source_volume(volume)
    editor.select_segment(segment_id)
    from harness.mrml_widgets import SliceViewWidget

    view = SliceViewWidget(scene, "Red", "Axial")
    effect = editor.activate("SAMAdapt3D").self()
    click(editor, view, slice_through(view, volume, (6, 7, 7)))
    wait_for(slicer_gui, effect_idle(effect))
    assert scenes.segment_array(created, segment_id, volume).sum() == 6 * 6 * 6, effect.lastStatus
    editor.undo()
    assert not scenes.segment_array(created, segment_id, volume).any()

    # close the scene: selectors empty, the effect forgets its nodes, nothing raises in an observer
    scene.Clear(0)
    slicer_gui.pump(0.1)
    assert all(c.currentNode() is None for c in volume_selectors + segmentation_selectors)
    assert effect.nodes == {} and effect._context is None

    # reload the module (Slicer's Reload): the old widget's observers and timers must not fire any more
    reloaded = slicer_gui.load_module(MODULE_DIR / "SAMAdapt3D.py")
    assert reloaded.widget is not loaded.widget
    scenes.add_volume(scene, np.zeros((4, 5, 6)), name="after reload")
    scene.Clear(0)
    slicer_gui.pump(0.1)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]


def test_the_modules_model_and_device_reach_the_effect_and_are_remembered(slicer_gui, scene):
    from SAMAdapt3DSlicerLib import effect_session

    loaded = slicer_gui.load_module(MODULE_DIR / "SAMAdapt3D.py")
    ui = loaded.widget.ui
    try:
        ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findText("cpu"))
        assert effect_session.model_choice()[1] == "cpu"
        import slicer

        assert slicer.app.settings().value("SAMAdapt3D/Device") == "cpu"
        assert slicer.app.settings().value("SAMAdapt3D/Model") == effect_session.model_choice()[0]
    finally:
        effect_session.set_model_choice(effect_session.DEFAULT_MODEL)
