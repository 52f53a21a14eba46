"""Stage pools of mmbeam's distributed runners: when a pool scales, and what a run reports.

A stage whose steps ask for resources (a model's ``concurrency``, ``num_cpus``, ``num_gpus``)
runs on its own pool (Ray actors, or Dask workers declaring the resources); every other stage
runs on the engine's ordinary workers. ``concurrency=(min, max)`` makes the pool autoscale the
way Ray Data's actor pool does (``ActorPoolMapOperator`` and its autoscaler): one more actor
while elements wait and every actor is busy (and the cluster has the resources), one fewer when
the last actor has been idle for ``--pool_idle_seconds``; never below min or above max. The
policy is :class:`Autoscaler` (an injected clock, no engine), the numbers a run shows are a
:class:`PoolReport` per stage (``result.pools``, ``explain(show_all=True)``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Autoscaler", "PoolReport", "last_run", "record_run"]


@dataclass
class PoolReport:
    """One stage's pool in a run: what it was, its size over time (seconds since the run
    started, slots), the model batch sizes its tasks ran, and the bytes queued on its streamed
    input over time (produced upstream, not yet consumed), with their peak and limit."""

    stage: str
    pool: str
    #: the stage's steps, short (Beam's stage names spell out every fused transform)
    label: str = ""
    sizes: list[tuple[float, int]] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    queued_bytes: list[tuple[float, int]] = field(default_factory=list)
    max_queued_bytes: int = 0
    queue_limit: int = 0

    def size(self, seconds: float, slots: int) -> None:
        """Record the pool's size at ``seconds`` into the run (only when it changed; from its
        first ready slot on, as its first actors may take seconds to start)."""
        if slots != (self.sizes[-1][1] if self.sizes else 0):
            self.sizes.append((round(seconds, 3), slots))

    def queued(self, seconds: float, nbytes: int) -> None:
        """Record the bytes queued for the stage at ``seconds`` (sampled, peak kept)."""
        self.max_queued_bytes = max(self.max_queued_bytes, nbytes)
        if not self.queued_bytes or (seconds - self.queued_bytes[-1][0] >= 0.05
                                     or nbytes > self.queued_bytes[-1][1] * 2):
            self.queued_bytes.append((round(seconds, 3), nbytes))

    def describe(self) -> str:
        """One line for explain and the run's result: pool, sizes, batches, queue."""
        sizes = " ".join(f"{n}@{t:.1f}s" for t, n in self.sizes[:12])
        text = f"{self.label or self.stage}: {self.pool}; size {sizes or '-'}"
        if self.batch_sizes:
            text += (f"; model batches {len(self.batch_sizes)}, sizes "
                     f"{min(self.batch_sizes)}..{max(self.batch_sizes)}")
        if self.queue_limit or self.max_queued_bytes:
            text += (f"; queued input peak {self.max_queued_bytes:,} B "
                     f"(limit {self.queue_limit:,} B)")
        return text


class Autoscaler:
    """Decides, from the load of a pool's slots and the tasks waiting for it, whether to start
    a slot, stop the last one, or do nothing. Slots are numbered; only the last one is ever
    stopped, so the others keep their numbers."""

    def __init__(self, low: int, high: int, idle_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.low, self.high = low, high
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._busy_at: dict[int, float] = {}

    def decide(self, loads: list[int], starting: int, waiting_tasks: int) -> str:
        """``"grow"``, ``"shrink"`` or ``""`` for a pool whose slot ``i`` runs ``loads[i]``
        tasks, with ``starting`` slots on their way and ``waiting_tasks`` tasks ready to go (a
        pool whose first slots are still starting does not grow)."""
        now = self.clock()
        for i, load in enumerate(loads):
            if load or i not in self._busy_at:
                self._busy_at[i] = now
        slots = len(loads)
        if waiting_tasks and loads and all(loads) and slots + starting < self.high:
            return "grow"
        last = slots - 1
        if (slots > self.low and not waiting_tasks and not starting and not loads[last]
                and now - self._busy_at[last] >= self.idle_seconds):
            del self._busy_at[last]
            return "shrink"
        return ""


_last: list[PoolReport] = []
_last_lock = threading.Lock()


def record_run(reports: list[PoolReport]) -> None:
    """Keep the pools of the run that just finished in this process (for ``explain``)."""
    with _last_lock:
        _last[:] = reports


def last_run() -> list[PoolReport]:
    """The pools of the last distributed run in this process, stages in order."""
    with _last_lock:
        return list(_last)
