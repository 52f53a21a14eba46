"""``DaskRunner``: Beam pipelines on a ``distributed`` cluster, with full DoFn semantics.

A ``LocalCluster`` of worker processes by default (closed at the end of the run), or an existing
scheduler (``--dask_address`` / ``DaskRunner(address=...)`` /
``mmbeam.context.set_runner_dask(address)``). The client is always closed at the end of the run.
Execution is :mod:`mmbeam.runners.core`; this module only adapts ``distributed`` to its
:class:`~mmbeam.runners.backend.Backend` interface. When a worker process dies, ``distributed``
reruns the tasks it was running and recomputes lost results from their lineage; the core accepts a
recomputed list only if it equals the committed one, and re-runs the stages otherwise, or when
``distributed`` gives a task up (``KilledWorker``) or cancels a future.
"""

from __future__ import annotations

import logging
import operator
import os
from typing import Any

from apache_beam.options import pipeline_options

from mmbeam.autotune import default_memory_budget
from mmbeam.errors import ConfigError
from mmbeam.runners.backend import Backend
from mmbeam.runners.core import DistributedRunner

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
            from distributed.client import FutureCancelledError
            from distributed.scheduler import KilledWorker
        except ImportError as exc:  # pragma: no cover - dask is an optional extra
            raise ConfigError("the DaskRunner needs `pip install mmbeam[dask]`") from exc
        self.lost_errors = (KilledWorker, FutureCancelledError)
        self._cluster = None
        if address is None:
            self._cluster = LocalCluster(
                n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=threads_per_worker,
                processes=True, dashboard_address=None, silence_logs=logging.WARNING)
            address = self._cluster.scheduler_address
        try:
            self.client = Client(address, set_as_default=False)
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

    def put(self, value: Any) -> Any:
        """Place ``value`` in the engine's object store; returns a reference to it."""
        return self.client.scatter([value], hash=False)[0]

    def submit(self, fn, *args, worker=None, num_returns=1):
        """Run ``fn(*args)`` as a task (on ``worker`` when given); references to its results."""
        where = {}
        if worker is not None and self._slots:
            where = {"workers": [self._slots[worker % len(self._slots)]],
                     "allow_other_workers": True}
        future = self.client.submit(fn, *args, pure=False, **where)
        if num_returns == 1:
            return [future]
        return [self.client.submit(operator.getitem, future, i, pure=False)
                for i in range(num_returns)]

    def wait_any(self, refs):
        """Wait until at least one of ``refs`` is done: (done, pending)."""
        # Client.sync takes the coroutine; distributed.wait would use the default client
        from distributed.client import FIRST_COMPLETED, _wait  # noqa: PLC2701

        return list(self.client.sync(_wait, refs, return_when=FIRST_COMPLETED).done)

    def get(self, refs):
        """The values behind ``refs``."""
        return self.client.gather(refs)

    def broadcast(self, fn, *args):
        """Run ``fn(*args)`` once on every worker; their results."""
        self.client.run(fn, *args)

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
