"""A fused per-row kernel: several steps (download, decode, resize, encode, upload) run per row as
one unit of work, so full-size intermediates live only inside one row's work.

When every I/O step has a ``blocking`` form (an HTTP download, see ops/http.py), a row runs on
threads only: each I/O step on the chain's own pool of ``limit`` threads, then each run of
consecutive CPU steps as one task on the shared CPU pool, each task handing the row on to the next
pool; no event-loop round trip, which costs a self-pipe wake-up per hop. Otherwise each row is one
coroutine on fsspec's I/O loop: an I/O step is awaited there (at most ``limit`` rows in that step
at once, e.g. the connection count), and each run of consecutive CPU steps is one task on the
shared CPU pool. Rows overlap freely: while the pool decodes row 3, rows 4-40 are
downloading and row 2 is being written. A failing step either nulls the row (its
``on_error="null"``; later steps pass the None through) or ends the row with a StageError located
at that step's stage and the row's name. :meth:`RowChain.submit` never raises: its future holds a
:class:`RowOutcome` with the value, the error if any, what the row cost (for autotuning), the
bytes each step's output held and, when a step failed, the value it failed on (so a chain of
several fused transforms can name a failure by that transform's own input).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from fsspec.asyn import get_loop

from mmbeam.errors import StageError
from mmbeam.ops.pool import cpu_pool, cpu_workers

__all__ = ["RowChain", "RowOutcome", "Step", "value_bytes"]


@dataclass(frozen=True)
class Step:
    """One step: ``fn(value, key)`` returns the next value (an ``async def`` for ``io``).

    ``stage`` names the step in errors and metrics, ``nullable`` is ``on_error == "null"``,
    ``limit`` bounds how many rows run an ``io`` step at once (None: unbounded); ``blocking``
    is an optional plain-function form of an ``io`` step's ``fn``, run on an I/O thread.
    """

    stage: str
    kind: str  # "io" or "cpu"
    fn: Callable[[Any, Any], Any]
    nullable: bool = False
    limit: int | None = None
    blocking: Callable[[Any, Any], Any] | None = None


class RowOutcome(NamedTuple):
    """One row's result: ``value`` (None when nulled or failed), the failure if the row failed
    (``error``, located at ``stage``), the stages that nulled it, and what it cost.

    ``sizes`` holds the output bytes of each step that succeeded, in order, so
    ``len(sizes)`` is the index of the step that failed or nulled the row; ``failed_input`` is
    the value that step was given when it failed.
    """

    value: Any
    error: StageError | None
    nulled: str | None
    io_seconds: float
    cpu_seconds: float
    peak_bytes: int
    sizes: tuple[int, ...] = ()
    failed_input: Any = None


def value_bytes(value: Any) -> int:
    """Bytes a value holds: a buffer's length or an array's ``nbytes`` (0 otherwise)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return int(getattr(value, "nbytes", 0) or 0)


class _StepFailedError(Exception):
    def __init__(self, stage: str, error: BaseException, value: Any):
        self.stage, self.error, self.value = stage, error, value


class RowChain:
    """Runs ``steps`` per row; picklable (gates are rebuilt lazily on the I/O loop)."""

    def __init__(self, steps: Sequence[Step]):
        if not steps:
            raise ValueError("a RowChain needs at least one step")
        self.steps = tuple(steps)
        self._groups = _group(self.steps)
        self._gates: dict[int, asyncio.Semaphore] | None = None
        self._threaded = all(s.blocking is not None for s in self.steps if s.kind == "io")
        self._io_pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
        self._io_pools_lock = threading.Lock()

    def __getstate__(self):
        return {"steps": self.steps}

    def __setstate__(self, state):
        self.__init__(state["steps"])

    @property
    def stages(self) -> tuple[str, ...]:
        """The stage name of each step, in order."""
        return tuple(s.stage for s in self.steps)

    def min_window(self) -> int:
        """The fewest rows worth keeping in flight: every connection of the widest I/O step
        busy and, when there are CPU steps, two more rows per CPU thread (waiting for or in
        the CPU pool) so the connections stay busy while the CPU works; measured costs decide
        how many more."""
        limits = [s.limit for s in self.steps if s.kind == "io" and s.limit]
        io_rows = max(limits, default=0)
        if all(s.kind == "io" for s in self.steps):
            return max(io_rows, 2 * cpu_workers())
        return io_rows + 2 * cpu_workers()

    def submit(self, value: Any, key: Any = None, name: Any = None) -> concurrent.futures.Future:
        """Start one row; ``name`` (default: the value) is what errors call the element."""
        name = value if name is None else name
        if len(self._groups) == 1 and self._groups[0][0] == "cpu":  # no I/O: skip the loop
            return cpu_pool().submit(self._run_cpu_only, value, key, name)
        if self._threaded:
            row = _Row(value, key, name, concurrent.futures.Future())
            if value is None:  # a null passes through, as in _run
                row.result.set_result(RowOutcome(None, None, None, 0.0, 0.0, 0))
            else:
                self._hand_on(row, 0)
            return row.result
        return asyncio.run_coroutine_threadsafe(self._run(value, key, name), get_loop())

    def _hand_on(self, row: _Row, group: int) -> None:
        """Queue group ``group`` of ``row`` on its pool (threaded rows)."""
        kind, index, _ = self._groups[group]
        pool = cpu_pool() if kind == "cpu" else self._io_pool(index)
        pool.submit(self._run_group, row, group)

    def _io_pool(self, index: int) -> concurrent.futures.ThreadPoolExecutor:
        """The threads of I/O step ``index``: ``limit`` of them (its connection count)."""
        pool = self._io_pools.get(index)
        if pool is None:
            with self._io_pools_lock:
                pool = self._io_pools.get(index)
                if pool is None:
                    step = self.steps[index]
                    pool = self._io_pools[index] = concurrent.futures.ThreadPoolExecutor(
                        step.limit or 32, thread_name_prefix=f"mmbeam-{step.stage}")
        return pool

    def _run_group(self, row: _Row, group: int) -> None:
        """One group of a threaded row, then hand the row on (or settle its future)."""
        kind, _, steps = self._groups[group]
        try:
            if kind == "io":
                step = steps[0]
                start = time.perf_counter()
                try:
                    out = step.blocking(row.value, row.key)
                except Exception as exc:  # noqa: BLE001 - routed by the step's policy
                    if not step.nullable:
                        raise _StepFailedError(step.stage, exc, row.value) from exc
                    out, row.nulled = None, row.nulled or step.stage
                finally:
                    row.io_seconds += time.perf_counter() - start
                if out is not None or row.nulled is None:
                    row.sizes.append(value_bytes(out))
                peak = value_bytes(row.value) + value_bytes(out)
            else:
                out, nulled, busy, peak = _run_cpu(steps, row.value, row.key, row.sizes)
                row.nulled = row.nulled or nulled
                row.cpu_seconds += busy
            row.peak = max(row.peak, peak)
            row.value = out
            if out is None or group + 1 == len(self._groups):
                row.result.set_result(RowOutcome(
                    out, None, row.nulled, row.io_seconds, row.cpu_seconds, row.peak,
                    tuple(row.sizes)))
            else:
                self._hand_on(row, group + 1)
        except _StepFailedError as failed:
            row.result.set_result(RowOutcome(None, _located(failed, row.name), None,
                                             row.io_seconds, row.cpu_seconds, row.peak,
                                             tuple(row.sizes), failed.value))
        except BaseException as exc:  # a bug or a shut-down pool: never lose the row silently
            row.result.set_exception(exc)

    def _run_cpu_only(self, value: Any, key: Any, name: Any) -> RowOutcome:
        if value is None:
            return RowOutcome(None, None, None, 0.0, 0.0, 0)
        sizes: list[int] = []
        try:
            value, nulled, busy, peak = _run_cpu(self.steps, value, key, sizes)
        except _StepFailedError as failed:
            return RowOutcome(None, _located(failed, name), None, 0.0, 0.0, 0, tuple(sizes),
                              failed.value)
        return RowOutcome(value, None, nulled, 0.0, busy, peak, tuple(sizes))

    async def _run(self, value: Any, key: Any, name: Any) -> RowOutcome:
        cost = [0.0, 0.0, value_bytes(value)]  # io seconds, cpu seconds, peak bytes
        sizes: list[int] = []
        nulled = None
        try:
            for kind, index, steps in self._groups:
                if value is None:
                    break
                if kind == "io":
                    value, nulled = await self._io(index, steps[0], value, key, cost, nulled)
                    if value is not None or nulled is None:
                        sizes.append(value_bytes(value))
                else:
                    loop = asyncio.get_running_loop()
                    value, dn, busy, peak = await loop.run_in_executor(
                        cpu_pool(), _run_cpu, steps, value, key, sizes)
                    nulled = nulled or dn
                    cost[1] += busy
                    cost[2] = max(cost[2], peak)
        except _StepFailedError as failed:
            return RowOutcome(None, _located(failed, name), None, *cost, tuple(sizes),
                              failed.value)
        return RowOutcome(value, None, nulled, *cost, tuple(sizes))

    async def _io(self, index, step, value, key, cost, nulled):
        if self._gates is None:  # first use, on the loop's own thread: no race
            self._gates = {}
        gate = self._gates.get(index)
        if gate is None and step.limit:
            gate = self._gates[index] = asyncio.Semaphore(step.limit)
        async with gate or _NoGate():
            start = time.perf_counter()
            try:
                out = await step.fn(value, key)
            except Exception as exc:  # noqa: BLE001 - routed by the step's policy
                if not step.nullable:
                    raise _StepFailedError(step.stage, exc, value) from exc
                return None, nulled or step.stage
            finally:
                cost[0] += time.perf_counter() - start
        cost[2] = max(cost[2], value_bytes(value) + value_bytes(out))
        return out, nulled


class _Row:
    """A threaded row's state as it moves from pool to pool."""

    __slots__ = ("value", "key", "name", "result", "nulled", "io_seconds", "cpu_seconds", "peak",
                 "sizes")

    def __init__(self, value: Any, key: Any, name: Any, result: concurrent.futures.Future):
        self.value, self.key, self.name, self.result = value, key, name, result
        self.nulled: str | None = None
        self.io_seconds = self.cpu_seconds = 0.0
        self.peak = value_bytes(value)
        self.sizes: list[int] = []


def _located(failed: _StepFailedError, name: Any) -> StageError:
    err = failed.error
    if not isinstance(err, StageError):
        err = StageError(f"{type(err).__name__}: {err}")
    return err.located(failed.stage, name)


class _NoGate:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


def _run_cpu(steps: Sequence[Step], value: Any, key: Any, sizes: list[int]):
    """Consecutive CPU steps on one pool thread: (value, nulled stage, seconds, peak bytes);
    appends each successful step's output bytes to ``sizes``."""
    start = time.perf_counter()
    peak = 0
    for step in steps:
        if value is None:
            break
        try:
            out = step.fn(value, key)
        except Exception as exc:  # noqa: BLE001 - routed by the step's policy
            if not step.nullable:
                raise _StepFailedError(step.stage, exc, value) from exc
            return None, step.stage, time.perf_counter() - start, peak
        out_bytes = value_bytes(out)
        sizes.append(out_bytes)
        peak = max(peak, value_bytes(value) + out_bytes)
        value = out
    return value, None, time.perf_counter() - start, peak


def _group(steps: Sequence[Step]) -> list[tuple[str, int, list[Step]]]:
    """Consecutive CPU steps form one group (one pool task); each I/O step is its own group."""
    groups: list[tuple[str, int, list[Step]]] = []
    for i, step in enumerate(steps):
        if step.kind not in ("io", "cpu"):
            raise ValueError(f"step kind must be 'io' or 'cpu', got {step.kind!r}")
        if step.kind == "cpu" and groups and groups[-1][0] == "cpu":
            groups[-1][2].append(step)
        else:
            groups.append((step.kind, i, [step]))
    return groups
