"""``RayRunner``: Beam pipelines on Ray, with full DoFn semantics.

A local ``ray.init()`` by default (shut down at the end of the run), or a cluster address
(``--ray_address`` / ``RayRunner(address=...)`` / ``mmbeam.context.set_runner_ray(address)``),
whose connection and actor pool are kept for the next run until the process exits or a run
names another cluster.
Tasks run on a pool of actors, one worker process each, so ``DoFn.setup`` (a model load) runs
once per actor; data moves between stages through Ray's object store as object references, never
through the driver. Execution is :mod:`mmbeam.runners.core`; this module only adapts Ray to its
:class:`~mmbeam.runners.backend.Backend` interface. When Ray was already initialised by the
caller, the actor pool is kept for the next run in this process (actors start slowly).

A stage whose steps ask for resources (``RunModel``/UDF ``concurrency``, ``num_cpus``,
``num_gpus``; see :mod:`mmbeam.transforms.resources`) runs on its own pool of ``concurrency``
actors, each requesting those CPUs/GPUs from Ray, so the model loads once per actor; the steps
before it (download, decode, resize) run on the ordinary actors, one per CPU. With
``concurrency=(min, max)`` the pool starts min actors and grows one at a time, while the
cluster has the resources free, up to max (see :mod:`mmbeam.runners.pools`). On a caller's Ray
or a named cluster the pool's actors outlive the run by ``--ray_keep_pool_seconds`` (30), for
the next run's step asking the same CPUs/GPUs (see :class:`_SpareActors`). If Ray cannot start
its first actors within ``--ray_actor_start_timeout`` seconds (no
GPU on the cluster, say) the run fails with :class:`~mmbeam.errors.ResourceUnavailableError`
instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from typing import Any

from apache_beam.options import pipeline_options

from mmbeam.autotune import default_memory_budget
from mmbeam.errors import ConfigError, ResourceUnavailableError
from mmbeam.runners.backend import Backend
from mmbeam.runners.core import DistributedRunner
from mmbeam.transforms.resources import StepResources

_log = logging.getLogger(__name__)

__all__ = ["RayBackend", "RayOptions", "RayRunner"]


class RayOptions(pipeline_options.PipelineOptions):
    """Where the RayRunner runs."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--ray_address", default=None,
                            help="Ray cluster address (ray://host:10001 or auto); default: local.")
        parser.add_argument("--ray_num_workers", type=int, default=0,
                            help="Worker actors (0: one per CPU of the cluster).")
        parser.add_argument("--ray_actor_start_timeout", type=float, default=120.0,
                            help="Seconds to wait for a step's own actor pool (its num_cpus/"
                                 "num_gpus) before failing with ResourceUnavailableError.")
        parser.add_argument("--ray_keep_pool_seconds", type=float, default=30.0,
                            help="On a caller's Ray or a named cluster, a step's own actors "
                                 "are kept this long after a run for the next run's step "
                                 "asking the same num_cpus/num_gpus (0: stopped with the run).")


class _Slot:
    """One worker process: runs the core's task functions (their caches live in the process)."""

    def call(self, fn, *args):
        return fn(*args)

    def pid(self) -> int:
        return os.getpid()


#: (GCS address, job id, size) -> the actor pool kept for a caller-initialised Ray
_pools: dict[tuple[str, str, int], list[Any]] = {}
_pools_lock = threading.Lock()


class _SpareActors:
    """Stage-pool actors a finished run left for the next one, on a caller's Ray or a named
    cluster: an actor's process takes 1-2 s to start and import Beam, which every short run (a
    notebook's next cell) would pay again. They are kept ``--ray_keep_pool_seconds``, taken by
    the next run's stages asking the same CPUs/GPUs, and stopped when that time passes, when a
    run must start other actors (the spares may hold the CPUs/GPUs those need), or when the
    next run ends without them. A run's own local Ray keeps nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: cluster key -> [(what each asks: (num_cpus, num_gpus), actor)]
        self._actors: dict[tuple[str, str], list[tuple[tuple[float, float], Any]]] = {}
        self._kept_at: dict[tuple[str, str], float] = {}

    def take(self, cluster: tuple[str, str], shape: tuple[float, float], n: int) -> list[Any]:
        """Up to ``n`` kept actors asking ``shape``, now the caller's."""
        with self._lock:
            spares = self._actors.get(cluster, [])
            taken = [a for s, a in spares if s == shape][:n]
            self._actors[cluster] = [(s, a) for s, a in spares if a not in taken]
            return taken

    def release(self, ray: Any, cluster: tuple[str, str], kept_at: float | None = None) -> None:
        """Stop every actor kept on ``cluster`` (if ``kept_at`` is given: only if they are
        still those kept then)."""
        with self._lock:
            if kept_at is not None and self._kept_at.get(cluster) != kept_at:
                return
            spares = self._actors.pop(cluster, [])
        if not (spares and ray.is_initialized()):
            return  # Ray shut down meanwhile: the actors went with it (a call would start Ray)
        context = ray.get_runtime_context()
        if (context.gcs_address, context.get_job_id()) != cluster:
            return  # connected elsewhere since: those actors ended with their job
        for _, actor in spares:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor)

    def keep(self, ray: Any, cluster: tuple[str, str],
             actors: list[tuple[tuple[float, float], Any]], seconds: float) -> None:
        """Keep ``actors`` for ``seconds`` in place of those kept before (stopped)."""
        self.release(ray, cluster)
        if not actors:
            return
        with self._lock:
            self._actors[cluster] = actors
            self._kept_at[cluster] = kept_at = time.monotonic()
        timer = threading.Timer(seconds, self.release, (ray, cluster, kept_at))
        timer.daemon = True
        timer.start()


_spares = _SpareActors()


#: the cluster address whose connection a run opened and keeps for later runs
_kept: dict[str, str] = {}

#: seconds a new Ray Client connection has to answer its first put (a loaded head: seconds)
CLIENT_PROBE_S = 30.0


def _keep_connection(address: str) -> None:
    """Keep the connection to the cluster at ``address`` open until this process exits (or a
    run names another cluster): connecting (Ray Client above all) and starting the actor pool
    take seconds, every run of a frame on a cluster would pay them again."""
    import atexit

    import ray

    if not _kept:
        atexit.register(lambda: ray.shutdown() if _kept else None)
    _kept["address"] = address


def _put_answered(ray: Any, timeout: float) -> None:
    """Put a small object, from a helper thread; ConnectionError if it fails or is not
    answered within ``timeout`` seconds (Ray Client's put waits without a deadline)."""
    done = threading.Event()
    failed: list[BaseException] = []

    def put() -> None:
        try:
            ray.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting thread
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=put, name="mmbeam-ray-client-probe", daemon=True).start()
    if not done.wait(timeout):
        raise ConnectionError(f"the Ray Client connection did not answer a put within "
                              f"{timeout:g} s")
    if failed:
        raise ConnectionError(f"the Ray Client connection failed a put: {failed[0]}") \
            from failed[0]


class RayBackend(Backend):
    """Ray as a runner backend: object references hold the data, in the object store."""

    def __init__(self, address: str | None = None, num_workers: int = 0,
                 memory_fraction: float = 0.25, actor_start_timeout: float = 120.0,
                 keep_pool_seconds: float = 30.0):
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is an optional extra
            raise ConfigError("the RayRunner needs `pip install mmbeam[ray]`") from exc
        self._ray = ray
        if address and ray.is_initialized() and _kept.get("address") not in (None, address):
            ray.shutdown()  # the connection kept for another cluster
        self._started = not ray.is_initialized() and not address
        if not ray.is_initialized():
            self._connect(address)
            if address:
                _keep_connection(address)
        resources = ray.cluster_resources()
        n = num_workers or max(1, int(resources.get("CPU", 1)))
        actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_Slot)
        self._cluster: tuple[str, str] | None = None  # where stage actors are kept after a run
        if self._started:  # this run's own local Ray: its own actors, gone with it
            self.actors = [actor.remote() for _ in range(n)]
        else:  # a named cluster or the caller's Ray: the pool is kept for the next run
            context = ray.get_runtime_context()
            self._cluster = (context.gcs_address, context.get_job_id())
            key = (*self._cluster, n)
            with _pools_lock:
                if key not in _pools:
                    _pools[key] = [actor.remote() for _ in range(n)]
                self.actors = _pools[key]
        self.slots = n
        store = resources.get("object_store_memory", 0)
        self.memory_budget = int(store * memory_fraction) or default_memory_budget()
        self._next = 0
        self.actor_start_timeout = actor_start_timeout
        self.keep_pool_seconds = keep_pool_seconds
        self._stage_pools: dict[str, RayBackend] = {}
        self._resources: StepResources | None = None  # what each actor of a stage pool asks
        self._bounds = (n, n)
        self._starting: list[tuple[Any, Any]] = []  # (actor, its first call) on their way
        self._start_deadline: float | None = None  # a stage pool's first actors, ready by then
        self._stage_name = ""

    def _connect(self, address: str | None, attempts: int = 3) -> None:
        """``ray.init``; a Ray Client (``ray://``) connection that times out on a busy head, or
        whose data channel does not answer a first put within CLIENT_PROBE_S, is tried again
        (on a loaded host a fresh Ray Client connection's first put has been seen never to
        get its answer, which would hang the run)."""
        client = str(address or "").startswith("ray://")
        for attempt in range(1, attempts + 1):
            try:
                self._ray.init(address=address, include_dashboard=False, log_to_driver=False,
                               configure_logging=False)
                if client:
                    _put_answered(self._ray, CLIENT_PROBE_S)
                return
            except ConnectionError as exc:
                self._ray.shutdown()  # wakes a put still waiting, with a ConnectionError
                if attempt == attempts or not client:
                    raise
                _log.warning("connecting to %s again (attempt %d of %d): %s", address,
                             attempt + 1, attempts, exc)

    def for_stage(self, stage_name: str, resources: StepResources) -> RayBackend:
        """A view of this backend whose tasks run on the stage's own actors (started once per
        run), each requesting ``resources``' CPUs/GPUs; this backend when nothing is asked.
        Actors an earlier run kept (:class:`_SpareActors`) are its first slots; the others
        start while the run goes on (the stages before fill the queue meanwhile) and join when
        :meth:`poll` sees them all ready."""
        if not resources:
            return self
        if stage_name not in self._stage_pools:
            pool = copy.copy(self)
            low, high = resources.bounds or (None, None)
            size = low or self._pool_size(resources)
            pool._resources, pool._stage_pools = resources, {}
            pool.actors, pool._next = self._take_spares(resources, size), 0
            pool.slots = len(pool.actors)
            pool._starting = [self._start_actor(resources) for _ in range(size - pool.slots)]
            pool._bounds = (size, high or size)
            pool._start_deadline = (time.monotonic() + self.actor_start_timeout
                                    if pool._starting else None)
            pool._stage_name = stage_name
            self._stage_pools[stage_name] = pool
        return self._stage_pools[stage_name]

    def describe(self) -> str:
        """What runs this pool's tasks (see Backend.describe)."""
        if self._resources is None:
            return f"Ray actors (num_cpus=0), {self.slots}"
        r = self._resources
        low, high = self._bounds
        return (f"Ray actor pool (num_cpus={r.num_cpus or 0:g}, num_gpus={r.num_gpus or 0:g}), "
                f"{low}" + (f"..{high}" if high != low else ""))

    def _take_spares(self, resources: StepResources, n: int) -> list[Any]:
        """Up to ``n`` actors an earlier run kept asking what ``resources`` asks; when fewer,
        the other kept actors are stopped (they may hold what new ones need)."""
        if self._cluster is None:
            return []
        taken = _spares.take(self._cluster, _shape(resources), n)
        if len(taken) < n:
            _spares.release(self._ray, self._cluster)
        return taken

    def _actor_class(self, resources: StepResources) -> Any:
        return self._ray.remote(num_cpus=resources.num_cpus or 0,
                                num_gpus=resources.num_gpus or 0, max_restarts=-1,
                                max_task_retries=-1)(_Slot)

    def grow(self) -> bool:
        """Start one more actor if the pool is below its max and the cluster has its CPUs and
        GPUs free now (it joins the pool when :meth:`poll` sees it ready)."""
        r = self._resources
        if r is None or self.slots + len(self._starting) >= self._bounds[1]:
            return False
        spare = self._take_spares(r, 1)
        if spare:  # ready at once
            self._starting.append((spare[0], spare[0].pid.remote()))
            return True
        free = self._ray.available_resources()
        if any(free.get(k, 0) < v for k, v in (("CPU", r.num_cpus), ("GPU", r.num_gpus)) if v):
            return False
        self._starting.append(self._start_actor(r))
        return True

    @property
    def starting(self) -> int:
        """Actors on their way (see Backend.starting)."""
        return len(self._starting)

    def _start_actor(self, resources: StepResources) -> tuple[Any, Any]:
        """A new actor of a stage pool and the reference its readiness shows on."""
        actor = self._actor_class(resources).remote()
        return actor, actor.pid.remote()

    def poll(self) -> int:
        """Actors that became ready since the last call (see Backend.poll). A pool's first
        actors join together, once all are ready (each gets its share of the work), and must
        be within ``--ray_actor_start_timeout``, or ResourceUnavailableError."""
        if not self._starting:
            return 0
        refs = [ref for _, ref in self._starting]
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        if self._start_deadline is not None:
            if len(ready) < len(refs):
                if time.monotonic() > self._start_deadline:
                    self._refuse_pool(len(ready))
                return 0
            self._start_deadline = None
        added = [a for a, ref in self._starting if ref in ready]
        self._starting = [(a, ref) for a, ref in self._starting if ref not in ready]
        self.actors = self.actors + added
        self.slots = len(self.actors)
        return len(added)

    def _refuse_pool(self, ready: int) -> None:
        """Stop the pool whose first actors did not all start in time, naming the step."""
        for a, _ in self._starting:
            self._ray.kill(a)
        self._starting = []
        r = self._resources
        cpus, gpus, size = r.num_cpus or 0, r.num_gpus or 0, self._bounds[0]
        steps = ", ".join(repr(s) for s in r.steps) or repr(self._stage_name)
        raise ResourceUnavailableError(
            f"step {steps} asks for {size} Ray actors with num_cpus={cpus}, "
            f"num_gpus={gpus}, but only {ready} started within "
            f"{self.actor_start_timeout:g} s (cluster resources: "
            f"{self._ray.cluster_resources()}); lower the step's concurrency/num_cpus/num_gpus, "
            f"add nodes, or raise --ray_actor_start_timeout")

    def shrink(self) -> None:
        """Stop the last, idle actor (see Backend.shrink)."""
        if self.slots > 1:
            self.actors, last = self.actors[:-1], self.actors[-1]
            self.slots = len(self.actors)
            self._ray.kill(last)

    def _pool_size(self, resources: StepResources) -> int:
        """Actors of a pool without a size: as many as the cluster holds (at least one)."""
        total = self._ray.cluster_resources()
        cpus, gpus = resources.num_cpus or 0, resources.num_gpus or 0
        fits = [int(total.get(k, 0) // v) for k, v in (("CPU", cpus), ("GPU", gpus)) if v]
        return max(1, min(fits)) if fits else self.slots

    def put(self, value: Any) -> Any:
        """Place ``value`` in the engine's object store; returns a reference to it."""
        return self._ray.put(value)

    def submit(self, fn, *args, worker=None, num_returns=1):
        """Run ``fn(*args)`` as a task (on ``worker`` when given); references to its results."""
        if worker is None:
            self._next += 1
            worker = self._next
        actor = self.actors[worker % len(self.actors)]
        refs = actor.call.options(num_returns=num_returns).remote(fn, *args)
        return [refs] if num_returns == 1 else list(refs)

    def wait_any_for(self, refs, timeout):
        """Finished refs, or none after ``timeout`` (see Backend.wait_any_for)."""
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
        return ready

    def get(self, refs):
        """The values behind ``refs``."""
        return self._ray.get(refs)

    def broadcast(self, fn, *args):
        """Run ``fn(*args)`` once on every worker; their results."""
        actors = self.actors + [a for p in self._stage_pools.values() for a in p.actors]
        self._ray.get([a.call.remote(fn, *args) for a in actors])

    def close(self):
        """Release the engine's resources (a cluster this backend started is shut down)."""
        kept = []
        keep = self._cluster is not None and self.keep_pool_seconds > 0
        for pool in self._stage_pools.values():  # kept for the next run, or CPUs/GPUs freed
            for actor in [a for a, _ in pool._starting] + (pool.actors if not keep else []):
                self._ray.kill(actor)
            if keep:
                kept += [(_shape(pool._resources), a) for a in pool.actors]
        if self._cluster is not None:
            _spares.keep(self._ray, self._cluster, kept, self.keep_pool_seconds)
        self._stage_pools.clear()
        if self._started:
            self.actors = []
            self._ray.shutdown()


def _shape(resources: StepResources) -> tuple[float, float]:
    """What each actor of a stage pool asks Ray for: (num_cpus, num_gpus)."""
    return (resources.num_cpus or 0, resources.num_gpus or 0)


class RayRunner(DistributedRunner):
    """A Beam runner on Ray; ``address`` (or ``--ray_address``) joins an existing cluster."""

    def __init__(self, address: str | None = None, num_workers: int | None = None):
        super().__init__()
        self.address = address
        self.num_workers = num_workers

    def make_backend(self, options: pipeline_options.PipelineOptions) -> RayBackend:
        """The engine backend for ``options``."""
        flags = options.view_as(RayOptions)
        return RayBackend(address=self.address or flags.ray_address,
                          num_workers=self.num_workers or flags.ray_num_workers,
                          actor_start_timeout=flags.ray_actor_start_timeout,
                          keep_pool_seconds=flags.ray_keep_pool_seconds)
