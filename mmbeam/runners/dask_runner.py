"""``DaskRunner``: Beam pipelines on a ``distributed`` cluster, with full DoFn semantics.

A ``LocalCluster`` of worker processes by default (closed at the end of the run), or an existing
scheduler (``--dask_address`` / ``DaskRunner(address=...)`` /
``mmbeam.context.set_runner_dask(address)``). The client is always closed at the end of the run.
Execution is :mod:`mmbeam.runners.core`; this module only adapts ``distributed`` to its
:class:`~mmbeam.runners.backend.Backend` interface. When a worker process dies, ``distributed``
reruns the tasks it was running and recomputes lost results from their lineage; the core accepts a
recomputed list only if it equals the committed one, and re-runs the stages otherwise, or when
``distributed`` gives a task up (``KilledWorker``) or cancels a future.

A stage whose steps ask for resources (a model's ``num_gpus``, ``num_cpus``, ``concurrency``)
gets its own pool while the steps before it run on every worker thread: with ``num_gpus``, the
workers declaring ``GPU`` (``dask worker --resources GPU=1``; tasks carry the resource
restriction, so Dask runs no more of them at once than the GPUs allow), failing with
:class:`~mmbeam.errors.ResourceUnavailableError` naming the step and the cluster's resources
when none does; otherwise ``concurrency`` (or min of ``(min, max)``, growing to max while work
waits) worker processes each run the model in a child process of their own
(:mod:`mmbeam.runners.model_process`, started when the pool is made and kept for the worker's
life): the task secedes from the worker's thread pool and hands its work to that process, so the
model neither waits behind the preparation tasks queued on its worker nor shares their GIL. Those
tasks are pinned to their pool's workers (Dask's work stealing would otherwise move them, loading
the model in one more process than ``concurrency``); they go ahead of the preparation tasks
queued there, and a pinned task whose worker died is cancelled, so the core re-runs its stage on
a live worker.

The runner registers a worker plugin (:mod:`mmbeam.runners.dask_worker`) that lets the workers
reuse image-sized buffers (Dask's nanny turns glibc's reuse off) and starts each worker's model
thread, which starts its model process, from the worker's own, un-niced thread.
"""

from __future__ import annotations

import copy
import logging
import operator
import os
import time
from typing import Any

from apache_beam.options import pipeline_options

from mmbeam.autotune import default_memory_budget
from mmbeam.errors import ConfigError, ResourceUnavailableError
from mmbeam.runners.backend import Backend
from mmbeam.runners.core import DistributedRunner
from mmbeam.transforms.resources import StepResources

__all__ = ["DaskBackend", "DaskOptions", "DaskRunner"]


class DaskOptions(pipeline_options.PipelineOptions):
    """Where the DaskRunner runs."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--dask_address", default=None,
                            help="Scheduler address (tcp://host:8786); default: a LocalCluster.")
        parser.add_argument("--dask_workers", type=int, default=0,
                            help="Worker processes of the LocalCluster (0: one per core).")
        parser.add_argument("--dask_threads_per_worker", type=int, default=1,
                            help="Threads per LocalCluster worker process.")


class DaskBackend(Backend):
    """``distributed`` as a runner backend: futures hold the data, on the workers."""

    def __init__(self, address: str | None = None, n_workers: int = 0,
                 threads_per_worker: int = 1, memory_fraction: float = 0.25):
        try:
            from distributed import Client, LocalCluster
            from distributed.client import FutureCancelledError, FuturesCancelledError
            from distributed.scheduler import KilledWorker

            from mmbeam.runners import dask_worker
        except ImportError as exc:  # pragma: no cover - dask is an optional extra
            raise ConfigError("the DaskRunner needs `pip install mmbeam[dask]`") from exc
        self.lost_errors = (KilledWorker, FutureCancelledError, FuturesCancelledError)
        self._worker_side = dask_worker
        self._cluster = None
        if address is None:
            self._cluster = LocalCluster(
                n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=threads_per_worker,
                processes=True, dashboard_address=None, silence_logs=logging.WARNING)
            address = self._cluster.scheduler_address
        try:
            self.client = Client(address, set_as_default=False)
            setup = dask_worker.WorkerSetup()
            self.client.register_plugin(setup, name=setup.name)
            workers = self.client.scheduler_info()["workers"]
        except BaseException:
            if self._cluster is not None:
                self._cluster.close()
            raise
        #: one entry per worker thread, so slot i names a worker address
        self._slots = [addr for addr, info in sorted(workers.items())
                       for _ in range(info.get("nthreads", 1))]
        self.slots = max(1, len(self._slots))
        memory = sum(info.get("memory_limit") or 0 for info in workers.values())
        self.memory_budget = int(memory * memory_fraction) or default_memory_budget()
        self._workers = workers
        self._restriction: dict[str, Any] = {}  # a stage pool's Dask resources
        self._seceding = False
        self._homes: list[str] = []  # worker processes an autoscaling pool may still add
        self._grown = 0  # slots added since the last poll
        self._bounds = (self.slots, self.slots)
        self._stage_pools: dict[str, DaskBackend] = {}
        #: task key -> the worker it is pinned to; shared by the stage pools (see submit)
        self._pinned: dict[str, str] = {}
        self._alive: tuple[float, set[str]] = (0.0, set(workers))

    def for_stage(self, stage_name: str, resources: StepResources) -> DaskBackend:
        """The stage's own pool (see the module doc); this backend when nothing is asked."""
        if not resources:
            return self
        if stage_name not in self._stage_pools:
            pool = copy.copy(self)
            pool._stage_pools = {}
            if resources.num_gpus:
                need = {"GPU": resources.num_gpus}
                homes = [a for a, info in sorted(self._workers.items())
                         for _ in range(int(info.get("resources", {}).get("GPU", 0)
                                            // resources.num_gpus))]
                if not homes:
                    steps = ", ".join(repr(s) for s in resources.steps) or repr(stage_name)
                    have = {a: info.get("resources", {}) for a, info in self._workers.items()}
                    raise ResourceUnavailableError(
                        f"step {steps} asks for num_gpus={resources.num_gpus:g}, but no Dask "
                        f"worker declares a GPU resource (workers' resources: {have}); start "
                        f"workers with `dask worker --resources GPU=1` or drop num_gpus")
                pool._restriction = {"resources": need}
            else:  # CPU model: worker processes, the model in a thread of its own
                homes = sorted(self._workers)
                pool._seceding = True
            low, high = resources.bounds or (len(homes), len(homes))
            low, high = min(low, len(homes)), min(high, len(homes))
            pool._slots, pool._homes = homes[:low], homes[low:high]
            pool.slots, pool._bounds = len(pool._slots), (low, high)
            pool._start_model_processes(pool._slots)
            self._stage_pools[stage_name] = pool
        return self._stage_pools[stage_name]

    def describe(self) -> str:
        """What runs this pool's tasks (see Backend.describe)."""
        if not (self._restriction or self._seceding):
            return f"Dask worker threads, {self.slots}"
        kind = (f"Dask workers with {self._restriction['resources']}" if self._restriction
                else "model processes on Dask workers")
        low, high = self._bounds
        return f"{kind}, {low}" + (f"..{high}" if high != low else "")

    def grow(self) -> bool:
        """Start one more slot (see Backend.grow)."""
        if not self._homes:
            return False
        self._slots = self._slots + [self._homes.pop(0)]
        self._start_model_processes(self._slots[-1:])
        self._grown += 1
        return True

    def _start_model_processes(self, workers: list[str]) -> None:
        """Have a CPU model pool's ``workers`` start their model processes now (see
        :func:`~mmbeam.runners.dask_worker.start_model_process_soon`)."""
        if self._seceding and workers:
            self.client.run(self._worker_side.start_model_process_soon, workers=workers)

    @property
    def starting(self) -> int:
        """Slots grown since the last poll (see Backend.starting)."""
        return self._grown

    def poll(self) -> int:
        """Slots that became ready since the last call (see Backend.poll)."""
        added, self._grown = self._grown, 0
        self.slots = len(self._slots)
        return added

    def shrink(self) -> None:
        """Stop the last, idle slot (see Backend.shrink)."""
        if len(self._slots) > 1:
            self._homes.insert(0, self._slots[-1])
            self._slots = self._slots[:-1]
            self.slots = len(self._slots)

    def put(self, value: Any) -> Any:
        """Place ``value`` in the engine's object store; returns a reference to it."""
        return self.client.scatter([value], hash=False)[0]

    def submit(self, fn, *args, worker=None, num_returns=1):
        """Run ``fn(*args)`` as a task (on ``worker`` when given); references to its results."""
        where = {}
        if self._seceding:  # a model pool: pinned to its live workers (see the module doc)
            fn, args = self._worker_side.in_model_process, (fn, *args)
            slot = (worker or 0) % len(self._slots)
            self._slots[slot] = home = self._live_home(self._slots[slot])
            where = {"workers": [home], "allow_other_workers": False, "priority": 1}
        elif worker is not None and self._slots:
            where = {"workers": [self._slots[worker % len(self._slots)]],
                     "allow_other_workers": True}
        future = self.client.submit(fn, *args, pure=False, **where, **self._restriction)
        refs = [future] if num_returns == 1 else [
            self.client.submit(operator.getitem, future, i, pure=False)
            for i in range(num_returns)]
        if self._seceding:
            self._pinned.update((ref.key, home) for ref in refs)
        return refs

    def wait_any_for(self, refs, timeout):
        """Finished refs, or none after ``timeout`` (see Backend.wait_any_for); a pinned task
        whose worker is gone is cancelled first (it would wait for that worker forever)."""
        # Client.sync takes the coroutine; distributed.wait would use the default client
        from distributed.client import FIRST_COMPLETED, _wait  # noqa: PLC2701

        if self._pinned:
            alive = self._alive_workers()
            orphans = [f for f in refs if f.status == "pending" and f.key in self._pinned
                       and self._pinned[f.key] not in alive]
            if orphans:
                self.client.cancel(orphans)
        try:
            done = list(self.client.sync(_wait, refs, timeout=timeout,
                                         return_when=FIRST_COMPLETED).done)
        except TimeoutError:
            return []
        except self.lost_errors:  # wait raises for cancelled futures; get raises in their stage
            done = [f for f in refs if f.cancelled()]
        for f in done:
            self._pinned.pop(f.key, None)
        return done

    def _alive_workers(self, fresh: bool = False) -> set[str]:
        """The scheduler's workers, asked at most once a second unless ``fresh``."""
        asked, alive = self._alive
        if fresh or time.monotonic() - asked > 1.0:
            alive = set(self.client.scheduler_info()["workers"])
            self._alive = (time.monotonic(), alive)
        return alive

    def _live_home(self, home: str) -> str:
        """``home`` if its worker is alive, else a live worker (one not yet in the pool when
        there is one): the worker restarted by its nanny has a new address."""
        if home in self._alive_workers():
            return home
        alive = self._alive_workers(fresh=True)
        spare = sorted(alive - set(self._slots)) or sorted(alive)
        return spare[0] if spare else home

    def get(self, refs):
        """The values behind ``refs``."""
        try:
            return self.client.gather(refs)
        except AttributeError:  # ``distributed`` re-raising a lost future that has no error
            lost = [f for f in refs if f.status != "finished"]
            if not lost:
                raise
            from distributed.client import FutureCancelledError

            raise FutureCancelledError(lost[0].key, f"its data was lost with a worker "
                                       f"({lost[0].status}) and cannot be recomputed") from None

    def broadcast(self, fn, *args):
        """Run ``fn(*args)`` once on every worker; their results."""
        self.client.run(self._worker_side.everywhere, fn, *args)

    def close(self):
        """Release the engine's resources (a cluster this backend started is shut down)."""
        try:
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()


class DaskRunner(DistributedRunner):
    """A Beam runner on Dask; ``address`` (or ``--dask_address``) joins an existing cluster."""

    def __init__(self, address: str | None = None, n_workers: int | None = None,
                 threads_per_worker: int | None = None):
        super().__init__()
        self.address = address
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker

    def make_backend(self, options: pipeline_options.PipelineOptions) -> DaskBackend:
        """The engine backend for ``options``."""
        flags = options.view_as(DaskOptions)
        return DaskBackend(
            address=self.address or flags.dask_address,
            n_workers=self.n_workers or flags.dask_workers,
            threads_per_worker=self.threads_per_worker or flags.dask_threads_per_worker)
