"""What the child-process runners (dependencies' installer, training's trainer) share: their events cross from a
reader thread to Slicer's main thread through a queue, which the GUI timer empties without blocking."""
from __future__ import annotations

import queue
from typing import TypeVar

Event = TypeVar("Event")


def drain(events: queue.Queue[Event]) -> list[Event]:
    """Everything queued so far, oldest first; never waits."""
    out = []
    while True:
        try:
            out.append(events.get_nowait())
        except queue.Empty:
            return out
