"""The effect's worker: one thread runs prompt jobs in order on a session (RemoteSession: the model runs in the
server process; or anything with InteractiveSession's API); the main thread polls the outcomes with a QTimer and
writes them through the Segment Editor. Qt-free, so it is tested headless.

While a prompt job runs, the session's previews (its mask so far) come as outcomes marked `preview`; the newest
replaces any not yet polled, and the job's own outcome follows.

Jobs run in submission order because the session is incremental (a click is `add_point`, with the view it came
from). When several prompt jobs wait behind a running one, they are collapsed into one `rebuild` of the newest
prompts (a single model run): the user sees the latest state sooner, and nothing is lost because a rebuild
restates every prompt.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .effect_prompts import PromptSet

#: how long `shutdown` waits for a running job to notice the cancel
SHUTDOWN_WAIT_S = 5.0
PROMPT_KINDS = ("point", "box", "rebuild")


@dataclass(frozen=True)
class Job:
    """kind: "image" (new volume + seed), "reseed" (the segment changed outside the effect), "point", "box",
    "rebuild" (restate `prompts`)."""

    kind: str
    generation: int
    prompts: PromptSet = field(default_factory=PromptSet)
    volume: Any = None
    seed: Any = None
    point: Any = None
    positive: bool = True
    view_axis: int | None = None
    box: tuple | None = None
    number: int = 0


@dataclass(frozen=True)
class Outcome:
    job: Job
    mask: Any = None
    error: str | None = None
    cancelled: bool = False
    seconds: float = 0.0
    #: the server could not be reached (and its launcher could not bring it back): this session is gone
    server_lost: bool = False
    #: the job's mask so far (the session's preview while it runs); its final outcome comes later
    preview: bool = False


class PromptRunner:
    def __init__(self, open_session: Callable[[], Any], prepare: bool = True) -> None:
        self._open_session = open_session
        self._prepare = prepare
        self.session = None
        self._pending: list[Job] = []
        self._outcomes: list[Outcome] = []
        self._running: Job | None = None
        self._started = 0.0  # when the running job started (monotonic)
        self._numbers = 0
        self._condition = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="SAMAdapt3D effect worker", daemon=True)
        self._thread.start()

    # ---- main thread -------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._condition:
            self._numbers += 1
            job = Job(**{**job.__dict__, "number": self._numbers})
            if job.kind in ("image", "reseed"):
                self._pending = [p for p in self._pending if p.kind not in PROMPT_KINDS or p.generation == job.generation]
            self._pending.append(job)
            self._collapse()
            self._condition.notify_all()
        return job

    def _collapse(self) -> None:
        waiting = [p for p in self._pending if p.kind in PROMPT_KINDS]
        if len(waiting) < 2:
            return
        newest = waiting[-1]
        rebuild = Job("rebuild", newest.generation, prompts=newest.prompts, number=newest.number)
        self._pending = [p for p in self._pending if p.kind not in PROMPT_KINDS] + [rebuild]

    def poll(self) -> list[Outcome]:
        with self._condition:
            outcomes, self._outcomes = self._outcomes, []
        return outcomes

    @property
    def last_number(self) -> int:
        return self._numbers

    @property
    def busy(self) -> bool:
        with self._condition:
            return self._running is not None or bool(self._pending)

    def cancel(self) -> None:
        """Drop waiting jobs and cancel the running one (the session is left as it was)."""
        with self._condition:
            self._pending = []
        if self.session is not None:
            self.session.cancel()

    def shutdown(self) -> None:
        with self._condition:
            self._stop = True
            self._pending = []
            self._condition.notify_all()
        if self.session is not None:
            self.session.cancel()
        self._thread.join(SHUTDOWN_WAIT_S)
        close = getattr(self.session, "close", None)
        if callable(close):
            close()

    # ---- worker thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._stop:
                    self._condition.wait()
                if self._stop:
                    return
                job = self._running = self._pending.pop(0)
            outcome = self._run(job)
            with self._condition:
                self._running = None
                self._outcomes.append(outcome)

    def _run(self, job: Job) -> Outcome:
        from samadapt3d.errors import CancelledError, SAMAdapt3DError

        start = self._started = time.monotonic()
        try:
            if self.session is None:
                self.session = self._open_session()
                self.session.preview = self._show_preview
            mask = self._apply(job)
        except CancelledError:
            return Outcome(job, cancelled=True, seconds=time.monotonic() - start)
        except SAMAdapt3DError as exc:  # bad prompt, model failure, server gone: a message, never a crash
            lost = _is_connection_lost(exc)
            if lost:
                self.session = None  # its server is gone; a later job opens a new one
            return Outcome(job, error=str(exc), seconds=time.monotonic() - start, server_lost=lost)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory in the server: Slicer must stay usable
            return Outcome(job, error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - start)
        return Outcome(job, mask=mask, seconds=time.monotonic() - start)

    def _show_preview(self, mask) -> None:
        """The session's preview of the running prompt job (worker thread): only the newest waits to be shown."""
        with self._condition:
            job = self._running
            if job is None or job.kind not in PROMPT_KINDS:
                return
            self._outcomes = [o for o in self._outcomes if not (o.preview and o.job.number == job.number)]
            self._outcomes.append(Outcome(job, mask=mask, preview=True, seconds=time.monotonic() - self._started))

    def _apply(self, job: Job):
        session = self.session
        if job.kind == "image":
            session.set_image(job.volume)
            if self._prepare:  # in the background: the first click is not held behind a whole-volume warm-up
                session.prepare(background=True)
            return session.set_seed_mask(job.seed) if job.seed is not None and job.seed.any() else session.mask
        if job.kind == "reseed":
            return session.set_seed_mask(job.seed if job.seed is not None and job.seed.any() else None)
        if job.kind == "point":
            return session.add_point(job.point, positive=job.positive, space="ras", view_axis=job.view_axis)
        if job.kind == "box":
            return session.set_box(job.box[0], job.box[1], space="ras")
        if job.kind == "rebuild":
            p = job.prompts
            return session.segment(positive=p.positive, negative=p.negative, box=p.box, space="ras")
        raise ValueError(f"unknown job kind {job.kind!r}")


def _is_connection_lost(exc: Exception) -> bool:
    """A ServerError without an HTTP status: nothing answered (samadapt3d.client's convention)."""
    from samadapt3d.client import ServerError

    return isinstance(exc, ServerError) and exc.status is None
