"""``RayRunner``: Beam pipelines on Ray, with full DoFn semantics.

A local ``ray.init()`` by default (shut down at the end of the run), or a cluster address
(``--ray_address`` / ``RayRunner(address=...)`` / ``mmbeam.context.set_runner_ray(address)``).
Tasks run on a pool of actors, one worker process each, so ``DoFn.setup`` (a model load) runs
once per actor; data moves between stages through Ray's object store as object references, never
through the driver. Execution is :mod:`mmbeam.runners.core`; this module only adapts Ray to its
:class:`~mmbeam.runners.backend.Backend` interface. When Ray was already initialised by the
caller, the actor pool is kept for the next run in this process (actors start slowly).
"""

from __future__ import annotations

import threading
from typing import Any

from apache_beam.options import pipeline_options

from mmbeam.autotune import default_memory_budget
from mmbeam.errors import ConfigError
from mmbeam.runners.backend import Backend
from mmbeam.runners.core import DistributedRunner

__all__ = ["RayBackend", "RayOptions", "RayRunner"]


class RayOptions(pipeline_options.PipelineOptions):
    """Where the RayRunner runs."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--ray_address", default=None,
                            help="Ray cluster address (ray://host:10001 or auto); default: local.")
        parser.add_argument("--ray_num_workers", type=int, default=0,
                            help="Worker actors (0: one per CPU of the cluster).")


class _Slot:
    """One worker process: runs the core's task functions (their caches live in the process)."""

    def call(self, fn, *args):
        return fn(*args)


_pools: dict[tuple[str, int], list[Any]] = {}
_pools_lock = threading.Lock()


class RayBackend(Backend):
    """Ray as a runner backend: object references hold the data, in the object store."""

    def __init__(self, address: str | None = None, num_workers: int = 0,
                 memory_fraction: float = 0.25):
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is an optional extra
            raise ConfigError("the RayRunner needs `pip install mmbeam[ray]`") from exc
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        resources = ray.cluster_resources()
        n = num_workers or max(1, int(resources.get("CPU", 1)))
        key = (ray.get_runtime_context().get_job_id(), n)
        with _pools_lock:
            if key not in _pools or self._started:
                actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_Slot)
                _pools[key] = [actor.remote() for _ in range(n)]
            self.actors = _pools[key]
        self._key = key
        self.slots = n
        store = resources.get("object_store_memory", 0)
        self.memory_budget = int(store * memory_fraction) or default_memory_budget()
        self._next = 0

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, fn, *args, worker=None, num_returns=1):
        if worker is None:
            self._next += 1
            worker = self._next
        actor = self.actors[worker % len(self.actors)]
        refs = actor.call.options(num_returns=num_returns).remote(fn, *args)
        return [refs] if num_returns == 1 else list(refs)

    def wait_any(self, refs):
        ready, _ = self._ray.wait(refs, num_returns=1)
        return ready

    def get(self, refs):
        return self._ray.get(refs)

    def broadcast(self, fn, *args):
        self._ray.get([a.call.remote(fn, *args) for a in self.actors])

    def close(self):
        if self._started:
            with _pools_lock:
                _pools.pop(self._key, None)
            self._ray.shutdown()


class RayRunner(DistributedRunner):
    """A Beam runner on Ray; ``address`` (or ``--ray_address``) joins an existing cluster."""

    def __init__(self, address: str | None = None, num_workers: int | None = None):
        super().__init__()
        self.address = address
        self.num_workers = num_workers

    def make_backend(self, options: pipeline_options.PipelineOptions) -> RayBackend:
        flags = options.view_as(RayOptions)
        return RayBackend(address=self.address or flags.ray_address,
                          num_workers=self.num_workers or flags.ray_num_workers)
