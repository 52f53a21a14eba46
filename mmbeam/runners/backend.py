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

    def wait_any(self, refs: list[Any]) -> list[Any]:
        """Block until at least one of ``refs`` is done; return the done ones."""
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

    def close(self) -> None:
        """Release the engine: close clients and anything this backend started."""
