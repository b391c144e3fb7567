"""The effect's worker (Qt-free): jobs in order, prompts waiting behind a running job collapsed into one rebuild of
the newest prompts, errors and cancels reported as outcomes, shutdown without a hang."""
from __future__ import annotations

import threading
import time

import numpy as np

from SAMAdapt3DSlicerLib.effect_prompts import PromptSet
from SAMAdapt3DSlicerLib.effect_runner import Job, PromptRunner


class RecordingSession:
    """InteractiveSession's API, recording calls; `gate` holds the first prompt until the test opens it."""

    def __init__(self) -> None:
        self.calls = []
        self.gate = threading.Event()
        self.cancelled = False
        self.mask = np.zeros((2, 2, 2), dtype=bool)

    def set_image(self, volume):
        self.calls.append("set_image")

    def prepare(self):
        return 0

    def set_seed_mask(self, seed):
        self.calls.append("seed")
        return self.mask

    def add_point(self, point, positive=True, space="ras", view_axis=None):
        self.gate.wait(10)
        if self.cancelled:
            from samadapt3d.errors import CancelledError

            self.cancelled = False
            raise CancelledError("segmentation cancelled")
        if point == "bad":
            from samadapt3d.errors import InputError

            raise InputError("the point is outside the image")
        self.calls.append(("point", point, positive, view_axis))
        return self.mask

    def set_box(self, a, b, space="ras"):
        self.calls.append(("box", a, b))
        return self.mask

    def segment(self, positive=(), negative=(), box=None, space="ras"):
        self.calls.append(("rebuild", len(positive), len(negative), box))
        return self.mask

    def cancel(self):
        self.cancelled = True
        self.gate.set()


def wait(runner, count, timeout=10.0):
    outcomes, start = [], time.monotonic()
    while len(outcomes) < count and time.monotonic() - start < timeout:
        outcomes += runner.poll()
        time.sleep(0.005)
    return outcomes


def test_prompts_waiting_behind_a_running_job_become_one_rebuild():
    session = RecordingSession()
    runner = PromptRunner(lambda: session, prepare=False)
    try:
        runner.submit(Job("image", 1, volume=object(), seed=None))
        first = runner.submit(Job("point", 1, point=(1, 2, 3), view_axis=2))
        time.sleep(0.1)  # the first click is running (held at the gate)
        runner.submit(Job("point", 1, point=(4, 5, 6)))
        newest = PromptSet(positive=[(1, 2, 3), (4, 5, 6)], negative=[(7, 8, 9)])
        last = runner.submit(Job("point", 1, prompts=newest, point=(7, 8, 9), positive=False))
        session.gate.set()
        outcomes = wait(runner, 3)
    finally:
        runner.shutdown()
    assert session.calls == ["set_image", ("point", (1, 2, 3), True, 2), ("rebuild", 2, 1, None)]
    assert [o.job.kind for o in outcomes] == ["image", "point", "rebuild"]
    assert outcomes[1].job.number == first.number and outcomes[2].job.number == last.number == runner.last_number


def test_errors_and_cancels_are_outcomes_and_the_runner_goes_on():
    session = RecordingSession()
    runner = PromptRunner(lambda: session, prepare=False)
    try:
        runner.submit(Job("image", 1, volume=object(), seed=np.ones((2, 2, 2), dtype=bool)))
        runner.submit(Job("point", 1, point=(1, 1, 1)))
        time.sleep(0.1)
        runner.cancel()  # the running click is cancelled: an outcome, nothing recorded
        outcomes = wait(runner, 2)
        session.gate.set()
        runner.submit(Job("point", 1, point="bad"))
        outcomes += wait(runner, 1)
        runner.submit(Job("box", 1, box=((0, 0, 0), (1, 1, 0))))
        outcomes += wait(runner, 1)
    finally:
        start = time.monotonic()
        runner.shutdown()
        assert time.monotonic() - start < 2.0
    assert session.calls == ["set_image", "seed", ("box", (0, 0, 0), (1, 1, 0))]
    assert [bool(o.cancelled) for o in outcomes] == [False, True, False, False]
    assert "outside the image" in outcomes[2].error and outcomes[3].error is None


def test_a_failing_session_opener_is_a_message():
    def opener():
        raise ConnectionRefusedError("no server on 127.0.0.1:1")

    runner = PromptRunner(opener, prepare=False)
    try:
        runner.submit(Job("image", 1, volume=object()))
        (outcome,) = wait(runner, 1)
    finally:
        runner.shutdown()
    assert "ConnectionRefusedError" in outcome.error and "127.0.0.1:1" in outcome.error


def test_a_lost_server_is_reported_and_the_next_job_opens_a_new_session():
    from samadapt3d.client import ServerError

    class DeadServerSession(RecordingSession):
        def add_point(self, point, positive=True, space="ras", view_axis=None):
            raise ServerError("the samadapt3d server at 127.0.0.1:1 cannot be reached", None)

    sessions = [DeadServerSession(), RecordingSession()]
    opened = []

    def opener():
        opened.append(sessions[len(opened)])
        return opened[-1]

    runner = PromptRunner(opener, prepare=False)
    try:
        runner.submit(Job("image", 1, volume=object()))
        runner.submit(Job("point", 1, point=(1, 1, 1)))
        outcomes = wait(runner, 2)
        sessions[1].gate.set()
        runner.submit(Job("image", 2, volume=object()))
        outcomes += wait(runner, 1)
    finally:
        runner.shutdown()
    assert outcomes[1].server_lost and "cannot be reached" in outcomes[1].error
    assert not outcomes[0].server_lost and outcomes[2].error is None
    assert len(opened) == 2 and sessions[1].calls == ["set_image"]


def test_a_refused_request_is_not_a_lost_server():
    from samadapt3d.client import ServerError

    class RefusingSession(RecordingSession):
        def add_point(self, point, positive=True, space="ras", view_axis=None):
            raise ServerError("box outside the image", 422, "InputError")

    runner = PromptRunner(RefusingSession, prepare=False)
    try:
        runner.submit(Job("point", 1, point=(1, 1, 1)))
        (outcome,) = wait(runner, 1)
    finally:
        runner.shutdown()
    assert outcome.error and not outcome.server_lost


class PreviewingRecordingSession(RecordingSession):
    """Shows two previews (the runner sets `preview`) before each click's answer."""

    preview = None

    def add_point(self, point, positive=True, space="ras", view_axis=None):
        for n in (1, 2):
            self.preview(np.full((2, 2, 2), n == 2))
        return super().add_point(point, positive, space, view_axis)


def test_previews_come_before_the_result_and_only_the_newest_waits():
    session = PreviewingRecordingSession()
    session.gate.set()
    runner = PromptRunner(lambda: session, prepare=False)
    try:
        runner.submit(Job("image", 1, volume=object()))
        runner.submit(Job("point", 1, point=(1, 2, 3)))
        start = time.monotonic()
        while runner.busy:  # nothing polled meanwhile: both previews wait, the newest replaces the first
            assert time.monotonic() - start < 10
            time.sleep(0.005)
        outcomes = runner.poll()
        assert [(o.job.kind, o.preview) for o in outcomes] == [("image", False), ("point", True), ("point", False)]
        assert outcomes[1].mask.all() and outcomes[2].error is None
    finally:
        runner.shutdown()
