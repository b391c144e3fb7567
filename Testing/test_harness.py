"""The harness itself behaves like Slicer where our code depends on it: PythonQt's attribute properties and string
signatures, Slicer's util functions on top of it, and loud failures for what it does not stand in for."""
from __future__ import annotations

import pytest

from harness.fixtures import slicer_gui  # noqa: F401


def test_qt_properties_are_attributes_and_shadow_their_getters(slicer_gui):
    import qt

    button = qt.QPushButton("Run")
    button.checkable = True
    button.checked = True
    assert button.checked is True and button.text == "Run" and button.enabled is True
    label = qt.QLabel()
    label.text = "hello"
    with pytest.raises(TypeError):  # as in Slicer: "'str' object is not callable"
        label.text()
    combo = qt.QComboBox()
    combo.addItem("a", "A")
    combo.addItem("b", "B")
    combo.currentIndex = 1
    assert (combo.currentText, combo.currentData, combo.count) == ("b", "B", 2)
    assert button.className() == "QPushButton" and qt.QTimer.singleShot is not None  # static method on the class


def test_string_signatures_connect_and_disconnect(slicer_gui):
    import qt

    seen = []
    box = qt.QCheckBox()
    box.connect("toggled(bool)", seen.append)
    box.checked = True
    assert box.disconnect("toggled(bool)", seen.append)
    box.checked = False
    assert seen == [True]
    timer = qt.QTimer()
    timer.setSingleShot(True)
    timer.interval = 1
    timer.connect("timeout()", lambda: seen.append("tick"))
    timer.start()
    slicer_gui.pump(0.05)
    assert seen == [True, "tick"]
    with pytest.raises(AttributeError):
        box.connect("noSuchSignal()", print)


def test_slicer_util_runs_on_the_harness(slicer_gui, tmp_path):
    """slicer-core's own loadUI / childWidgetVariables / mainWindow work on this qt (`name`, `objectName`)."""
    import slicer

    ui_file = tmp_path / "w.ui"
    ui_file.write_text("""<ui version="4.0"><class>W</class><widget class="qMRMLWidget" name="W">
      <layout class="QVBoxLayout" name="layout"><item><widget class="QPushButton" name="goButton">
      <property name="text"><string>Go</string></property></widget></item>
      <item><widget class="ctkCollapsibleButton" name="section"><property name="text"><string>More</string></property>
      </widget></item></layout></widget></ui>""")
    widget = slicer.util.loadUI(str(ui_file))
    ui = slicer.util.childWidgetVariables(widget)
    assert ui.goButton.text == "Go" and ui.section.text == "More" and ui.section.className() == "ctkCollapsibleButton"
    assert slicer.util.mainWindow().objectName == "qSlicerMainWindow"
    assert slicer.util.confirmOkCancelDisplay("Install?") is True
    assert slicer_gui.gui.messages == [("confirm", "Install?")]
    with pytest.raises(RuntimeError, match="installs nothing"):
        slicer.util.pip_install("torch")


def test_a_ui_with_an_unknown_slicer_widget_fails_loudly(slicer_gui, tmp_path):
    import slicer

    ui_file = tmp_path / "w.ui"
    ui_file.write_text("""<ui version="4.0"><class>W</class><widget class="qMRMLWidget" name="W">
      <layout class="QVBoxLayout" name="layout"><item><widget class="qMRMLNoSuchWidget" name="x"/></item>
      </layout></widget></ui>""")
    with pytest.raises(RuntimeError, match="qMRMLNoSuchWidget"):
        slicer.util.loadUI(str(ui_file))


def test_the_harness_leaves_slicer_core_as_it_found_it(scene, tmp_path):
    import sys

    import slicer

    from harness import Slicer

    before = (hasattr(slicer, "app"), hasattr(slicer, "mrmlScene"), "qt" in sys.modules, slicer.util.loadUI)
    gui = Slicer(scene, tmp_path)
    assert slicer.mrmlScene is scene and "qt" in sys.modules
    gui.close()
    assert (hasattr(slicer, "app"), hasattr(slicer, "mrmlScene"), "qt" in sys.modules, slicer.util.loadUI) == before


def test_the_effect_loader_follows_slicers_naming_rule(slicer_gui):
    """Slicer names the module after the source's folder and the class after its file: the effect's code in
    SAMAdapt3DSlicerLib/effect.py could not be registered directly (class effectEffect, module replacing the
    package), hence SegmentEditorSAMAdapt3DLib/SegmentEditorEffect.py."""
    import sys

    from harness.fixtures import MODULE_DIR
    from harness.segment_editor import ScriptedEffect

    import SAMAdapt3DSlicerLib as package

    try:
        with pytest.raises((RuntimeError, ImportError)):  # the file replaced the package it imports from
            ScriptedEffect().setPythonSource(str(MODULE_DIR / "SAMAdapt3DSlicerLib" / "effect.py"))
    finally:
        sys.modules["SAMAdapt3DSlicerLib"] = package
    effect = ScriptedEffect()
    assert effect.setPythonSource(str(MODULE_DIR / "SegmentEditorSAMAdapt3DLib" / "SegmentEditorEffect.py"))
    assert effect.name == "SAMAdapt3D" and type(effect.self()).__name__ == "SegmentEditorEffect"
