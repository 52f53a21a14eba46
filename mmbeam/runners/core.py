"""The engine-neutral core of mmbeam's distributed runners (Dask, Ray).

The driver fuses the pipeline with Beam's own FnApiRunner translations (plus
``annotate_stateful_dofns_as_roots``, so a stateful DoFn starts its own stage, mmbeam's
:func:`~mmbeam.runners.fusion.split_at_resource_changes`, so steps asking for different
resources are different stages, and :func:`~mmbeam.runners.fusion.fuse_element_fns`), then
starts the stages in topological order (:mod:`mmbeam.runners.scheduler` runs each one's
tasks). Each stage runs as tasks on the engine's worker processes with Beam's SDK harness
(:mod:`mmbeam.runners.worker`). Between stages, data stays on the workers as engine
references to lists of encoded elements; only element counts, metrics and timings come back to
the driver. The outputs feeding a GroupByKey or a stateful DoFn are hash-partitioned by key on the
workers; a shard is grouped there with Beam's ``GroupingBuffer``. Side inputs are turned into
state entries once per run and committed once per worker process.

Stages stream into each other (:mod:`mmbeam.runners.streaming`): a stage reading another's
output element by element starts while its producer still runs and takes the lists of the
producer's finished tasks; a GroupByKey, a stateful DoFn or a side input still waits for its
whole input. The producer stops submitting while the bytes queued between the two would pass
``--max_queued_bytes`` (backpressure). A stage whose steps ask for resources (a model) runs on
its own pool (:mod:`mmbeam.runners.pools`), which may autoscale; its tasks are sized to whole
model batches, so a batch is not cut short at a task boundary.

Tasks get their size from one :class:`~mmbeam.autotune.BatchSizeController` per stage: it starts
small, learns seconds and bytes per element from finished tasks, and aims at a target task
duration, with in-flight bytes under the workers' memory budget and enough tasks to keep every
worker slot busy. The sizes chosen are kept in ``result.bundle_sizes``.

Recovery from a lost worker process: every list a task produces is committed to the driver with
its length and digest, and every task checks the lists it reads against them (see
:mod:`mmbeam.runners.worker`). An engine may recompute a lost output on its own; when that gives
the same list (a deterministic producer) the run goes on, otherwise the reading task fails with
:class:`~mmbeam.errors.LostDataError`, as does a task the engine reports lost. The driver then
goes back to the earliest stage that wrote the failed stage's inputs (to the start of its wave,
the stages that started while others ran), restores the buffers as they were before that
stage, and re-runs from there (a new attempt: fresh DoFn instances and state);
if that stage's own inputs turn out lost as well, it goes back further, up to the first stage
(``--max_recoveries`` re-runs at most). Each stage's outputs, counts and metrics come from one
attempt, never a mix: a re-run stage's outputs replace, never add to, the earlier attempt's. A
DoFn's own side effects may run again (as on any Beam runner); sinks are idempotent (Upload writes
by key, WriteToText finalizes one attempt's temporary files).

The driver can also exchange values with a run through the engine, with no file anywhere:
:meth:`DistributedRunner.retain` brings a PCollection's elements back (the committed attempt's
only, from the buffers above; or, with ``on_part``, each task's elements as soon as the driver
collects that task, while the run goes on), and :meth:`DistributedRunner.provide` puts a
value in the engine once (``ray.put``, Dask ``scatter``) for the tasks of one transform's stage
(mmbeam's frames use both for their inputs and results).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from apache_beam.options import pipeline_options
from apache_beam.portability.api import beam_fn_api_pb2, beam_runner_api_pb2, metrics_pb2
from apache_beam.runners.common import ENCODED_IMPULSE_VALUE
from apache_beam.runners.portability.fn_api_runner import execution, translations
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner, RunnerResult
from apache_beam.runners.portability.fn_api_runner.worker_handlers import WorkerHandlerManager
from apache_beam.runners.runner import PipelineState
from apache_beam.runners.worker import bundle_processor
from apache_beam.utils import proto_utils

from mmbeam.autotune import BatchSizeController
from mmbeam.beam_internals import grouping_args
from mmbeam.errors import LostDataError, RunCancelledError, UnsupportedError
from mmbeam.progress import get_progress
from mmbeam.runners import worker
from mmbeam.runners.backend import Backend
from mmbeam.runners.fusion import create_stages
from mmbeam.runners.pools import Autoscaler, PoolReport, record_run
from mmbeam.runners.scheduler import (
    Part,
    StageScheduler,
    committed,
    literal_part,
    readable_stage_name,
)
from mmbeam.runners.streaming import QueueBook, StageGraph
from mmbeam.transforms.resources import stage_resources

__all__ = ["DistributedRunner", "DistributedRunnerOptions", "DistributedResult"]

_log = logging.getLogger(__name__)

class DistributedRunnerOptions(pipeline_options.PipelineOptions):
    """Options shared by mmbeam's Dask and Ray runners."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--bundle_target_seconds", type=float, default=1.0,
                            help="Aim for tasks of about this many seconds (autotuned sizes).")
        parser.add_argument("--max_bundle_size", type=int, default=4096,
                            help="Never put more elements than this in one task.")
        parser.add_argument("--shuffle_partitions", type=int, default=0,
                            help="Hash partitions per GroupByKey (0: twice the worker slots).")
        parser.add_argument("--max_recoveries", type=int, default=10,
                            help="Re-run the stages at most this often after a worker is lost.")
        parser.add_argument("--no_stream_stages", dest="stream_stages", action="store_false",
                            default=True,
                            help="Run stages one after another instead of streaming them.")
        parser.add_argument("--max_queued_bytes", type=int, default=0,
                            help="Bytes queued between two streamed stages before the producer "
                                 "waits (0: 64 MiB, or two of the consumer's tasks per slot if "
                                 "more, at most half the workers' memory budget).")
        parser.add_argument("--pool_idle_seconds", type=float, default=2.0,
                            help="An autoscaling pool stops an actor idle this long.")
        parser.add_argument("--preparation_nice", type=int, default=19,
                            help="Nice steps below their worker's own that the other stages' "
                                 "tasks run at when a run has a model pool (at most nice 19, "
                                 "the lowest; 0: same priority as the model).")


class DistributedResult(RunnerResult):
    """FnApiRunner's result (metrics from every task of the committed attempt) plus the task
    sizes the runner chose and how often it re-ran the stages after losing data."""

    def __init__(self, state, monitoring_infos_by_stage, bundle_sizes: dict[str, list[int]],
                 recoveries: int = 0, retained: dict[str, list] | None = None,
                 pools: dict[str, PoolReport] | None = None):
        super().__init__(state, monitoring_infos_by_stage)
        self.bundle_sizes = bundle_sizes
        self.recoveries = recoveries
        #: name -> the elements of a PCollection passed to :meth:`DistributedRunner.retain`
        self.retained = retained or {}
        #: stage name -> its pool, size over time, model batch sizes, bytes queued on its input
        self.pools = pools or {}


class DistributedRunner(FnApiRunner):
    """A Beam runner that runs FnApiRunner's fused stages as tasks on a :class:`Backend`.

    Subclasses implement :meth:`make_backend`; everything else (fusion, SDF expansion, combiner
    lifting, metrics) is Beam's own.
    """

    _retain: dict[str, tuple[str, str]] | None = None
    _on_part: dict[str, Any] | None = None
    _stops: list[threading.Event] | None = None
    _provide: dict[str, tuple[Any, str]] | None = None

    def make_backend(self, options: pipeline_options.PipelineOptions) -> Backend:
        """The engine backend for ``options``."""
        raise NotImplementedError

    def retain(self, pcoll: Any, name: str,
               on_part: Callable[[list, int], None] | None = None,
               stop: threading.Event | None = None) -> None:
        """Bring ``pcoll``'s elements back to the driver through the engine: after the run they
        are ``result.retained[name]`` (values without windows, in no defined order), from the
        committed attempt of their stage only, so a recovered run never repeats one.

        With ``on_part``, they stream instead (``result.retained`` has no ``name``): each time
        the driver collects a task writing ``pcoll``, it fetches that task's elements, checks
        them against what the task committed, and calls ``on_part(values, attempt)`` on the
        run's own thread; the run waits while it blocks (backpressure), an exception it raises
        ends the run. ``attempt`` counts the recoveries so far: after lost data the stages are
        re-run and a value handed over in an earlier attempt may come again in a later one
        (the consumer recognizes it, e.g. by a deterministic key). Handed-over values are not
        kept by the run.

        Setting ``stop`` (from any thread) ends the run at the next turn of its driver loop
        (within a second unless a task result is being fetched): it raises
        :class:`~mmbeam.errors.RunCancelledError` after releasing its data and the engine."""
        if self._retain is None:
            self._retain, self._on_part, self._stops = {}, {}, []
        self._retain[name] = (pcoll.producer.full_label,
                              "None" if pcoll.tag is None else str(pcoll.tag))
        if on_part is not None:
            self._on_part[name] = on_part
        if stop is not None:
            self._stops.append(stop)

    def provide(self, value: Any, label: str) -> str:
        """Put ``value`` in the engine once when the run starts (``ray.put``, Dask ``scatter``),
        for the tasks of the stage running the transform labelled ``label`` (its full label, or
        its label inside a composite); a DoFn there reads
        it with :func:`mmbeam.runners.worker.provided` ``(token)``. Returns the token."""
        if self._provide is None:
            self._provide = {}
        token = uuid.uuid4().hex
        self._provide[token] = (value, label)
        return token

    def run_pipeline(self, pipeline, options):
        """Run ``pipeline`` (Beam's entry point)."""
        self._options = options
        return super().run_pipeline(pipeline, options)

    def create_stages(self, pipeline_proto):
        """The pipeline's fused stages, with mmbeam's element fusion first."""
        # FnApiRunner's phases with element fusion; a stateful DoFn always starts a stage
        self._retained_ids = _pcollection_ids(pipeline_proto, self._retain or {})
        extra = (_retain_phase(set(self._retained_ids.values())),) if self._retained_ids else ()
        return create_stages(self, pipeline_proto, getattr(self, "_options", None),
                             stateful_roots=True, resource_roots=True, after_fusion=extra)

    def run_stages(self, stage_context, stages):
        """Run the stages on the backend's workers."""
        options = getattr(self, "_options", None) or pipeline_options.PipelineOptions()
        backend = self.make_backend(options)
        handlers = WorkerHandlerManager(stage_context.components.environments,
                                        self._provision_info)
        try:
            context = execution.FnApiRunnerExecutionContext(
                stages, handlers, stage_context.components, stage_context.safe_coders,
                stage_context.data_channel_coders, 1)
            context.setup()  # points data inputs/outputs at the (in-memory) data plane
            execution_run = _Execution(context, stages, backend,
                                       options.view_as(DistributedRunnerOptions),
                                       self._stops)
            try:
                execution_run.provided = {token: (backend.put(value), label) for token, (
                    value, label) in (self._provide or {}).items()}
                retained_ids = getattr(self, "_retained_ids", {})
                on_part = self._on_part or {}
                execution_run.handed = {translations.create_buffer_id(p): (name, on_part[name])
                                        for name, p in retained_ids.items() if name in on_part}
                fetched = {n: p for n, p in retained_ids.items() if n not in on_part}
                execution_run.keep = {translations.create_buffer_id(p) for p in fetched.values()}
                infos = execution_run.run()
                retained = execution_run.fetch(fetched)
            finally:
                execution_run.close()
                record_run(list(execution_run.pools.values()))
            return DistributedResult(PipelineState.DONE, infos, execution_run.bundle_sizes,
                                     execution_run.recoveries, retained, execution_run.pools)
        finally:
            get_progress().close()
            handlers.close_all()
            backend.close()


class _StageLostError(Exception):
    """Lost data met by stage ``index`` (the engine's error is the cause)."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(str(error))
        self.index, self.error = index, error


class _Execution:
    """One run: the stages (streaming into each other in waves), their buffers as worker-side
    parts, and one task scheduler per running stage."""

    def __init__(self, context, stages, backend: Backend, options: DistributedRunnerOptions,
                 stops: list[threading.Event] | None = None):
        self.context = context
        self.stops = stops or []  # set by a consumer that wants the run to end now
        self.stages = stages
        self.backend = backend
        self.options = options
        self.run_id = uuid.uuid4().hex
        self.recoveries = 0
        self.shards = options.shuffle_partitions or max(2, 2 * backend.slots)
        #: buffer id -> one list of shard parts per producing task (None: consumed, let go)
        self.buffers: dict[bytes, list[list[Part] | None]] = collections.defaultdict(list)
        self.side_states: dict[tuple[str, str], Any] = {}
        self.bundle_sizes: dict[str, list[int]] = {}
        self.controllers: dict[str, BatchSizeController] = {}
        self.pools: dict[str, PoolReport] = {}
        self._stateful_buffers = self._buffers_read_by_stateful_stages()
        self._next_worker = 0
        #: buffer id -> the coder of its elements; token -> (engine ref, transform label)
        self.coders: dict[bytes, Any] = {}
        self.provided: dict[str, tuple[Any, str]] = {}
        self.keep: set[bytes] = set()  # buffers fetched after the run: never let go early
        #: retained buffers streamed to the driver: buffer id -> (name, on_part)
        self.handed: dict[bytes, tuple[str, Any]] = {}
        self.labels: dict[str, str] = {}  # stage name -> its progress label
        self.graph = self._stage_graph()
        #: buffer id -> indexes of the stages writing it; stage index -> buffer ids it reads
        self.writers = self.graph.writers
        self.reads = {i: self.graph.main[i] | self.graph.side[i] for i in range(len(stages))}
        self.streamed_buffers = {b for b, readers in self.graph.readers.items()
                                 if any(self.graph.streams(r, b) for r in readers)}
        self.running: dict[int, StageScheduler] = {}
        self._stalled = 0  # driver loop turns in a row with no task anywhere
        self.has_pools = any(stage_resources(s.transforms) for s in stages)
        self.queues = QueueBook()
        self.started = time.monotonic()

    def _stage_graph(self) -> StageGraph:
        main, side, writes = [], [], []
        for stage in self.stages:
            manager = self.context.bundle_manager_for(stage)
            writes.append(set(manager.stage_data_outputs.values()))
            main.append({self.context.input_transform_to_buffer_id[t.unique_name]
                         for t in stage.transforms
                         if t.spec.urn == bundle_processor.DATA_INPUT_URN})
            side.append({translations.create_buffer_id(t.inputs[tag])
                         for t, tag in self._side_inputs(stage)})
        return StageGraph(main, side, writes, self._stateful_buffers,
                          streaming=self.options.stream_stages)

    # ------------------------------------------------------------------ driver loop
    def run(self) -> dict[str, list[metrics_pb2.MonitoringInfo]]:
        """Stages in order, each starting as soon as the graph allows (a wave of streaming
        stages); after lost data, again from the start of the wave that wrote the lost inputs."""
        infos: dict[str, list[metrics_pb2.MonitoringInfo]] = {}
        before: dict[int, tuple[dict, dict]] = {}  # wave start -> buffers, side states
        wave_of: dict[int, int] = {}
        running = self.running
        index = 0
        while index < len(self.stages) or running:
            try:
                while index < len(self.stages) and self.graph.may_start(index, running):
                    if not running:
                        before[index] = ({b: list(p) for b, p in self.buffers.items()},
                                         dict(self.side_states))
                    wave_of[index] = index if not running else wave_of[min(running)]
                    running[index] = self._guarded(index, self._run_stage, index)
                    index += 1
                self._advance(running, infos)
            except _StageLostError as lost:
                failed, exc = lost.index, lost.error
                restart = min(wave_of[w] for w in {failed, *(
                    w for b in self.reads.get(failed, ()) for w in self.writers[b] if w < failed)})
                if self.recoveries >= self.options.max_recoveries:
                    raise LostDataError(f"lost data {self.recoveries + 1} times, giving up "
                                        f"(--max_recoveries={self.options.max_recoveries}): "
                                        f"{exc}") from exc
                self.recoveries += 1
                _log.warning("stage %d of %d lost data (%s: %s); re-running from stage %d "
                             "(recovery %d)", failed, len(self.stages), type(exc).__name__, exc,
                             restart, self.recoveries)
                running.clear()  # their tasks still in flight are forgotten
                for stage in self.stages[restart:index]:
                    infos.pop(stage.name, None)
                    self.bundle_sizes.pop(stage.name, None)
                buffers, self.side_states = before[restart]
                for later in [w for w in before if w > restart]:
                    before.pop(later)  # let the failed attempt's data go
                self.buffers = collections.defaultdict(list, buffers)
                self.queues.clear()
                index = restart
        return infos

    def _guarded(self, index: int, fn, *args):
        """``fn(*args)`` for stage ``index``; the engine's lost-data errors name the stage."""
        try:
            return fn(*args)
        except (LostDataError, *self.backend.lost_errors) as exc:
            raise _StageLostError(index, exc) from exc

    def _advance(self, running: dict[int, StageScheduler], infos: dict) -> None:
        """Feed the running stages what their producers finished, let them submit, finish the
        stages that are done, else wait for a task of any of them."""
        if any(stop.is_set() for stop in self.stops):
            raise RunCancelledError(f"run {self.run_id} stopped by its consumer")
        for index, scheduler in list(running.items()):
            self._feed(index, scheduler, running)
            self._guarded(index, scheduler.submit_ready)
        for index in [i for i, s in running.items() if s.done]:
            scheduler = running.pop(index)
            infos[self.stages[index].name] = scheduler.monitoring_infos()
            _log.debug("stage %s: %d tasks in %.2f s", scheduler.plan.stage_name,
                       len(scheduler.sizes), time.perf_counter() - scheduler.started)
        if not running or any(s.done for s in running.values()):
            return
        owners = {ref: (i, s) for i, s in running.items() for ref in s.in_flight}
        starting = any(s.backend.starting for s in running.values())
        if not owners:  # every stage waits for a fuller task: the one with input runs anyway
            for index, scheduler in running.items():
                self._guarded(index, scheduler.submit_ready, True)
            if starting:  # a pool's actors are on their way: its scheduler polls them
                time.sleep(0.02)
            elif not any(s.in_flight for s in running.values()):
                self._stalled += 1
                if self._stalled > 1000:  # a bug, not a state to wait in: say so
                    raise RuntimeError("no running stage can make progress: " + "; ".join(
                        f"{self.stages[i].name}: {s.available} waiting, open={s.open}"
                        for i, s in running.items()))
                time.sleep(0.001)
            return
        self._stalled = 0
        scaling = any(s.autoscaler is not None for s in running.values())
        refs = list(owners)
        done = self.backend.wait_any_for(refs, 0.05 if starting else 0.1 if scaling else 0.5)
        for ref in done:
            index, scheduler = owners[ref]
            self._guarded(index, scheduler.collect, ref)

    def _feed(self, index: int, scheduler: StageScheduler, running) -> None:
        """New lists of the stage's streamed inputs (their producers' finished tasks)."""
        for transform_id, buffer_id in scheduler.streamed.items():
            entries = self.buffers.get(buffer_id, [])
            taken = scheduler.taken.get(transform_id, 0)
            parts = _filled(entries[taken:])
            scheduler.taken[transform_id] = len(entries)
            if self.graph.sole_streamed_reader(buffer_id) == index and buffer_id not in self.keep:
                for k in range(taken, len(entries)):  # the scheduler holds them until read
                    entries[k] = None
            scheduler.feed(transform_id, parts)
        scheduler.open = not all(self.graph.complete(b, running)
                                 for b in scheduler.streamed.values())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def label(self, stage_name: str) -> str:
        """A stage's short name for the progress display, unique in this run."""
        if stage_name not in self.labels:
            label = readable_stage_name(stage_name)
            taken = set(self.labels.values())
            n = 1
            while (unique := label if n == 1 else f"{label} ({n})") in taken:
                n += 1
            self.labels[stage_name] = unique
        return self.labels[stage_name]

    def hand_over(self, buffer_id: bytes, position: int) -> None:
        """Give a streamed retained buffer's new task output (entry ``position``) to its
        ``on_part``, checked against what the task committed; the run keeps it only while a
        stage still reads it."""
        name, on_part = self.handed[buffer_id]
        entries = self.buffers[buffer_id]
        values = self._decoded(name, buffer_id, entries[position])
        if not self.graph.readers.get(buffer_id):
            entries[position] = None  # nothing else reads it: let the engine free it
        on_part(values, self.recoveries)  # only the decoded values wait while it blocks

    def fetch(self, pcolls: dict[str, str]) -> dict[str, list]:
        """name -> the decoded elements of each PCollection id in ``pcolls`` (a retained
        output), checked against what their tasks committed."""
        out = {}
        for name, pcoll in pcolls.items():
            buffer_id = translations.create_buffer_id(pcoll)
            if buffer_id not in self.coders:
                raise UnsupportedError(f"retained output {name!r} ({pcoll}) is written by no "
                                       "stage (a Flatten nothing reads?); retain its inputs")
            out[name] = self._decoded(name, buffer_id, [
                p for task in self.buffers.get(buffer_id, []) if task is not None for p in task])
        return out

    def _decoded(self, name: str, buffer_id: bytes, parts: list[Part]) -> list:
        """The decoded elements of a retained output's ``parts``, checked against what their
        tasks committed."""
        parts = [p for p in parts if p.count]
        lists = self.backend.get([p.ref for p in parts]) if parts else []
        worker.check_inputs(f"retained output {name!r}", tuple(lists), committed(parts))
        impl = self.coders[buffer_id].get_impl()
        return [impl.decode_nested(e).value for elements in lists for e in elements]

    def close(self) -> None:
        """Tear down DoFns in every worker process and release the run's data."""
        self.buffers.clear()
        self.side_states.clear()
        self.provided.clear()
        try:
            self.backend.broadcast(worker.end_run, self.run_id)
        except Exception:  # noqa: BLE001 - a dead cluster must not hide the run's own error
            _log.warning("could not end run %s on every worker", self.run_id, exc_info=True)

    def _run_stage(self, index: int) -> StageScheduler:
        """Start stage ``index``: its plan, its whole inputs, and its scheduler (which the
        driver loop feeds with the stage's streamed inputs)."""
        stage = self.stages[index]
        manager = self.context.bundle_manager_for(stage)
        descriptor = manager.process_bundle_descriptor
        names = [part for t in stage.transforms for part in t.unique_name.split("+")]
        provided = {token: ref for token, (ref, label) in self.provided.items()
                    if any(n == label or n.endswith(f"/{label}") for n in names)}
        plan = worker.StagePlan(
            run_id=self.run_id, stage_name=stage.name, attempt=self.recoveries,
            descriptor=descriptor.SerializeToString(),
            outputs=[self._output_spec(manager, t, b)
                     for t, b in manager.stage_data_outputs.items()],
            input_for=self._input_for(manager, descriptor),
            input_transforms=[t.unique_name for t in stage.transforms
                              if t.spec.urn == bundle_processor.DATA_INPUT_URN],
            provided=list(provided))
        resources = stage_resources(stage.transforms)
        if self.has_pools and not resources:
            plan.nice = self.options.preparation_nice
        side_inputs = self._side_inputs(stage)
        side = [*provided.values(), *(self._side_state(t, tag) for t, tag in side_inputs)]
        streamed = {t: self.context.input_transform_to_buffer_id[t] for t in plan.input_transforms
                    if self.graph.streams(index, self.context.input_transform_to_buffer_id[t])}
        units, stream = self._inputs(manager, [t for t in plan.input_transforms
                                               if t not in streamed])
        pool = self.backend.for_stage(stage.name, resources)
        steps = dict.fromkeys(t.unique_name.split("/")[0] for t in stage.transforms
                              if t.spec.urn not in (bundle_processor.DATA_INPUT_URN,
                                                    bundle_processor.DATA_OUTPUT_URN))
        report = self.pools[stage.name] = PoolReport(stage.name, pool.describe(),
                                                     " + ".join(steps) or stage.name)
        scheduler = StageScheduler(self, plan, side, pool, streamed=streamed, report=report)
        if resources and pool.bounds[0] < pool.bounds[1]:
            scheduler.autoscaler = Autoscaler(*pool.bounds, self.options.pool_idle_seconds)
        scheduler.start(units, stream, open_inputs=bool(streamed))
        return scheduler

    # ------------------------------------------------------------------ stage inputs
    def _inputs(self, manager, input_transforms):
        """Fixed units (whole key shards) and splittable element streams, per input transform
        read whole (not streamed)."""
        units: list[tuple[str, list[Part]]] = []
        stream: list[tuple[str, Part]] = []
        for transform_id in input_transforms:
            buffer_id = self.context.input_transform_to_buffer_id[transform_id]
            if buffer_id == translations.IMPULSE_BUFFER:
                stream.append((transform_id, literal_part([ENCODED_IMPULSE_VALUE])))
                continue
            kind, _ = translations.split_buffer_id(buffer_id)
            producers = self.buffers.get(buffer_id, [])
            if kind == "group":
                for part in self._group(manager, transform_id, buffer_id, producers):
                    stream.append((transform_id, part))
            elif buffer_id in self._stateful_buffers:
                for shard in range(self.shards):
                    parts = [p[shard] for p in producers if p[shard].count]
                    if parts:
                        units.append((transform_id, parts))
            else:
                stream.extend((transform_id, part) for part in _filled(producers))
        return units, stream

    def _group(self, manager, transform_id, buffer_id, producers) -> list[Part]:
        """Group each hash shard on a worker; parts of one encoded chunk per key."""
        grouping = manager.get_buffer(buffer_id, transform_id)
        self.context.pcoll_buffers.pop(buffer_id, None)
        args = grouping_args(grouping)
        grouped = []
        for shard in range(self.shards):
            parts = [p[shard] for p in producers if p[shard].count]
            if parts:
                grouped.append(self.backend.submit(
                    worker.group_shards, args, committed(parts), *(p.ref for p in parts),
                    worker=self._place(), num_returns=2))
        metas = self.backend.get([meta for meta, _ in grouped])
        return [Part(ref, n, crc) for (_, ref), (n, crc) in zip(grouped, metas, strict=True)
                if n]

    def _place(self) -> int:
        self._next_worker += 1
        return self._next_worker % self.backend.slots

    # ------------------------------------------------------------------ stage outputs
    def _output_spec(self, manager, transform_id: str, buffer_id: bytes) -> worker.OutputSpec:
        coder_id = beam_fn_api_pb2.RemoteGrpcPort.FromString(
            manager.process_bundle_descriptor.transforms[transform_id].spec.payload).coder_id
        coder = self._coder(coder_id)
        # the SDK's own coder (the runner's "safe" one may see elements as opaque bytes)
        self.coders[buffer_id] = self.context.pipeline_context.coders[coder_id]
        kind, _ = translations.split_buffer_id(buffer_id)
        if kind == "group" or buffer_id in self._stateful_buffers:
            return worker.OutputSpec(transform_id, buffer_id, coder, coder.key_coder(), self.shards)
        return worker.OutputSpec(transform_id, buffer_id, coder)

    def _coder(self, coder_id: str):
        context = self.context
        return context.pipeline_context.coders[context.safe_coders.get(coder_id, coder_id)]

    def _buffers_read_by_stateful_stages(self) -> set[bytes]:
        stateful = {s.name for s in self.stages if s.is_stateful()}
        return {buffer_id for buffer_id, consumers in
                self.context.buffer_id_to_consumer_pairs.items()
                if any(stage in stateful for stage, _ in consumers)}

    @staticmethod
    def _input_for(manager, descriptor) -> dict[tuple[str, str], str]:
        found = {}
        for transform_id, proto in descriptor.transforms.items():
            for input_id in proto.inputs:
                try:
                    found[(transform_id, input_id)] = manager.input_for(transform_id, input_id)
                except RuntimeError:
                    pass
        return found

    # ------------------------------------------------------------------ side inputs
    @staticmethod
    def _side_inputs(stage) -> list[tuple[Any, str]]:
        found = []
        for transform in stage.transforms:
            if transform.spec.urn in translations.PAR_DO_URNS:
                payload = proto_utils.parse_Bytes(transform.spec.payload,
                                                  beam_runner_api_pb2.ParDoPayload)
                found.extend((transform, tag) for tag in payload.side_inputs)
        return found

    def _side_state(self, transform, tag: str) -> Any:
        """State entries of one side input, computed once per run on a worker."""
        transform_id = transform.unique_name
        if (transform_id, tag) not in self.side_states:
            payload = proto_utils.parse_Bytes(transform.spec.payload,
                                              beam_runner_api_pb2.ParDoPayload)
            pcoll = transform.inputs[tag]
            coder = self.context.pipeline_context.coders[
                self.context.safe_coders[self.context.data_channel_coders[pcoll]]]
            parts = _filled(self.buffers.get(translations.create_buffer_id(pcoll), []))
            access = payload.side_inputs[tag].access_pattern.SerializeToString()
            self.side_states[(transform_id, tag)] = self.backend.submit(
                worker.side_input_state, transform_id, tag, access, coder, committed(parts),
                *(p.ref for p in parts), worker=None)[0]
        return self.side_states[(transform_id, tag)]

    def controller(self, stage_name: str) -> BatchSizeController:
        if stage_name not in self.controllers:
            self.controllers[stage_name] = BatchSizeController(
                name=stage_name, target_seconds=self.options.bundle_target_seconds,
                memory_budget=self.backend.memory_budget, min_size=1, initial=1, growth=8.0,
                max_size=max(1, self.options.max_bundle_size))
        return self.controllers[stage_name]


def _filled(entries: list[list[Part] | None]) -> list[Part]:
    """The non-empty parts of a buffer's entries, in order: every piece of every producer's
    task output (see ``worker.run_task``), skipping entries already handed on (``None``)."""
    return [part for entry in entries if entry is not None for part in entry if part.count]


def _pcollection_ids(proto, outputs: dict[str, tuple[str, str]]) -> dict[str, str]:
    """name -> PCollection id of each (transform label, output tag) in ``outputs``."""
    by_label = {t.unique_name: t for t in proto.components.transforms.values()}
    found = {}
    for name, (label, tag) in outputs.items():
        transform = by_label.get(label)
        if transform is None or tag not in transform.outputs:
            raise UnsupportedError(f"cannot retain output {tag!r} of {label!r}: no such "
                                   "transform output in the pipeline")
        found[name] = transform.outputs[tag]
    return found


def _retain_phase(pcolls: set[str]):
    """A fusion phase giving each of ``pcolls`` a data output in the stage producing it (if it
    has none yet), so its elements stay in the run's buffers until the driver fetches them."""

    def retain_outputs(stages, pipeline_context):
        stages = list(stages)
        for stage in stages:
            produced = {o for t in stage.transforms for o in t.outputs.values()}
            written = {t.spec.payload for t in stage.transforms
                       if t.spec.urn == bundle_processor.DATA_OUTPUT_URN}
            for pcoll in sorted(pcolls & produced):
                buffer_id = translations.create_buffer_id(pcoll)
                if buffer_id in written:
                    continue
                pipeline_context.length_prefix_pcoll_coders(pcoll)
                stage.transforms.append(beam_runner_api_pb2.PTransform(
                    unique_name=f"{pcoll}/Retain", inputs={"in": pcoll},
                    spec=beam_runner_api_pb2.FunctionSpec(
                        urn=bundle_processor.DATA_OUTPUT_URN, payload=buffer_id)))
        return stages

    return retain_outputs
