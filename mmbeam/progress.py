"""Progress people can see: one tqdm bar per stage, or a periodic summary line in logs.

Every streaming operator and every distributed stage in the process reports to one
:class:`Progress` (``get_progress()``), keyed by stage name. How it shows depends on where the
output goes (:func:`progress_mode`):

- ``bars``: a terminal gets one ``tqdm`` bar per stage (rows, rows/s, failures, bytes in flight);
- ``notebook``: a Jupyter kernel gets ``tqdm.notebook`` widgets, one per stage;
- ``log``: anything else (a log file, CI, a pipe) gets one summary line at most every
  ``log_interval`` seconds (30 by default) and a last one when the run ends;
- ``off``: ``MMBEAM_PROGRESS=0``.

``MMBEAM_PROGRESS=bars|notebook|log`` forces a mode. Drawing is tqdm's; what mmbeam adds is the
per-stage bookkeeping shared by Beam DoFns, the in-process frame and the distributed runners'
drivers, and the log mode, which tqdm does not have.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["MODES", "Progress", "StageProgress", "get_progress", "progress_mode", "set_progress"]

MODES = ("off", "bars", "notebook", "log")


def progress_mode(stream: IO[str] | None = None) -> str:
    """The mode for ``stream`` (stderr by default): ``MMBEAM_PROGRESS`` if it names one (``0``
    is ``off``), else ``notebook`` in a Jupyter kernel, ``bars`` on a terminal, ``log`` else."""
    forced = os.environ.get("MMBEAM_PROGRESS", "").strip().lower()
    if forced in ("0", "off", "false", "no"):
        return "off"
    if forced in MODES:
        return forced
    if _in_notebook():
        return "notebook"
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bars" if isatty is not None and isatty() else "log"


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


@dataclass
class StageProgress:
    """What one stage has done so far."""

    done: int = 0
    failed: int = 0
    inflight_bytes: int = 0
    total: int | None = None
    bar: Any = None


class Progress:
    """Per-stage counts drawn as tqdm bars, notebook widgets or periodic log lines.

    ``stream`` defaults to ``sys.stderr``; ``mode`` to :func:`progress_mode`; ``clock`` is
    injected for tests (it times the log mode's summaries and the rates in them).
    """

    def __init__(self, stream: IO[str] | None = None, *, mode: str | None = None,
                 log_interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._stream = stream
        self.mode = mode if mode is not None else progress_mode(self.stream)
        if self.mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {self.mode!r}")
        self.log_interval = log_interval
        self.clock = clock
        self.stages: dict[str, StageProgress] = {}
        self._start: float | None = None
        self._last_log: float | None = None
        self._lock = threading.Lock()

    @property
    def stream(self) -> IO[str]:
        """Where it draws: the stream given, else ``sys.stderr`` as it is now (a process-wide
        display outlives a replaced stderr: pytest's capture, a notebook's)."""
        return self._stream if self._stream is not None else sys.stderr

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def update(self, stage: str, *, done: int = 0, failed: int = 0,
               inflight_bytes: int | None = None, total: int | None = None) -> None:
        """Add ``done`` finished and ``failed`` failed rows for ``stage``; maybe redraw."""
        if self.mode == "off":
            return
        with self._lock:
            now = self.clock()
            if self._start is None:
                self._start = self._last_log = now
            state = self.stages.get(stage)
            if state is None:
                state = self.stages[stage] = StageProgress()
                state.bar = self._new_bar(stage, len(self.stages) - 1)
            state.done += done
            state.failed += failed
            if inflight_bytes is not None:
                state.inflight_bytes = inflight_bytes
            if total is not None:
                state.total = total
            if state.bar is not None:
                self._draw(state, done)
            elif now - self._last_log >= self.log_interval:
                self._log(now)

    def summary(self) -> str:
        """One line for all stages: ``Download 1,024 rows (85.2/s), 2 failed, 3.0 MB in flight``."""
        with self._lock:
            return self._summary(self.clock())

    def close(self) -> None:
        """End the run: close the bars, or log the last summary; the next update starts anew."""
        with self._lock:
            if self.stages and self.mode == "log":
                self._log(self.clock())
            for state in self.stages.values():
                if state.bar is not None:
                    state.bar.close()
            self.stages.clear()
            self._start = self._last_log = None

    def _new_bar(self, stage: str, position: int):
        if self.mode == "log":
            return None
        if self.mode == "notebook":
            from tqdm.notebook import tqdm  # only in a notebook: imports IPython's widgets
        else:
            from tqdm import tqdm
        return tqdm(desc=stage, unit=" rows", file=self.stream, position=position, leave=True,
                    dynamic_ncols=True, mininterval=0.5)

    @staticmethod
    def _draw(state: StageProgress, done: int) -> None:
        bar = state.bar
        if state.total is not None and bar.total != state.total:
            bar.total = state.total
        postfix = {"failed": f"{state.failed:,}"}
        if state.inflight_bytes:
            postfix["in flight"] = f"{state.inflight_bytes / 1e6:,.1f} MB"
        bar.set_postfix(postfix, refresh=False)
        bar.update(done)

    def _log(self, now: float) -> None:
        self.stream.write(f"mmbeam progress: {self._summary(now)}\n")
        self.stream.flush()
        self._last_log = now

    def _summary(self, now: float) -> str:
        elapsed = now - self._start if self._start is not None else 0.0
        parts = []
        for name, state in self.stages.items():
            rate = f"{state.done / elapsed:,.1f}/s" if elapsed > 0 else "-/s"
            total = f" of {state.total:,}" if state.total is not None else ""
            text = f"{name} {state.done:,}{total} rows ({rate}), {state.failed:,} failed"
            if state.inflight_bytes:
                text += f", {state.inflight_bytes / 1e6:,.1f} MB in flight"
            parts.append(text)
        return " | ".join(parts)


_progress: Progress | None = None
_progress_lock = threading.Lock()


def get_progress() -> Progress:
    """The process-wide display (on stderr), created on first use."""
    global _progress
    with _progress_lock:
        if _progress is None:
            _progress = Progress()
        return _progress


def set_progress(progress: Progress | None) -> Progress | None:
    """Make ``progress`` the process-wide display (None: a new default one on next use);
    returns the one it replaces, to be put back."""
    global _progress
    with _progress_lock:
        previous, _progress = _progress, progress
        return previous
