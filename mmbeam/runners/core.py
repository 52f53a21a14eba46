"""The engine-neutral core of mmbeam's distributed runners (Dask, Ray).

The driver fuses the pipeline with Beam's own FnApiRunner translations (plus
``annotate_stateful_dofns_as_roots``, so a stateful DoFn starts its own stage, and mmbeam's
:func:`~mmbeam.runners.fusion.fuse_element_fns`), then runs the
stages in topological order. Each stage runs as tasks on the engine's worker processes with Beam's
SDK harness (:mod:`mmbeam.runners.worker`). Between stages, data stays on the workers as engine
references to lists of encoded elements; only element counts, metrics and timings come back to
the driver. The outputs feeding a GroupByKey or a stateful DoFn are hash-partitioned by key on the
workers; a shard is grouped there with Beam's ``GroupingBuffer``. Side inputs are turned into
state entries once per run and committed once per worker process.

Tasks get their size from one :class:`~mmbeam.autotune.BatchSizeController` per stage: it starts
small, learns seconds and bytes per element from finished tasks, and aims at a target task
duration, with in-flight bytes under the workers' memory budget and enough tasks to keep every
worker slot busy. The sizes chosen are kept in ``result.bundle_sizes``.

Recovery from a lost worker process: every list a task produces is committed to the driver with
its length and digest, and every task checks the lists it reads against them (see
:mod:`mmbeam.runners.worker`). An engine may recompute a lost output on its own; when that gives
the same list (a deterministic producer) the run goes on, otherwise the reading task fails with
:class:`~mmbeam.errors.LostDataError`, as does a task the engine reports lost. The driver then
goes back to the earliest stage that wrote the failed stage's inputs, restores the buffers as they
were before that stage, and re-runs from there (a new attempt: fresh DoFn instances and state);
if that stage's own inputs turn out lost as well, it goes back further, up to the first stage
(``--max_recoveries`` re-runs at most). Each stage's outputs, counts and metrics come from one
attempt, never a mix: a re-run stage's outputs replace, never add to, the earlier attempt's. A
DoFn's own side effects may run again (as on any Beam runner); sinks are idempotent (Upload writes
by key, WriteToText finalizes one attempt's temporary files).

The driver can also exchange values with a run through the engine, with no file anywhere:
:meth:`DistributedRunner.retain` brings a PCollection's elements back (the committed attempt's
only, from the buffers above), and :meth:`DistributedRunner.provide` puts a value in the engine
once (``ray.put``, Dask ``scatter``) for the tasks of one transform's stage (mmbeam's frames use
both for their inputs and results).
"""

from __future__ import annotations

import collections
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from apache_beam.metrics.monitoring_infos import consolidate as consolidate_monitoring_infos
from apache_beam.options import pipeline_options
from apache_beam.portability.api import beam_fn_api_pb2, beam_runner_api_pb2, metrics_pb2
from apache_beam.runners.common import ENCODED_IMPULSE_VALUE
from apache_beam.runners.portability.fn_api_runner import execution, translations
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner, RunnerResult
from apache_beam.runners.portability.fn_api_runner.worker_handlers import WorkerHandlerManager
from apache_beam.runners.runner import PipelineState
from apache_beam.runners.worker import bundle_processor
from apache_beam.utils import proto_utils

from mmbeam.autotune import BatchSizeController, Measurement
from mmbeam.errors import LostDataError, UnsupportedError
from mmbeam.progress import get_progress
from mmbeam.runners import worker
from mmbeam.runners.backend import Backend
from mmbeam.runners.fusion import create_stages
from mmbeam.transforms.resources import stage_resources

__all__ = ["DistributedRunner", "DistributedRunnerOptions", "DistributedResult"]

_log = logging.getLogger(__name__)

#: elements in each stage's first tasks (one per worker slot), which measure the stage's cost
_PROBE_SIZE = 4


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


@dataclass
class _Part:
    """A list of encoded elements living on the workers, its length and its digest."""

    ref: Any
    count: int
    digest: int


class DistributedResult(RunnerResult):
    """FnApiRunner's result (metrics from every task of the committed attempt) plus the task
    sizes the runner chose and how often it re-ran the stages after losing data."""

    def __init__(self, state, monitoring_infos_by_stage, bundle_sizes: dict[str, list[int]],
                 recoveries: int = 0, retained: dict[str, list] | None = None):
        super().__init__(state, monitoring_infos_by_stage)
        self.bundle_sizes = bundle_sizes
        self.recoveries = recoveries
        #: name -> the elements of a PCollection passed to :meth:`DistributedRunner.retain`
        self.retained = retained or {}


class DistributedRunner(FnApiRunner):
    """A Beam runner that runs FnApiRunner's fused stages as tasks on a :class:`Backend`.

    Subclasses implement :meth:`make_backend`; everything else (fusion, SDF expansion, combiner
    lifting, metrics) is Beam's own.
    """

    _retain: dict[str, tuple[str, str]] | None = None
    _provide: dict[str, tuple[Any, str]] | None = None

    def make_backend(self, options: pipeline_options.PipelineOptions) -> Backend:
        raise NotImplementedError

    def retain(self, pcoll: Any, name: str) -> None:
        """Bring ``pcoll``'s elements back to the driver through the engine: after the run they
        are ``result.retained[name]`` (values without windows, in no defined order), from the
        committed attempt of their stage only, so a recovered run never repeats one."""
        if self._retain is None:
            self._retain = {}
        self._retain[name] = (pcoll.producer.full_label,
                              "None" if pcoll.tag is None else str(pcoll.tag))

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
        self._options = options
        return super().run_pipeline(pipeline, options)

    def create_stages(self, pipeline_proto):
        # FnApiRunner's phases with element fusion; a stateful DoFn always starts a stage
        self._retained_ids = _pcollection_ids(pipeline_proto, self._retain or {})
        extra = (_retain_phase(set(self._retained_ids.values())),) if self._retained_ids else ()
        return create_stages(self, pipeline_proto, getattr(self, "_options", None),
                             stateful_roots=True, after_fusion=extra)

    def run_stages(self, stage_context, stages):
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
                                       options.view_as(DistributedRunnerOptions))
            try:
                execution_run.provided = {token: (backend.put(value), label) for token, (
                    value, label) in (self._provide or {}).items()}
                infos = execution_run.run()
                retained = execution_run.fetch(getattr(self, "_retained_ids", {}))
            finally:
                execution_run.close()
            return DistributedResult(PipelineState.DONE, infos, execution_run.bundle_sizes,
                                     execution_run.recoveries, retained)
        finally:
            get_progress().close()
            handlers.close_all()
            backend.close()


class _Execution:
    """One run: stages in order, their buffers as worker-side parts, and the task scheduler."""

    def __init__(self, context, stages, backend: Backend, options: DistributedRunnerOptions):
        self.context = context
        self.stages = stages
        self.backend = backend
        self.options = options
        self.run_id = uuid.uuid4().hex
        self.recoveries = 0
        #: buffer id -> indexes of the stages writing it; stage index -> buffer ids it reads
        self.writers: dict[bytes, set[int]] = collections.defaultdict(set)
        self.reads: dict[int, set[bytes]] = {}
        self.shards = options.shuffle_partitions or max(2, 2 * backend.slots)
        #: buffer id -> one list of shard parts per producing task
        self.buffers: dict[bytes, list[list[_Part]]] = collections.defaultdict(list)
        self.side_states: dict[tuple[str, str], Any] = {}
        self.bundle_sizes: dict[str, list[int]] = {}
        self.controllers: dict[str, BatchSizeController] = {}
        self._stateful_buffers = self._buffers_read_by_stateful_stages()
        self._next_worker = 0
        #: buffer id -> the coder of its elements; token -> (engine ref, transform label)
        self.coders: dict[bytes, Any] = {}
        self.provided: dict[str, tuple[Any, str]] = {}

    # ------------------------------------------------------------------ driver loop
    def run(self) -> dict[str, list[metrics_pb2.MonitoringInfo]]:
        """Stages in order; after lost data, again from the stage that wrote the lost inputs."""
        lost = (LostDataError, *self.backend.lost_errors)
        infos: dict[str, list[metrics_pb2.MonitoringInfo]] = {}
        before: dict[int, tuple[dict, dict]] = {}  # stage index -> buffers, side states
        index = 0
        while index < len(self.stages):
            before[index] = ({b: list(p) for b, p in self.buffers.items()}, dict(self.side_states))
            try:
                infos[self.stages[index].name] = self._run_stage(index)
                index += 1
            except lost as exc:
                restart = min((w for b in self.reads.get(index, ()) for w in self.writers[b]
                               if w < index), default=index)
                if self.recoveries >= self.options.max_recoveries:
                    raise LostDataError(f"lost data {self.recoveries + 1} times, giving up "
                                        f"(--max_recoveries={self.options.max_recoveries}): "
                                        f"{exc}") from exc
                self.recoveries += 1
                _log.warning("stage %d of %d lost data (%s: %s); re-running from stage %d "
                             "(recovery %d)", index, len(self.stages), type(exc).__name__, exc,
                             restart, self.recoveries)
                for stage in self.stages[restart:index + 1]:
                    infos.pop(stage.name, None)
                    self.bundle_sizes.pop(stage.name, None)
                buffers, self.side_states = before[restart]
                for later in range(restart + 1, index + 1):
                    before.pop(later, None)  # let the failed attempt's data go
                self.buffers = collections.defaultdict(list, buffers)
                index = restart
        return infos

    def fetch(self, pcolls: dict[str, str]) -> dict[str, list]:
        """name -> the decoded elements of each PCollection id in ``pcolls`` (a retained
        output), checked against what their tasks committed."""
        out = {}
        for name, pcoll in pcolls.items():
            buffer_id = translations.create_buffer_id(pcoll)
            if buffer_id not in self.coders:
                raise UnsupportedError(f"retained output {name!r} ({pcoll}) is written by no "
                                       "stage (a Flatten nothing reads?); retain its inputs")
            parts = [p for task in self.buffers.get(buffer_id, []) for p in task if p.count]
            lists = self.backend.get([p.ref for p in parts]) if parts else []
            worker.check_inputs(f"retained output {name!r}", tuple(lists), _committed(parts))
            impl = self.coders[buffer_id].get_impl()
            out[name] = [impl.decode_nested(e).value for elements in lists for e in elements]
        return out

    def close(self) -> None:
        """Tear down DoFns in every worker process and release the run's data."""
        self.buffers.clear()
        self.side_states.clear()
        self.provided.clear()
        try:
            self.backend.broadcast(worker.end_run, self.run_id)
        except Exception:  # noqa: BLE001 - a dead cluster must not hide the run's own error
            _log.warning("could not end run %s on every worker", self.run_id, exc_info=True)

    def _run_stage(self, index: int) -> list[metrics_pb2.MonitoringInfo]:
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
        side_inputs = self._side_inputs(stage)
        self.reads[index] = {
            *(self.context.input_transform_to_buffer_id[t] for t in plan.input_transforms),
            *(translations.create_buffer_id(t.inputs[tag]) for t, tag in side_inputs)}
        for spec in plan.outputs:
            self.writers[spec.buffer_id].add(index)
        side = [*provided.values(), *(self._side_state(t, tag) for t, tag in side_inputs)]
        units, stream = self._inputs(manager, plan.input_transforms)
        pool = self.backend.for_stage(stage.name, stage_resources(stage.transforms))
        scheduler = _StageScheduler(self, plan, side, pool)
        started = time.perf_counter()
        scheduler.run(units, stream)
        _log.debug("stage %s: %d tasks in %.2f s", stage.name, len(scheduler.sizes),
                   time.perf_counter() - started)
        return scheduler.monitoring_infos()

    # ------------------------------------------------------------------ stage inputs
    def _inputs(self, manager, input_transforms):
        """Fixed units (whole key shards) and splittable element streams, per input transform."""
        units: list[tuple[str, list[_Part]]] = []
        stream: list[tuple[str, _Part]] = []
        for transform_id in input_transforms:
            buffer_id = self.context.input_transform_to_buffer_id[transform_id]
            if buffer_id == translations.IMPULSE_BUFFER:
                stream.append((transform_id, _literal_part([ENCODED_IMPULSE_VALUE])))
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
                stream.extend((transform_id, p[0]) for p in producers if p[0].count)
        if not units and not stream and input_transforms:
            # No input at all: still run one (empty) bundle, as the FnApiRunner does.
            stream.append((input_transforms[0], _literal_part([])))
        return units, stream

    def _group(self, manager, transform_id, buffer_id, producers) -> list[_Part]:
        """Group each hash shard on a worker; parts of one encoded chunk per key."""
        grouping = manager.get_buffer(buffer_id, transform_id)
        self.context.pcoll_buffers.pop(buffer_id, None)
        args = (grouping._pre_grouped_coder, grouping._post_grouped_coder, grouping._windowing)
        grouped = []
        for shard in range(self.shards):
            parts = [p[shard] for p in producers if p[shard].count]
            if parts:
                grouped.append(self.backend.submit(
                    worker.group_shards, args, _committed(parts), *(p.ref for p in parts),
                    worker=self._place(), num_returns=2))
        committed = self.backend.get([meta for meta, _ in grouped])
        return [_Part(ref, n, crc) for (_, ref), (n, crc) in zip(grouped, committed, strict=True)
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
            parts = [p[0] for p in self.buffers.get(translations.create_buffer_id(pcoll), [])
                     if p[0].count]
            access = payload.side_inputs[tag].access_pattern.SerializeToString()
            self.side_states[(transform_id, tag)] = self.backend.submit(
                worker.side_input_state, transform_id, tag, access, coder, _committed(parts),
                *(p.ref for p in parts), worker=None)[0]
        return self.side_states[(transform_id, tag)]

    def controller(self, stage_name: str) -> BatchSizeController:
        if stage_name not in self.controllers:
            self.controllers[stage_name] = BatchSizeController(
                name=stage_name, target_seconds=self.options.bundle_target_seconds,
                memory_budget=self.backend.memory_budget, min_size=1, initial=1, growth=8.0,
                max_size=max(1, self.options.max_bundle_size))
        return self.controllers[stage_name]


class _StageScheduler:
    """Submits one stage's tasks, sized by the stage's controller, and collects their outputs."""

    def __init__(self, execution_run: _Execution, plan: worker.StagePlan, side: list,
                 backend: Backend):
        self.execution = execution_run
        self.backend = backend  # the run's backend, or the stage's own worker pool
        stage_name = plan.stage_name
        self.plan = plan
        self.side = side
        self.controller = execution_run.controller(stage_name)
        self.sizes = execution_run.bundle_sizes.setdefault(stage_name, [])
        self.infos: list[metrics_pb2.MonitoringInfo] = []
        self.in_flight: dict[Any, tuple[list, int, int]] = {}
        self.load: collections.Counter = collections.Counter()
        self.progress = get_progress()  # the driver's per-stage view of finished elements

    def run(self, units: list[tuple[str, list[_Part]]], stream: list[tuple[str, _Part]]) -> None:
        pending = collections.deque(units)
        self.stream = collections.deque(stream)
        self.offset = 0
        total = sum(p.count for _, p in stream)
        self.progress.update(self.plan.stage_name,
                             total=total + sum(p.count for _, parts in units for p in parts))
        #: at least one task per worker slot, however cheap the elements are
        self.cap = max(1, math.ceil(total / max(1, self.backend.slots)))
        max_in_flight = 2 * self.backend.slots
        while pending or self.stream or self.in_flight:
            while (pending or self.stream) and self._may_submit(max_in_flight):
                if pending:  # a whole key shard: never split
                    transform_id, parts = pending.popleft()
                    slices = [(i, 0, None) for i in range(len(parts))]
                    self._submit(transform_id, parts, slices, sum(p.count for p in parts))
                elif not self.controller.batches and len(self.in_flight) >= self.backend.slots:
                    break  # one small probe task per slot until the first one reports its cost
                else:
                    self._submit(*self._take(self._next_size()))
            self._collect_one()

    def _take(self, size: int) -> tuple[str, list, list, int]:
        """The next ``size`` elements of one input transform's stream, as slices of parts."""
        transform_id = self.stream[0][0]
        parts, slices, taken = [], [], 0
        while self.stream and taken < size and self.stream[0][0] == transform_id:
            part = self.stream[0][1]
            n = min(part.count - self.offset, size - taken)
            slices.append((len(parts), self.offset, self.offset + n))
            parts.append(part)
            taken += n
            self.offset += n
            if self.offset >= part.count:
                self.stream.popleft()
                self.offset = 0
        return transform_id, parts, slices, taken

    def _next_size(self) -> int:
        if not self.controller.batches:
            return min(_PROBE_SIZE, self.cap)
        return max(1, min(self.controller.next_size(), self.cap))

    def _may_submit(self, max_in_flight: int) -> bool:
        if len(self.in_flight) >= max_in_flight:
            return False
        per_element = self.controller.peak_bytes_per_element
        if not per_element or not self.in_flight:
            return True
        elements = sum(v[1] for v in self.in_flight.values())
        return elements * per_element < self.backend.memory_budget

    def _submit(self, transform_id, parts: list[_Part], slices, elements) -> None:
        target = min(range(self.backend.slots), key=lambda w: self.load[w])
        self.load[target] += 1
        outs = self.backend.submit(
            worker.run_task, self.plan, transform_id, slices, _committed(parts),
            len(self.side) - len(self.plan.provided),
            *self.side, *(p.ref for p in parts), worker=target,
            num_returns=1 + sum(o.shards if o.key_coder is not None else 1
                                for o in self.plan.outputs))
        self.sizes.append(elements)
        self.in_flight[outs[0]] = (outs[1:], elements, target)

    def _collect_one(self) -> None:
        if not self.in_flight:
            return
        done = self.backend.wait_any(list(self.in_flight))
        for ref in done:
            outs, elements, target = self.in_flight.pop(ref)
            self.load[target] -= 1
            result: worker.TaskResult = self.backend.get([ref])[0]
            self.controller.record(Measurement(
                elements=max(1, result.elements), seconds=result.seconds,
                input_bytes=result.input_bytes, output_bytes=result.output_bytes))
            self.infos.extend(metrics_pb2.MonitoringInfo.FromString(b)
                              for b in result.monitoring_infos)
            self._store(outs, result)
            self.progress.update(self.plan.stage_name, done=result.elements)

    def _store(self, outs: list, result: worker.TaskResult) -> None:
        position = 0
        for spec, counts, digests in zip(self.plan.outputs, result.counts, result.digests,
                                         strict=True):
            shards = [_Part(outs[position + i], n, crc)
                      for i, (n, crc) in enumerate(zip(counts, digests, strict=True))]
            position += len(counts)
            self.execution.buffers[spec.buffer_id].append(shards)

    def monitoring_infos(self) -> list[metrics_pb2.MonitoringInfo]:
        return list(consolidate_monitoring_infos(self.infos))


def _literal_part(elements: list[bytes]) -> _Part:
    """A part the driver holds itself (the impulse, an empty input)."""
    return _Part(elements, len(elements), worker.digest(elements))


def _committed(parts: list[_Part]) -> list[tuple[int, int]]:
    """What the reading task checks its input lists against."""
    return [(p.count, p.digest) for p in parts]


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
