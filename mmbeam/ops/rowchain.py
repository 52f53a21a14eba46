"""A fused per-row kernel: several steps (download, decode, resize, encode, upload) run per row as
one unit of work, so full-size intermediates live only inside one row's work.

Each row is one coroutine on fsspec's I/O loop: an I/O step is awaited there (at most ``limit``
rows in that step at once, e.g. the connection count), and each run of consecutive CPU steps is
one task on the shared CPU pool. Rows overlap freely: while the pool decodes row 3, rows 4-40 are
downloading and row 2 is being written. A failing step either nulls the row (its
``on_error="null"``; later steps pass the None through) or ends the row with a StageError located
at that step's stage and the row's name. :meth:`RowChain.submit` never raises: its future holds a
:class:`RowOutcome` with the value, the error if any, and what the row cost (for autotuning).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
    ``limit`` bounds how many rows run an ``io`` step at once (None: unbounded).
    """

    stage: str
    kind: str  # "io" or "cpu"
    fn: Callable[[Any, Any], Any]
    nullable: bool = False
    limit: int | None = None


class RowOutcome(NamedTuple):
    """One row's result: ``value`` (None when nulled or failed), the failure if the row failed
    (``error``, located at ``stage``), the stages that nulled it, and what it cost."""

    value: Any
    error: StageError | None
    nulled: str | None
    io_seconds: float
    cpu_seconds: float
    peak_bytes: int


def value_bytes(value: Any) -> int:
    """Bytes a value holds: a buffer's length or an array's ``nbytes`` (0 otherwise)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return int(getattr(value, "nbytes", 0) or 0)


class _Failed(Exception):
    def __init__(self, stage: str, error: BaseException):
        self.stage, self.error = stage, error


class RowChain:
    """Runs ``steps`` per row; picklable (gates are rebuilt lazily on the I/O loop)."""

    def __init__(self, steps: Sequence[Step]):
        if not steps:
            raise ValueError("a RowChain needs at least one step")
        self.steps = tuple(steps)
        self._groups = _group(self.steps)
        self._gates: dict[int, asyncio.Semaphore] | None = None

    def __getstate__(self):
        return {"steps": self.steps}

    def __setstate__(self, state):
        self.__init__(state["steps"])

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.steps)

    def first_window(self) -> int:
        """Rows in flight before anything is measured: every connection of the widest I/O
        step, or two rows per CPU thread."""
        limits = [s.limit for s in self.steps if s.kind == "io" and s.limit]
        return max(limits + [2 * cpu_workers()])

    def min_window(self) -> int:
        """The fewest rows worth keeping in flight: every connection for a chain of I/O steps
        only, else two rows per CPU thread (measured costs decide how many more)."""
        if all(s.kind == "io" for s in self.steps):
            return self.first_window()
        return 2 * cpu_workers()

    def submit(self, value: Any, key: Any = None, name: Any = None) -> concurrent.futures.Future:
        """Start one row; ``name`` (default: the value) is what errors call the element."""
        name = value if name is None else name
        if len(self._groups) == 1 and self._groups[0][0] == "cpu":  # no I/O: skip the loop
            return cpu_pool().submit(self._run_cpu_only, value, key, name)
        return asyncio.run_coroutine_threadsafe(self._run(value, key, name), get_loop())

    def _run_cpu_only(self, value: Any, key: Any, name: Any) -> RowOutcome:
        if value is None:
            return RowOutcome(None, None, None, 0.0, 0.0, 0)
        try:
            value, nulled, busy, peak = _run_cpu(self.steps, value, key)
        except _Failed as failed:
            return RowOutcome(None, _located(failed, name), None, 0.0, 0.0, 0)
        return RowOutcome(value, None, nulled, 0.0, busy, peak)

    async def _run(self, value: Any, key: Any, name: Any) -> RowOutcome:
        cost = [0.0, 0.0, value_bytes(value)]  # io seconds, cpu seconds, peak bytes
        nulled = None
        try:
            for kind, index, steps in self._groups:
                if value is None:
                    break
                if kind == "io":
                    value, nulled = await self._io(index, steps[0], value, key, cost, nulled)
                else:
                    loop = asyncio.get_running_loop()
                    value, dn, busy, peak = await loop.run_in_executor(
                        cpu_pool(), _run_cpu, steps, value, key)
                    nulled = nulled or dn
                    cost[1] += busy
                    cost[2] = max(cost[2], peak)
        except _Failed as failed:
            return RowOutcome(None, _located(failed, name), None, *cost)
        return RowOutcome(value, None, nulled, *cost)

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
                    raise _Failed(step.stage, exc) from exc
                return None, nulled or step.stage
            finally:
                cost[0] += time.perf_counter() - start
        cost[2] = max(cost[2], value_bytes(value) + value_bytes(out))
        return out, nulled


def _located(failed: _Failed, name: Any) -> StageError:
    err = failed.error
    if not isinstance(err, StageError):
        err = StageError(f"{type(err).__name__}: {err}")
    return err.located(failed.stage, name)


class _NoGate:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


def _run_cpu(steps: Sequence[Step], value: Any, key: Any):
    """Consecutive CPU steps on one pool thread: (value, nulled stage, seconds, peak bytes)."""
    start = time.perf_counter()
    peak = 0
    for step in steps:
        if value is None:
            break
        try:
            out = step.fn(value, key)
        except Exception as exc:  # noqa: BLE001 - routed by the step's policy
            if not step.nullable:
                raise _Failed(step.stage, exc) from exc
            return None, step.stage, time.perf_counter() - start, peak
        peak = max(peak, value_bytes(value) + value_bytes(out))
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
