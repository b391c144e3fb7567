"""Progress for the command line, fed by the session's / engines' progress callbacks `(fraction, message)`.

The command line draws the bar on stderr when that is a terminal, else writes the plain lines to stdout.
On a terminal: one line redrawn in place (phase, bar, percentage, what is being done, elapsed time). Elsewhere (a
log file, a pipe, CI): plain lines, one when a phase starts, then at most one per `PLAIN_STEP` of progress or per
`PLAIN_EVERY_S` seconds, so a long run is never silent and a log stays short.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Callable, TextIO

PLAIN_STEP = 0.1
PLAIN_EVERY_S = 10.0
TTY_EVERY_S = 0.1
BAR_WIDTH = 24
_COUNTS = re.compile(r"\s*\d+\s*/\s*\d+")


class Progress:
    """A callable `(fraction, message)`; `phase(name)` starts the next stretch of work (its own 0..100 %)."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 tty: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock
        self.start = clock()
        self.name = ""
        self._last_time = -1e9
        self._last_fraction = -1.0
        self._last_stage = None
        self._drawn = False

    def phase(self, name: str) -> "Progress":
        self.name = name
        self._last_fraction, self._last_stage, self._last_time = -1.0, None, -1e9
        self(0.0, "starting")
        return self

    def __call__(self, fraction: float, message: str = "") -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        now = self.clock()
        stage = _COUNTS.sub("", message).strip()  # "slice 3/34" and "slice 4/34" are one stage
        if self.tty:
            if now - self._last_time < TTY_EVERY_S and fraction < 1.0 and stage == self._last_stage:
                return
            filled = int(round(BAR_WIDTH * fraction))
            line = (f"{self.name}: {100 * fraction:3.0f}% |{'#' * filled}{'.' * (BAR_WIDTH - filled)}| "
                    f"{message} [{now - self.start:.0f} s]")
            self.stream.write("\r\033[K" + line)
            self._drawn = True
        else:
            due = (stage != self._last_stage or fraction >= self._last_fraction + PLAIN_STEP
                   or now - self._last_time >= PLAIN_EVERY_S or (fraction >= 1.0 > self._last_fraction))
            if not due:
                return
            label = f"{self.name}: " if self.name else ""
            self.stream.write(f"{label}{100 * fraction:3.0f}% {message} ({now - self.start:.1f} s)\n")
        self.stream.flush()
        self._last_time, self._last_fraction, self._last_stage = now, fraction, stage

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
