"""A click completes promptly while Slicer's main thread holds the GIL the way PythonQt does.

In Slicer the main thread runs Python almost all the time and lets other Python threads run only in short gaps
(the idle pumps of the event loop), so a worker thread doing Python-heavy inference crawls. The effect's worker
only waits on the server process (socket I/O, which releases the GIL), so a click still completes quickly. Here:
the main thread holds the GIL in C code (`sum(range(n))`, ~50 ms, never preempted) and releases it only in 2 ms
pumps, and a tiny `sys.setswitchinterval` hands it back to the main thread as soon as it asks; a control test shows
that this regime starves pure-Python work in another thread. The model is the toy crop model in a real
`samadapt3d serve` child started by samadapt3d.client.LocalServer.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time

import numpy as np
import pytest

from harness import scenes
from harness.fixtures import LIB_TESTS, effect_idle, slicer_gui, wait_for  # noqa: F401
from test_effect import click, setup_editor, slice_through

#: the main thread holds the GIL this long (s) between pumps, and pumps this long
HOLD_S, PUMP_S = 0.1, 0.001
#: a thread asking for the GIL gets it back from the other within this (s): the main thread wins it back at once
SWITCH_S = 1e-4
#: a click must be written within this (s) under that regime
CLICK_BUDGET_S = 5.0
#: under the regime, pure-Python work in another thread must take at least this many times longer (the control)
STARVED_FACTOR = 3.0


@functools.lru_cache(maxsize=1)
def _held_sum_length() -> int:
    """n such that sum(range(n)) takes about HOLD_S: C code that holds the GIL and is never preempted, like the
    C++ of Slicer's event loop running under PythonQt's GIL."""
    n = 200_000
    start = time.monotonic()
    sum(range(n))
    return max(n, int(n * HOLD_S / max(time.monotonic() - start, 1e-4)))


def hold_the_gil_like_pythonqt(gui, done, budget: float) -> float:
    """Hold the GIL on the main thread, releasing it only in short pumps (Qt events), until `done()` or `budget`
    seconds; returns the seconds taken."""
    n = _held_sum_length()
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_S)
    start = time.monotonic()
    try:
        while not done() and time.monotonic() - start < budget:
            sum(range(n))  # the GIL is held, no other thread runs
            time.sleep(PUMP_S)  # the idle pump: the only moment other threads run
            gui.qapp.processEvents()
    finally:
        sys.setswitchinterval(previous)
    return time.monotonic() - start


def _python_work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def test_the_regime_starves_python_threads(slicer_gui):
    """The control: in this regime a thread that computes in Python (as in-process inference does between torch
    calls) crawls; so the click test below measures what it claims."""
    n = 1_500_000
    _held_sum_length()  # calibrated before the worker starts
    start = time.monotonic()
    _python_work(n)
    alone = time.monotonic() - start
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (_python_work(n), finished.set()))
    worker.start()
    starved = hold_the_gil_like_pythonqt(slicer_gui, finished.is_set, budget=60 * alone + 5)
    worker.join()
    print(f"pure-Python work: {alone:.3f} s alone, {starved:.3f} s with the GIL held by the main thread")
    assert starved > STARVED_FACTOR * alone


@pytest.fixture
def toy_server():
    from samadapt3d.client import LocalServer
    from SAMAdapt3DSlicerLib import effect_session

    path = os.pathsep.join([str(LIB_TESTS), os.environ.get("PYTHONPATH", "")])
    server = LocalServer(python=sys.executable, device="cpu", extra_args=["--model-family", "test_server_toymodels"],
                         env={"PYTHONPATH": path}).start()
    effect_session.set_session_opener(lambda model, device: server.client.open_session(
        server.client.load_model("toy-crop", device="cpu")))
    try:
        yield server
    finally:
        effect_session.set_session_opener(None)
        server.stop()


def test_click_completes_while_the_main_thread_holds_the_gil(slicer_gui, scene, toy_server):
    volume, segmentation, ids, editor, view = setup_editor(slicer_gui, scene)
    effect = editor.activate("SAMAdapt3D").self()
    wait_for(slicer_gui, effect_idle(effect), timeout=120.0)  # server start, image upload
    assert effect.lastStatus.startswith("Ready"), effect.lastStatus

    click(editor, view, slice_through(view, volume, (6, 7, 7)))
    written = lambda: editor.modifications != []  # noqa: E731
    seconds = hold_the_gil_like_pythonqt(slicer_gui, written, budget=CLICK_BUDGET_S)
    print(f"click written after {seconds:.2f} s with the GIL held by the main thread")
    assert written(), f"no result within {CLICK_BUDGET_S} s: {effect.lastStatus}"
    expected = np.zeros(scenes.SHAPE_KJI, dtype=bool)
    expected[scenes.CUBE] = True
    assert np.array_equal(scenes.segment_array(segmentation, ids[0], volume), expected)
