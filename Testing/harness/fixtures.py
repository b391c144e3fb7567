"""pytest fixtures of the harness (imported by the harness tests: `from harness.fixtures import *`)."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "SAMAdapt3D"
LIB_TESTS = ROOT / "SAMAdapt3DLib" / "tests"
#: a click must come back within this (s) in the harness tests (toy model, 2 shared cores)
RESULT_TIMEOUT_S = 30.0


@pytest.fixture
def slicer_gui(scene, tmp_path):
    """The harness installed around the conftest's real slicer-core scene; taken out again afterwards."""
    from harness import Slicer

    gui = Slicer(scene, tmp_path)
    try:
        yield gui
    finally:
        gui.close()


def toy_crop_model():
    """The session tests' ToyCropModel (mask = the clicked object's connected part of equal intensity)."""
    if str(LIB_TESTS) not in sys.path:
        sys.path.insert(0, str(LIB_TESTS))
    spec = importlib.util.spec_from_file_location("test_session_toymodel", LIB_TESTS / "test_session_toymodel.py")
    module = sys.modules.get("test_session_toymodel")
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["test_session_toymodel"] = module
        spec.loader.exec_module(module)
    return module.ToyCropModel()


class OpenedSessions(list):
    """The sessions the effect opened, as (model, device, session); `install()` makes the effect open in-process
    ones again (the setup module installs its server's opener when it loads)."""

    def install(self) -> None:
        from samadapt3d.session import InteractiveSession
        from SAMAdapt3DSlicerLib import effect_session

        def opener(model, device):
            session = InteractiveSession(toy_crop_model())
            self.append((model, device, session))
            return session

        effect_session.set_session_opener(opener)


@pytest.fixture
def in_process_sessions():
    """Sessions for the effect: an in-process InteractiveSession on the toy model (RemoteSession's API)."""
    from SAMAdapt3DSlicerLib import effect_session

    opened = OpenedSessions()
    opened.install()
    yield opened
    effect_session.set_session_opener(None)


def wait_for(gui, condition, timeout: float = RESULT_TIMEOUT_S) -> float:
    """Pump Qt until `condition()`; the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not done within {timeout} s")
        gui.pump(0.01)
    return time.monotonic() - start


def effect_idle(effect):
    """The effect has no job running or waiting and has applied every outcome."""
    def done():
        effect.poll()
        return effect.runner is not None and not effect.runner.busy and not effect.runner._outcomes
    return done
