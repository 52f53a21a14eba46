"""One stage's tasks on a distributed runner: sizes, submission, backpressure, collection.

:class:`StageScheduler` submits a stage's tasks to its pool (a
:class:`~mmbeam.runners.backend.Backend`), sized by the stage's
:class:`~mmbeam.autotune.BatchSizeController` and, for a model's stage, to whole model batches;
it collects their results into the run's buffers as :class:`Part` references. The run
(``_Execution`` in :mod:`mmbeam.runners.core`) starts it with the inputs it reads whole, feeds it
the lists of its streamed inputs as their producers finish, and asks it to submit and collect;
the scheduler reads the run's graph, buffers and queues (see :mod:`mmbeam.runners.streaming`).
"""

from __future__ import annotations

import collections
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from apache_beam.metrics.monitoring_infos import consolidate as consolidate_monitoring_infos
from apache_beam.portability.api import metrics_pb2

from mmbeam.autotune import Measurement
from mmbeam.progress import get_progress
from mmbeam.runners import worker
from mmbeam.runners.backend import Backend
from mmbeam.runners.pools import Autoscaler, PoolReport

__all__ = ["PROBE_SIZE", "Part", "StageScheduler", "committed", "literal_part",
           "readable_stage_name"]

#: elements in each stage's first tasks (one per worker slot), which measure the stage's cost
PROBE_SIZE = 4
#: tasks in flight per slot: one running, one queued behind it
TASKS_PER_SLOT = 2
#: a stage on its own pool (a model's) keeps one more queued: its slot must never wait for
#: input, and the driver may hear late that a task ended (on Dask a pure-Python model holds the
#: GIL that the worker's event loop needs to report it)
MODEL_TASKS_PER_SLOT = 3
#: a task's output (not partitioned by key) comes back in lists of about this size, so that a
#: consumer's task fetches and holds only what it reads (see ``worker.run_task``)
PIECE_BYTES = 8 << 20


@dataclass
class Part:
    """A list of encoded elements living on the workers, its length and its digest."""

    ref: Any
    count: int
    digest: int
    nbytes: int = 0  # encoded size (for the queues between streamed stages)


class StageScheduler:
    """Submits one stage's tasks, sized by the stage's controller, and collects their outputs.

    Inputs read whole come at :meth:`start`; streamed inputs arrive with :meth:`feed` while
    ``open``. A stage with streamed outputs keeps the bytes queued on them under the run's
    limit; a model's stage sizes tasks to whole batches; an autoscaling pool grows and shrinks.
    """

    def __init__(self, execution_run: Any, plan: worker.StagePlan, side: list,
                 backend: Backend, streamed: dict[str, bytes] | None = None,
                 report: PoolReport | None = None):
        self.execution = execution_run
        self.backend = backend  # the run's backend, or the stage's own worker pool
        self.tasks_per_slot = (TASKS_PER_SLOT if backend is execution_run.backend
                               else MODEL_TASKS_PER_SLOT)
        stage_name = plan.stage_name
        self.plan = plan
        self.side = side
        self.controller = execution_run.controller(stage_name)
        self.sizes = execution_run.bundle_sizes.setdefault(stage_name, [])
        self.infos: list[metrics_pb2.MonitoringInfo] = []
        #: result ref -> (output refs, elements, slot, streamed bytes read per buffer)
        self.in_flight: dict[Any, tuple[list, int, int, dict[bytes, float]]] = {}
        self.load: collections.Counter = collections.Counter()
        #: input transform -> streamed buffer; how many of its entries were taken
        self.streamed = streamed or {}
        self.taken: dict[str, int] = {}
        self.open = False
        self.report = report or PoolReport(stage_name, backend.describe())
        self.autoscaler: Autoscaler | None = None
        self.hint = 1  # elements per model batch, as the stage's tasks report it
        self.out_per_element = 0.0  # encoded output bytes per input element (the most seen)
        self.in_per_element = 0.0  # encoded input bytes per element (the most seen)
        self.submitted = 0
        self.started = time.perf_counter()
        self.progress = get_progress()  # the driver's per-stage view of finished elements
        self.label = execution_run.label(stage_name)  # its short name in the progress display
        self.known = 0  # elements this stage has been given so far

    # ------------------------------------------------------------------ inputs
    def start(self, units: list[tuple[str, list[Part]]], stream: list[tuple[str, Part]],
              open_inputs: bool = False) -> None:
        """Begin the stage with its fixed units and element streams (``open_inputs``: more
        will be fed)."""
        self.pending = collections.deque(units)
        self.stream = collections.deque(stream)
        self.offset = 0
        self.available = sum(p.count for _, p in stream)
        self.open = open_inputs
        #: at least one task per worker slot, however cheap the elements are
        self.cap = max(1, math.ceil(self.available / max(1, self.backend.slots)))
        self.report.size(self.execution.elapsed(), self.backend.slots)
        self._given(self.available + sum(p.count for _, parts in units for p in parts))

    def feed(self, transform_id: str, parts: list[Part]) -> None:
        """More input parts from a producer that is still running."""
        self.stream.extend((transform_id, p) for p in parts)
        count = sum(p.count for p in parts)
        self.available += count
        if count:
            self._given(count)

    def _given(self, elements: int) -> None:
        self.known += elements
        self.progress.update(self.label, total=self.known)

    @property
    def done(self) -> bool:
        """True when no input is left, pending or in flight."""
        return not (self.open or self.pending or self.stream or self.in_flight)

    # ------------------------------------------------------------------ submitting
    def submit_ready(self, force: bool = False) -> None:
        """Submit the tasks that may run now (slots, memory, the queue downstream); ``force``
        submits what input there is even if it makes a small task (nothing runs anywhere)."""
        self._scale()
        max_in_flight = self.tasks_per_slot * self.backend.slots
        while (self.pending or self.stream) and self._may_submit(max_in_flight):
            if self.pending:  # a whole key shard: never split
                transform_id, parts = self.pending.popleft()
                slices = [(i, 0, None) for i in range(len(parts))]
                self._submit(transform_id, parts, slices, sum(p.count for p in parts))
            elif not self.controller.batches and len(self.in_flight) >= self.backend.slots:
                break  # one small probe task per slot until the first one reports its cost
            else:
                size = self._ready_size() or (self.available if force else 0)
                if not size:
                    break
                self._submit(*self._take(size))
        if self.plan.input_transforms and self.backend.slots and not (
                self.open or self.submitted or self.pending or self.stream or self.in_flight):
            # No input at all: still run one (empty) bundle, as the FnApiRunner does.
            self._submit(self.plan.input_transforms[0], [literal_part([])], [(0, 0, None)], 0)

    def _ready_size(self) -> int:
        """Elements for the next task; 0 to wait for more input (a streamed stage waits for a
        full task, or for a whole model batch when a slot is free)."""
        size = self._next_size()
        if self.hint > 1:  # whole model batches, as many as come nearest the task's size
            size = max(self.hint, (size + self.hint // 2) // self.hint * self.hint)
        if not self.open or self.available >= size:
            return size
        if self.execution.queues[self._feeding()] >= self.queue_limit() // 2:
            return self.available  # the producer is about to wait for us
        if len(self.in_flight) < self.backend.slots and self.available >= self.hint:
            return self.available // self.hint * self.hint
        return 0

    def _feeding(self) -> bytes:
        return next(iter(self.streamed.values()), b"")

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
        self.available -= taken
        return transform_id, parts, slices, taken

    def _next_size(self) -> int:
        if self.open:  # more may come: tasks as large as the controller wants
            cap = self.execution.options.max_bundle_size
        elif self.streamed:  # the rest of a stream: spread over the slots
            cap = max(1, math.ceil(self.available / max(1, self.backend.slots)))
        else:
            cap = self.cap
        outputs = self._streamed_outputs()
        if outputs and self.out_per_element:  # one task fits the queue
            cap = min(cap, max(1, int(self._room(outputs) / 2 / self.out_per_element)))
        if not self.controller.batches:
            return max(1, min(PROBE_SIZE, cap))
        return max(1, min(self.controller.next_size(), cap))

    def _may_submit(self, max_in_flight: int) -> bool:
        if len(self.in_flight) >= max_in_flight:
            return False
        per_element = self.controller.peak_bytes_per_element
        elements = sum(v[1] for v in self.in_flight.values())
        if per_element and self.in_flight and elements * per_element >= self.backend.memory_budget:
            return False
        return self._downstream_has_room(elements)

    def _streamed_outputs(self) -> list[tuple[bytes, StageScheduler]]:
        """This stage's outputs that a running stage streams (so they queue between the two),
        with that stage's scheduler."""
        graph, running = self.execution.graph, self.execution.running
        return [(spec.buffer_id, running[r]) for spec in self.plan.outputs
                for r in graph.readers[spec.buffer_id]
                if r in running and graph.streams(r, spec.buffer_id)]

    def _room(self, outputs: list[tuple[bytes, StageScheduler]]) -> int:
        return min(consumer.queue_limit() for _, consumer in outputs)

    def queue_limit(self) -> int:
        """Bytes that may queue on this stage's streamed input: ``--max_queued_bytes``, or
        64 MiB, or two of its tasks per slot when that is more (large elements), at most half
        the memory budget: enough to keep it busy, and the same whatever the input's size, so
        memory stays flat."""
        limit = self.execution.options.max_queued_bytes
        if not limit:
            per_task = self._next_size() * self.in_per_element
            limit = int(min(self.backend.memory_budget // 2,
                            max(64 << 20, 2 * self.backend.slots * per_task)))
        self.report.queue_limit = limit
        return limit

    def _downstream_has_room(self, elements_in_flight: int) -> bool:
        """Backpressure: what is queued downstream, plus what the tasks in flight and the next
        one will add, stays under the limit (a first task always runs)."""
        outputs = self._streamed_outputs()
        if not outputs or not self.out_per_element:
            return True
        queued = max(self.execution.queues[b] for b, _ in outputs)
        if not queued and not self.in_flight:
            return True
        coming = (elements_in_flight + self._next_size()) * self.out_per_element
        return queued + coming <= self._room(outputs)

    def _scale(self) -> None:
        """Add the pool's slots that became ready (its first ones too); an autoscaling pool
        then grows or shrinks by one."""
        self.backend.poll()
        if self.autoscaler is not None:
            loads = [self.load[w] for w in range(self.backend.slots)]
            whole = (self.available // self.hint if self.open
                     else math.ceil(self.available / self.hint))  # tasks ready to go
            waiting = len(self.pending) + whole
            decision = self.autoscaler.decide(loads, self.backend.starting, waiting)
            if decision == "grow":
                self.backend.grow()
            elif decision == "shrink":
                self.backend.shrink()
                self.load.pop(self.backend.slots, None)
        self.report.size(self.execution.elapsed(), self.backend.slots)

    def _submit(self, transform_id, parts: list[Part], slices, elements) -> None:
        target = min(range(self.backend.slots), key=lambda w: self.load[w])
        self.load[target] += 1
        pieces = max(1, min(elements, math.ceil(elements * self.out_per_element / PIECE_BYTES)))
        outs = self.backend.submit(
            worker.run_task, self.plan, transform_id, slices, committed(parts),
            len(self.side) - len(self.plan.provided), pieces, *self.side,
            *(p.ref for p in parts), worker=target,
            num_returns=1 + sum(o.shards if o.key_coder is not None else pieces
                                for o in self.plan.outputs))
        self.sizes.append(elements)
        self.submitted += 1
        read: dict[bytes, float] = collections.defaultdict(float)
        if transform_id in self.streamed:  # what this task takes off its producer's queue
            for i, start, stop in slices:
                part = parts[i]
                n = (stop if stop is not None else part.count) - start
                read[self.streamed[transform_id]] += part.nbytes * n / max(1, part.count)
        self.in_flight[outs[0]] = (outs[1:], elements, target, read)

    # ------------------------------------------------------------------ collecting
    def collect(self, ref: Any) -> None:
        """Take in one finished task: its metrics, cost, outputs and what it consumed."""
        outs, elements, target, read = self.in_flight.pop(ref)
        self.load[target] -= 1
        result: worker.TaskResult = self.backend.get([ref])[0]
        self.controller.record(Measurement(
            elements=max(1, result.elements), seconds=result.seconds,
            input_bytes=result.input_bytes, output_bytes=result.output_bytes))
        self.infos.extend(metrics_pb2.MonitoringInfo.FromString(b)
                          for b in result.monitoring_infos)
        if result.elements:
            self.out_per_element = max(self.out_per_element,
                                       result.output_bytes / result.elements)
            self.in_per_element = max(self.in_per_element, result.input_bytes / result.elements)
        if result.batch_hint:
            self.hint = result.batch_hint
        self.report.batch_sizes.extend(result.batches)
        for buffer_id, nbytes in read.items():
            self.execution.queues.consumed(buffer_id, nbytes)
            self.report.queued(self.execution.elapsed(), self.execution.queues[buffer_id])
        self._store(outs, result)
        self.progress.update(self.label, done=result.elements)

    def _store(self, outs: list, result: worker.TaskResult) -> None:
        position = 0
        part_bytes = result.part_bytes or [[0] * len(c) for c in result.counts]
        for spec, counts, digests, nbytes in zip(self.plan.outputs, result.counts,
                                                 result.digests, part_bytes, strict=True):
            shards = [Part(outs[position + i], n, crc, size)
                      for i, (n, crc, size) in enumerate(zip(counts, digests, nbytes,
                                                             strict=True))]
            position += len(counts)
            self.execution.buffers[spec.buffer_id].append(shards)
            if spec.buffer_id in self.execution.handed:  # streamed to the driver right away
                self.execution.hand_over(spec.buffer_id,
                                         len(self.execution.buffers[spec.buffer_id]) - 1)
            if spec.buffer_id in self.execution.streamed_buffers:
                self.execution.queues.produced(spec.buffer_id, sum(nbytes))
                for reader in self.execution.graph.readers[spec.buffer_id]:
                    if reader in self.execution.running:
                        report = self.execution.running[reader].report
                        report.queued(self.execution.elapsed(),
                                      self.execution.queues[spec.buffer_id])

    def monitoring_infos(self) -> list[metrics_pb2.MonitoringInfo]:
        """The metrics of the stage's tasks, consolidated."""
        return list(consolidate_monitoring_infos(self.infos))


_TRANSFORM = re.compile(r"ref_AppliedPTransform_([^+()]+?)_\d+(?=[+)]|$)")


def readable_stage_name(stage_name: str) -> str:
    """The user's transforms in one of Beam's fused stage names, outermost label each, in
    order: ``Create+Download+DecodeImage`` for ``((ref_AppliedPTransform_Create-Impulse_3)+
    …(ref_AppliedPTransform_Download-ParDo-ElementFn-_15+…)+(ref_PCollection_…/Write)``;
    the stage name itself when it names no transform."""
    labels = [m.group(1).split("-")[0] for m in _TRANSFORM.finditer(stage_name)]
    return "+".join(dict.fromkeys(label for label in labels if label)) or stage_name


def literal_part(elements: list[bytes]) -> Part:
    """A part the driver holds itself (the impulse, an empty input)."""
    return Part(elements, len(elements), worker.digest(elements))


def committed(parts: list[Part]) -> list[tuple[int, int]]:
    """What the reading task checks its input lists against."""
    return [(p.count, p.digest) for p in parts]
