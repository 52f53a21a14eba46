"""The row engine both surfaces run: calls → steps, and one window of rows in flight.

:func:`chain_steps` turns a chain of declared function calls (:mod:`mmbeam.ops.functions`)
into :class:`~mmbeam.ops.rowchain.Step`s; :func:`reduced_box` is the one place that decides
whether a decode may run at a reduced JPEG scale, from what reads the decoded image.
:class:`RowWindow` keeps a bounded, autotuned number of rows of one chain in flight: it
acquires a slot per row, learns each finished row's time and bytes through
:class:`~mmbeam.autotune.BatchSizeController`, resizes itself every few rows, and counts what
each stage did (:class:`StageCounts`). The Beam DoFn (``mmbeam.transforms.ElementFn``) and the
frame's evaluator are thin drivers over it, so both give the same windows, stage names, counts
and failures. No Beam here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from mmbeam.autotune import ROW_SMOOTHING, BatchSizeController, Measurement, default_memory_budget
from mmbeam.ops.pool import cpu_workers
from mmbeam.ops.registry import Call
from mmbeam.ops.rowchain import RowChain, RowOutcome, Step

__all__ = [
    "MAX_WINDOW",
    "RETUNE_EVERY",
    "RowWindow",
    "StageCounts",
    "chain_steps",
    "reduced_box",
]

MAX_WINDOW = 512
RETUNE_EVERY = 8
_log = logging.getLogger("mmbeam.autotune")


def reduced_box(readers: Sequence[Call | None]) -> tuple[int, int] | None:
    """The smallest size every reader of a decoded image needs, when each reader only needs
    a size (a resize); None when there is no reader, or one that needs the full image (None
    stands for a reader that is not a declared function, such as a ``beam.Map``)."""
    boxes = []
    for reader in readers:
        box = None if reader is None or reader.function.reads_box is None \
            else reader.function.reads_box(reader.options)
        if box is None:
            return None
        boxes.append(box)
    if not boxes:
        return None
    return max(w for w, _ in boxes), max(h for _, h in boxes)


def with_box(call: Call, readers: Sequence[Call | None]) -> Call:
    """``call`` with its box option (a decode's ``min_size``) filled from its readers, unless
    the caller set it."""
    option = call.function.box_option
    if option is None or call.options.get(option) is not None:
        return call
    box = reduced_box(readers)
    return call if box is None else Call(call.function, {**call.options, option: box})


def chain_steps(calls: Sequence[Call], *, readers: Sequence[Call | None] = (),
                rows: Sequence[Mapping[str, Sequence[Any]] | None] | None = None,
                nullable: Sequence[bool] | None = None) -> list[Step]:
    """One step per call; each call's reader is the next call, and ``readers`` read the last.

    ``rows`` (the frame) gives each call's per-row option columns; ``nullable`` overrides
    each call's ``on_error == "null"`` (a transform with exception handling sends failures
    to its failed output instead)."""
    steps = []
    for i, call in enumerate(calls):
        after = [calls[i + 1]] if i + 1 < len(calls) else list(readers)
        call = with_box(call, after)
        null = call.nullable if nullable is None else nullable[i]
        steps.append(call.function.step(call.options, null, None if rows is None else rows[i]))
    return steps


class StageCounts:
    """What each stage of a chain did: rows succeeded, failed, nulled, and the output bytes
    of each part's last stage (``ends``: indexes of those steps). Thread-safe."""

    def __init__(self, stages: Sequence[str], ends: Sequence[int]):
        self.stages = tuple(stages)
        self.ends = tuple(ends)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        n = len(self.stages)
        self.succeeded, self.failed, self.nulls = [0] * n, [0] * n, [0] * n
        self.bytes = dict.fromkeys(self.ends, 0)

    def add(self, outcome: RowOutcome) -> int:
        """Count one finished row; returns the index of the step that failed or nulled it
        (``len(stages)`` when every step succeeded)."""
        ran = len(outcome.sizes)
        with self._lock:
            for index in range(ran):
                self.succeeded[index] += 1
                if index in self.bytes:
                    self.bytes[index] += outcome.sizes[index]
            if outcome.error is not None or outcome.nulled is not None:
                self.failed[ran] += 1
                self.nulls[ran] += outcome.error is None
        return ran

    def fail(self, index: int) -> None:
        """Count a row that failed before reaching the chain (at step ``index``)."""
        with self._lock:
            self.failed[index] += 1

    def take(self) -> dict[str, dict[str, int]]:
        """``{stage: {"succeeded", "failed", "nulls"[, "bytes"]}}`` since the last take
        (stages with nothing to report left out), and start counting afresh."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for i, stage in enumerate(self.stages):
                counts = {"succeeded": self.succeeded[i], "failed": self.failed[i],
                          "nulls": self.nulls[i]}
                if i in self.bytes:
                    counts["bytes"] = self.bytes[i]
                if any(counts.values()):
                    total = out.setdefault(stage, dict.fromkeys(counts, 0))
                    for name, value in counts.items():
                        total[name] = total.get(name, 0) + value
            self._reset()
            return out


class RowWindow:
    """Rows of ``chain`` in flight, at most :attr:`size` at once (see the module doc).

    The window starts at the chain's :meth:`~mmbeam.ops.rowchain.RowChain.min_window`
    (capped by ``max_window``) and is resized every :data:`RETUNE_EVERY` finished rows to what
    keeps the workers busy: the connections of an I/O-only chain (headroom 1.5), else the CPU
    pool (headroom 2.0), under ``memory_budget``. ``ends`` are the steps whose output bytes
    are counted (default: the last); ``name`` names the controller in logs and ``explain``.
    """

    def __init__(self, chain: RowChain, *, name: str | None = None,
                 memory_budget: int | None = None, max_window: int = MAX_WINDOW,
                 ends: Sequence[int] | None = None):
        self.chain = chain
        self.name = name or "+".join(chain.stages)
        steps = chain.steps
        io_only = all(s.kind == "io" for s in steps)
        self.workers = max(s.limit or 1 for s in steps) if io_only else cpu_workers()
        self.headroom = 1.5 if io_only else 2.0
        first = min(max_window, chain.min_window())
        self.floor = first
        self.size = first
        self.controller = BatchSizeController(
            name=self.name, memory_budget=memory_budget or default_memory_budget(),
            min_size=1, max_size=max(first, max_window), initial=first,
            smoothing=ROW_SMOOTHING).register()
        self.counts = StageCounts(chain.stages, (len(steps) - 1,) if ends is None else ends)
        self.sizes: list[int] = []  # each size chosen since the last take_sizes()
        self._cond = threading.Condition()
        self._held = 0
        self._finished = 0

    @property
    def held(self) -> int:
        """Rows in flight now."""
        return self._held

    def acquire(self) -> None:
        """Wait for a free slot and take it."""
        with self._cond:
            while self._held >= self.size:
                self._cond.wait()
            self._held += 1

    def submit(self, value: Any, key: Any = None, name: Any = None) -> concurrent.futures.Future:
        """Start one row once a slot is free (blocks while the window is full); the future
        holds its :class:`~mmbeam.ops.rowchain.RowOutcome`, already learnt and counted."""
        self.acquire()
        try:
            future = self.chain.submit(value, key, name)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._done)
        return future

    def run(self, values: Sequence[Any], names: Sequence[Any]) -> list[RowOutcome]:
        """Every value through the chain (keys are row indexes); the outcomes in order, each
        already counted (a future's waiters wake before its callbacks run, so this waits for
        a callback registered after the window's own)."""
        finished = threading.Semaphore(0)
        futures = []
        for i, value in enumerate(values):
            future = self.submit(value, i, names[i])
            future.add_done_callback(lambda _: finished.release())
            futures.append(future)
        for _ in futures:
            finished.acquire()
        return [f.result() for f in futures]

    def take_sizes(self) -> list[int]:
        """The sizes chosen since the last call (for a ``window`` metric)."""
        with self._cond:
            sizes, self.sizes = self.sizes, []
            return sizes

    def _done(self, future: concurrent.futures.Future) -> None:
        try:
            if not future.cancelled() and future.exception() is None:
                outcome = future.result()
                self.counts.add(outcome)
                self._learn(outcome)
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._held -= 1
            self._cond.notify()

    def _learn(self, outcome: RowOutcome) -> None:
        """Feed the row's cost to the controller; every few rows, pick the size again."""
        self.controller.record(Measurement(
            1, seconds=outcome.io_seconds + outcome.cpu_seconds,
            busy_seconds=outcome.cpu_seconds or outcome.io_seconds,
            peak_bytes=outcome.peak_bytes))
        with self._cond:
            self._finished += 1
            if self._finished % RETUNE_EVERY:
                return
            size = self.controller.inflight(self.workers, floor=self.floor,
                                            headroom=self.headroom)
            if size != self.size:
                _log.debug("%s: window %d -> %d (%s)", self.name, self.size, size,
                           self.controller.describe())
                self.size = size
                self._cond.notify_all()
            self.sizes.append(size)

    def __getstate__(self):
        raise TypeError("a RowWindow lives in one process; pickle its chain instead")
