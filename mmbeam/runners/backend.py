"""What mmbeam's distributed runner core needs from an engine (Dask, Ray): a small interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Backend"]


class Backend:
    """Runs functions on worker processes; values stay there, behind engine references.

    ``slots`` is how many tasks can run at once (one per worker thread or actor); ``submit``
    places a task on slot ``worker`` when given (a preference: the engine may move it if that
    worker dies) and returns ``num_returns`` references; references passed as arguments are
    resolved on the worker, so data moves worker to worker, never through the driver.
    """

    slots: int = 1
    memory_budget: int = 256 << 20
    #: the engine's errors for a task or its data lost with a worker process; the core
    #: recovers from them (and from :class:`~mmbeam.errors.LostDataError`) by re-running stages
    lost_errors: tuple[type[BaseException], ...] = ()

    def put(self, value: Any) -> Any:
        """Place ``value`` in the engine's object store; returns a reference to it."""
        raise NotImplementedError

    def submit(self, fn: Callable, *args: Any, worker: int | None = None,
               num_returns: int = 1) -> list[Any]:
        """Run ``fn(*args)`` as a task (on ``worker`` when given); references to its results."""
        raise NotImplementedError

    def wait_any_for(self, refs: list[Any], timeout: float) -> list[Any]:
        """The done ones of ``refs``, as soon as one is; none after ``timeout`` seconds (the
        driver loop never blocks longer: an autoscaler acts, a stop is seen)."""
        raise NotImplementedError

    def get(self, refs: list[Any]) -> list[Any]:
        """Values of small results (task metadata); re-raises a task's exception."""
        raise NotImplementedError

    def broadcast(self, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` once in every worker process (e.g. to tear down DoFns)."""
        raise NotImplementedError

    def for_stage(self, stage_name: str, resources: Any) -> Backend:
        """Where the tasks of one stage run: a dedicated worker pool for a stage whose steps
        ask for resources (a :class:`~mmbeam.transforms.resources.StepResources`), when the
        engine supports it; by default this backend."""
        return self

    # -- a stage's pool (see :mod:`mmbeam.runners.pools`); the defaults: a fixed pool --------
    #: ``(min, max)`` slots of this pool; equal for a pool that does not scale
    _bounds: tuple[int, int] | None = None  # set by backends whose pools scale

    @property
    def bounds(self) -> tuple[int, int]:
        """The pool's (min, max) slots; a fixed pool is (slots, slots)."""
        return self._bounds or (self.slots, self.slots)

    def describe(self) -> str:
        """What runs this pool's tasks, for ``explain`` and the run's result."""
        return f"{type(self).__name__} ({self.slots} slots)"

    #: slots on their way: a pool's first actors (the run goes on while they start) or grown ones
    starting: int = 0

    def grow(self) -> bool:
        """Start one more slot (asynchronously); False when the pool or cluster is full."""
        return False

    def poll(self) -> int:
        """Slots that became ready (added to ``slots``) since the last call: the pool's first
        ones, or those :meth:`grow` started. May raise
        :class:`~mmbeam.errors.ResourceUnavailableError` when the first ones do not start."""
        return 0

    def shrink(self) -> None:
        """Stop the last slot (the scheduler calls it only when that slot is idle)."""

    def close(self) -> None:
        """Release the engine: close clients and anything this backend started."""
