"""The real SAMAdapt3D setup module (SAMAdapt3D.py, its .ui and Logic) run in the harness on a slicer-core scene:
the .ui gives every MRML widget the scene, 'Segment all classes' goes through the server client on a worker thread
and writes on the main thread, undo, a download with consent from a loopback server, the server settings reach the
effect, and nothing (timer, thread, observer, opener) survives a scene close or a module reload.

The server is a stand-in with ServerClient's surface (load_model, auto, open_session); its label map is made here,
so the expected segments are known. The real server and client are tested in SAMAdapt3DLib/tests."""
from __future__ import annotations

import hashlib
import http.server
import threading

import numpy as np
import pytest

from harness import scenes
from harness.fixtures import MODULE_DIR, slicer_gui, wait_for  # noqa: F401
from SAMAdapt3DSlicerLib import downloads
from SAMAdapt3DSlicerLib import scene_bridge as bridge

MRML_WIDGETS = ("inputVolumeSelector", "segmentationSelector", "trainSegmentSelector")


class FakeServer:
    """ServerClient's surface for 'Segment all classes': two classes, boxes in known places."""

    def __init__(self, shape):
        self.shape, self.calls = shape, []

    def load_model(self, name, device="auto", sam_checkpoint=None):
        self.calls.append(("load", name, device, sam_checkpoint))
        return "model-1"

    def auto(self, model_id, volume):
        self.calls.append(("auto", model_id, volume.array.shape))
        labels = np.zeros(volume.array.shape, np.uint8)
        labels[1:3, 2:6, 2:6] = 1
        labels[3:5, 8:12, 8:12] = 2
        return labels, ("liver", "spleen")


def load(gui):
    return gui.load_module(MODULE_DIR / "SAMAdapt3D.py")


def widget_of(loaded):
    return loaded.widget


def test_every_mrml_widget_has_the_scene(slicer_gui, scene):
    w = widget_of(load(slicer_gui))
    for name in MRML_WIDGETS:
        assert getattr(w.ui, name).mrmlScene() is scene, name


def test_segment_all_classes_through_the_server_and_undo(slicer_gui, scene, monkeypatch):
    w = widget_of(load(slicer_gui))
    volume = scenes.add_volume(scene, scenes.toy_image())
    segmentation, (liver,) = scenes.add_segmentation(scene, volume, ("liver",))
    fake = FakeServer(bridge.volume_from_node(volume).array.shape)
    monkeypatch.setattr(w.logic.server, "client", lambda: fake)
    w.ui.inputVolumeSelector.setCurrentNode(volume)
    w.ui.segmentationSelector.setCurrentNode(segmentation)
    assert w._parameterNode.inputVolume is volume and w._parameterNode.segmentation is segmentation
    assert w.ui.classesButton.enabled
    w.ui.classesButton.click()
    wait_for(slicer_gui, lambda: "class segment" in w.ui.classesStatusLabel.text)
    assert fake.calls[0] == ("load", "litemedsam", "auto", None)
    labels = fake.auto("model-1", bridge.volume_from_node(volume))[0]
    assert bridge.segment_id_by_name(segmentation, "liver") == liver  # reused by name
    np.testing.assert_array_equal(bridge.segment_mask(segmentation, liver, volume), labels == 1)
    spleen = bridge.segment_id_by_name(segmentation, "spleen")
    np.testing.assert_array_equal(bridge.segment_mask(segmentation, spleen, volume), labels == 2)
    assert w.ui.undoClassesButton.enabled
    w.ui.undoClassesButton.click()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert not bridge.segment_mask(segmentation, liver, volume).any()


def test_a_failing_server_is_a_message_and_changes_nothing(slicer_gui, scene, monkeypatch):
    w = widget_of(load(slicer_gui))
    volume = scenes.add_volume(scene, scenes.toy_image())
    segmentation, _ = scenes.add_segmentation(scene, volume, ("kept",))

    def broken():
        raise RuntimeError("the server ran out of memory (CUDA out of memory)")

    monkeypatch.setattr(w.logic.server, "client", broken)
    w.ui.inputVolumeSelector.setCurrentNode(volume)
    w.ui.segmentationSelector.setCurrentNode(segmentation)
    w.ui.classesButton.click()
    wait_for(slicer_gui, lambda: "memory" in w.ui.classesStatusLabel.text)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert not w.ui.cancelClassesButton.enabled


def test_server_settings_reach_the_effect(slicer_gui, scene):
    from SAMAdapt3DSlicerLib import effect_session

    w = widget_of(load(slicer_gui))
    w.ui.remoteServerRadioButton.checked = True
    w.ui.serverUrlLineEdit.text = "not a url"
    w.onServerSettingsChanged()
    assert "URL" in w.ui.serverStatusLabel.text
    w.ui.serverUrlLineEdit.text = "http://gpu-box:8000"
    w.ui.serverTokenLineEdit.text = "secret"
    w.onServerSettingsChanged()
    assert w.ui.serverStatusLabel.text == ""
    assert w.logic.server.settings.url == "http://gpu-box:8000" and w.logic.server.settings.token == "secret"
    assert effect_session._opener == w.logic.server.session_opener
    assert "secret" not in str(w._parameterNode.parameterNode)  # the token never goes into the scene


@pytest.fixture
def file_server():
    payload = bytes(range(256)) * 4000

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/sam.pth", payload
    srv.shutdown()
    srv.server_close()


def test_download_asks_first_then_sets_the_sam_base_file(slicer_gui, scene, tmp_path, monkeypatch, file_server):
    url, payload = file_server
    w = widget_of(load(slicer_gui))
    entry = downloads.ModelFile("sam_vit_b", "SAM ViT-B", "sam_test.pth", "sam-base", "https://example.org",
                                "Apache-2.0", 1, url)
    monkeypatch.setattr(downloads, "CATALOGUE", (entry,))
    monkeypatch.setattr(w.logic, "modelsFolder", lambda: str(tmp_path))
    w.populateCatalogue()
    w.ui.catalogueListWidget.setCurrentRow(0)
    w.onDownload()  # the harness answers the confirmation with OK
    asked = [text for kind, text in slicer_gui.gui.messages if kind == "confirm"]
    assert asked and "Apache-2.0" in asked[-1] and url in asked[-1]
    wait_for(slicer_gui, lambda: "Saved" in w.ui.downloadStatusLabel.text or "rror" in w.ui.downloadStatusLabel.text)
    assert (tmp_path / "sam_test.pth").read_bytes() == payload
    assert hashlib.sha256(payload).hexdigest() in w.ui.downloadStatusLabel.text
    assert w.ui.samCheckpointPathLineEdit.currentPath == str(tmp_path / "sam_test.pth")


def test_scene_close_and_reload_leave_nothing_behind(slicer_gui, scene, monkeypatch):
    from SAMAdapt3DSlicerLib import effect_session

    loaded = load(slicer_gui)
    w = widget_of(loaded)
    volume = scenes.add_volume(scene, scenes.toy_image())
    segmentation, _ = scenes.add_segmentation(scene, volume, ("s",))
    w.ui.inputVolumeSelector.setCurrentNode(volume)
    w.ui.segmentationSelector.setCurrentNode(segmentation)
    monkeypatch.setattr(w.logic.server, "client", lambda: FakeServer(None))
    w.ui.classesButton.click()
    wait_for(slicer_gui, lambda: "class segment" in w.ui.classesStatusLabel.text)
    assert w.logic.canUndoClasses()
    scene.Clear(0)
    assert not w.logic.canUndoClasses() and not w.ui.undoClassesButton.enabled
    logic = w.logic
    stopped = []
    monkeypatch.setattr(logic.server, "stop", lambda: stopped.append(True))
    reloaded = load(slicer_gui)  # Reload: the old widget is cleaned up first
    assert stopped and not logic._timer.isActive()
    assert not any(t.is_alive() for t in logic._workers.values())
    assert reloaded.widget.logic is not logic
    assert effect_session._opener == reloaded.widget.logic.server.session_opener


def test_self_test_passes_in_a_clean_slicer_and_skips_the_model_with_a_reason(slicer_gui, scene, monkeypatch):
    """SAMAdapt3DTest as Slicer runs it, in a Slicer whose server Python lacks the dependencies (no network)."""
    import types
    import unittest

    import slicer
    from SAMAdapt3DSlicerLib import dependencies

    loaded = load(slicer_gui)
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    monkeypatch.setattr(slicer.modules, "segmentations", types.SimpleNamespace(logic=lambda: logic), raising=False)
    monkeypatch.setattr(dependencies, "probe", lambda python: dependencies.Environment(python, "3.11"))
    # Slicer's ScriptedLoadableModuleTest is a unittest.TestCase; the harness stand-in is not, so add it here
    runnable = type("SAMAdapt3DTestCase", (loaded.python_module.SAMAdapt3DTest, unittest.TestCase), {})
    test = runnable("runTest")
    test.runTest()
    assert len(test.skipped) == 1 and "test_EmbeddedModelThroughTheServer" in test.skipped[0]
    assert "network" in test.skipped[0] and "torch" in test.skipped[0]
    logic.SetMRMLScene(None)


def test_saved_server_settings_apply_at_startup_without_opening_the_panel(slicer_gui, scene):
    from SAMAdapt3DSlicerLib import effect_session, server_control

    import slicer

    settings = slicer.app.settings()
    for key, value in (("ServerMode", "remote"), ("ServerUrl", "http://gpu-box:8000"), ("ServerToken", "t0k")):
        settings.setValue("SAMAdapt3D/" + key, value)
    slicer_gui.load_module(MODULE_DIR / "SAMAdapt3D.py", enter=False)
    control = server_control.shared("python")
    control.configure(server_control.ServerSettings())  # as if the panel had never been set up
    effect_session.set_session_opener(None)
    slicer_gui.start_up()
    assert effect_session._opener == control.session_opener
    assert control.settings.mode == "remote" and control.settings.url == "http://gpu-box:8000"
    assert control.client().url == "http://gpu-box:8000"
