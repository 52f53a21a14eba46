"""A one-line progress display for long runs: rows done, rows/s, failures, bytes in flight.

Every streaming operator in the process reports to one :class:`Progress` (``get_progress()``).
It redraws at most every ``interval`` seconds with a carriage return, and only when its stream
is a terminal: in a log file, a CI job or a notebook cell it stays silent. Set
``MMBEAM_PROGRESS=0`` to turn it off in a terminal too.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

__all__ = ["Progress", "get_progress"]


class Progress:
    """Counts per stage and draws ``rows 1,024 | 85.2 rows/s | failed 0 | in flight 12 MB``.

    ``rows`` is the slowest stage's count (the pipeline's finished rows when stages chain);
    ``stream`` defaults to ``sys.stderr``; ``clock`` is injected for tests.
    """

    def __init__(self, stream: IO[str] | None = None, *, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic, enabled: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty()) and os.environ.get("MMBEAM_PROGRESS") != "0"
        self.enabled = enabled
        self.interval = interval
        self.clock = clock
        self.done: dict[str, int] = {}
        self.failed = 0
        self.inflight: dict[str, int] = {}
        self._start: float | None = None
        self._last_draw = float("-inf")
        self._drawn = False
        self._lock = threading.Lock()

    def update(self, stage: str, *, done: int = 0, failed: int = 0,
               inflight_bytes: int | None = None) -> None:
        """Add ``done`` finished and ``failed`` failed rows for ``stage``; maybe redraw."""
        with self._lock:
            now = self.clock()
            if self._start is None:
                self._start = now
            self.done[stage] = self.done.get(stage, 0) + done
            self.failed += failed
            if inflight_bytes is not None:
                self.inflight[stage] = inflight_bytes
            if self.enabled and now - self._last_draw >= self.interval:
                self._draw(now)

    def line(self) -> str:
        """The text of the current status line."""
        with self._lock:
            return self._line(self.clock())

    def finish(self) -> None:
        """Draw the final state and end the line (only if something was drawn)."""
        with self._lock:
            if self.enabled and self._drawn:
                self._draw(self.clock())
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = False

    def _line(self, now: float) -> str:
        rows = min(self.done.values()) if self.done else 0
        elapsed = max(1e-9, now - (self._start if self._start is not None else now))
        rate = rows / elapsed if elapsed > 1e-6 else 0.0
        inflight = sum(self.inflight.values()) / 1e6
        return (f"rows {rows:,} | {rate:,.1f} rows/s | failed {self.failed:,} | "
                f"in flight {inflight:,.1f} MB")

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self._line(now) + "\x1b[K")
        self.stream.flush()
        self._last_draw = now
        self._drawn = True


_progress: Progress | None = None
_progress_lock = threading.Lock()


def get_progress() -> Progress:
    """The process-wide display (on stderr), created on first use."""
    global _progress
    with _progress_lock:
        if _progress is None:
            _progress = Progress()
        return _progress
