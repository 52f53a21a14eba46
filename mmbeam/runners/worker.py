"""The worker side of mmbeam's distributed runners: Beam's own SDK harness, fed from task arguments.

A task runs one fused stage (see :mod:`mmbeam.runners.core`) over a list of encoded elements with
Beam's ``EmbeddedWorkerHandler`` (an in-memory SDK worker around ``bundle_processor``), so ParDo
outputs, ``finish_bundle`` output, windowing, side inputs, state and SDF reads behave exactly as
on the FnApiRunner. Handlers are cached per process, per run and per stage, so ``DoFn.setup``
runs once per worker process and ``teardown`` runs when the run ends (:func:`end_run`).

Elements travel as lists of individually encoded (nested) elements, so the driver can slice them
into tasks of any size without decoding them. Every list a task produces is committed with its
length and a CRC (:func:`digest`); every task checks the lists it reads against what the driver
committed, and raises :class:`~mmbeam.errors.LostDataError` if an engine recomputed one
differently after a worker was lost (a non-deterministic DoFn, e.g. Reshuffle's random keys).
Nothing here imports Dask or Ray.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from apache_beam.coders import coder_impl
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_fn_api_pb2, beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.portability.fn_api_runner.execution import (
    GroupingBuffer,
    WindowGroupingBuffer,
)
from apache_beam.runners.worker import data_plane
from apache_beam.utils import proto_utils

from mmbeam.beam_internals import grouped_keys, set_state_sampling_period
from mmbeam.errors import LostDataError, UnsupportedError
from mmbeam.transforms import shared_model

__all__ = [
    "OutputSpec",
    "SideInputSpec",
    "StagePlan",
    "TaskResult",
    "check_inputs",
    "digest",
    "end_run",
    "group_shards",
    "provided",
    "run_task",
    "side_input_state",
    "yield_cpu",
]


@dataclass
class OutputSpec:
    """One data output of a stage: where it goes and how the runner partitions it.

    ``key_coder`` set means hash-partition by the element's key into ``shards`` lists (the input
    of a GroupByKey, or of a stateful DoFn); otherwise the output is one list.
    """

    transform_id: str
    buffer_id: bytes
    coder: Any
    key_coder: Any = None
    shards: int = 1


@dataclass
class SideInputSpec:
    """A side input of one ParDo in a stage: its tag, access pattern and element coder."""

    transform_id: str
    tag: str
    access_pattern: bytes
    coder: Any


@dataclass
class StagePlan:
    """Everything a worker needs to run bundles of one stage; shipped once per stage."""

    run_id: str
    stage_name: str
    descriptor: bytes
    outputs: list[OutputSpec]
    #: (transform_id, input_id) -> the data-input transform feeding it (for SDF residuals)
    input_for: dict[tuple[str, str], str] = field(default_factory=dict)
    input_transforms: list[str] = field(default_factory=list)
    #: a stage re-run after lost data gets fresh DoFn instances and state in every process
    attempt: int = 0
    #: the CPU niceness of the threads running this stage's tasks: a model's preparation
    #: yields the CPU to the model's own pool on the same machine (see :func:`yield_cpu`)
    nice: int = 0
    #: tokens of values the driver put in the engine for this stage (the first task arguments)
    provided: list[str] = field(default_factory=list)


@dataclass
class TaskResult:
    """What a task tells the driver: per-output element counts and digests, and its cost (data
    stays put)."""

    counts: list[list[int]]
    digests: list[list[int]]
    monitoring_infos: list[bytes]
    elements: int
    seconds: float
    input_bytes: int
    output_bytes: int
    worker: str
    #: encoded bytes of each output list (as ``counts``), for the runner's queue accounting
    part_bytes: list[list[int]] = field(default_factory=list)
    #: sizes of the model batches the task ran, and the elements its model wants next (0: none)
    batches: list[int] = field(default_factory=list)
    batch_hint: int = 0


#: Beam's state sampling period in task processes: a task's end waits for the sampler's sleep
STATE_SAMPLING_MS = 10


class _TaskChannel(data_plane.InMemoryDataChannel):
    """The SDK worker's side of a task's in-memory data plane, copying each element once.

    Beam's ``InMemoryDataChannel`` buffers what one side writes, wraps it in protobuf
    messages and copies their ``data`` at every read: a task's input was copied six times on
    its way to the DoFns, its output four times (~10 ms each for a model task of 20 MB of
    images, on the model's own CPU). Here inputs go in as one message per large element
    (small ones joined), read once by the bundle processor, and outputs come back as the
    written bytes (:attr:`produced`). Timers still go to :meth:`inverse`, as in Beam.
    """

    #: elements smaller than this are joined into chunks of about this size
    CHUNK_BYTES = 1 << 16

    def __init__(self) -> None:
        super().__init__()
        self.produced: list[tuple[str, str, bytes]] = []  # (instruction, transform, data)

    def feed(self, instruction_id: str, transform_id: str, elements: list[bytes]) -> None:
        """Queue encoded ``elements`` as ``transform_id``'s input for the instruction."""
        def message(data: bytes) -> Any:
            return beam_fn_api_pb2.Elements.Data(instruction_id=instruction_id,
                                                 transform_id=transform_id, data=data)

        small: list[bytes] = []
        size = 0
        for element in elements:
            if len(element) >= self.CHUNK_BYTES:
                self._inputs.append(message(element))
                continue
            small.append(element)
            size += len(element)
            if size >= self.CHUNK_BYTES:
                self._inputs.append(message(b"".join(small)))
                small, size = [], 0
        if small:
            self._inputs.append(message(b"".join(small)))

    def input_elements(self, instruction_id, unused_expected_inputs, abort_callback=None):
        """The instruction's queued input messages (their data unread: a read copies it)."""
        mine = [e for e in self._inputs if e.instruction_id == instruction_id]
        self._inputs = [e for e in self._inputs if e.instruction_id != instruction_id]
        return iter(mine)

    def output_stream(self, instruction_id, transform_id):
        """A stream whose flushed bytes land in :attr:`produced`."""
        def keep(data: bytes) -> None:
            if data:
                self.produced.append((instruction_id, transform_id, data))

        return data_plane.ClosableOutputStream.create(keep, keep, 0)

    def take(self, instruction_id: str) -> list[tuple[str, bytes]]:
        """The instruction's outputs as (transform, data); its outputs and any input it left
        unread (a bundle that failed early) are dropped from the channel."""
        mine = [(t, d) for i, t, d in self.produced if i == instruction_id]
        self.produced = [p for p in self.produced if p[0] != instruction_id]
        self._inputs = [e for e in self._inputs if e.instruction_id != instruction_id]
        return mine


class _StageHandlers:
    """Per process, run and stage: one state servicer and a pool of SDK workers."""

    def __init__(self, plan: StagePlan):
        set_state_sampling_period(STATE_SAMPLING_MS)
        self.descriptor = beam_fn_api_pb2.ProcessBundleDescriptor.FromString(plan.descriptor)
        self.state = worker_handlers.StateServicer()
        self.committed_side_inputs = False
        self._free: list[Any] = []
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def acquire(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
        manager = SimpleNamespace(_process_bundle_descriptors={self.descriptor.id: self.descriptor})
        handler = worker_handlers.EmbeddedWorkerHandler(None, self.state, None, manager)
        handler.task_channel = _TaskChannel()
        handler.bundle_processor_cache.data_channel_factory = \
            data_plane.InMemoryDataChannelFactory(handler.task_channel)
        with self._lock:
            self._all.append(handler)
        return handler

    def release(self, handler: Any) -> None:
        with self._lock:
            self._free.append(handler)

    def shutdown(self) -> None:
        for handler in self._all:
            handler.stop_worker()  # DoFn.teardown
        self._all.clear()
        self._free.clear()


_runs: dict[str, dict[str, _StageHandlers]] = {}
_runs_lock = threading.Lock()


def _handlers(plan: StagePlan) -> _StageHandlers:
    with _runs_lock:
        stages = _runs.setdefault(plan.run_id, {})
        key = f"{plan.stage_name}#{plan.attempt}"
        if key not in stages:
            stages[key] = _StageHandlers(plan)
        return stages[key]


#: run id -> token -> a value the driver provided (see ``DistributedRunner.provide``)
_provided: dict[str, dict[str, Any]] = {}


def provided(token: str) -> Any:
    """The value the driver provided to this stage under ``token`` (for a DoFn to read)."""
    with _runs_lock:
        for values in _provided.values():
            if token in values:
                return values[token]
    raise LookupError(f"no value provided under token {token!r} in this worker process")


def end_run(run_id: str) -> int:
    """Tear down every DoFn of a run in this process and drop its state; returns stages closed."""
    with _runs_lock:
        stages = _runs.pop(run_id, {})
        _provided.pop(run_id, None)
    for handlers in stages.values():
        handlers.shutdown()
    return len(stages)


def _process_nice() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0


#: the process's niceness when this module was imported, before any of its threads was lowered
#: (a Ray actor runs its tasks on its main thread: reading the process's niceness after that
#: thread was lowered would lower it again, task after task)
_PROCESS_NICE = _process_nice()


def yield_cpu(nice: int) -> None:
    """Lower this thread's CPU priority to ``nice`` steps below its process's (at most 19;
    never raised; Linux threads have their own niceness). Relative, because engines start
    their workers niced already (Ray's at 15). Preparation tasks run so when a model's pool
    shares their machine: the model, the slowest stage, gets a CPU whenever it needs one, and
    the preparation every cycle left over (backpressure keeps it from running ahead)."""
    try:
        target = min(19, _PROCESS_NICE + nice)
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except (AttributeError, OSError):  # not Linux or not allowed: run at the usual priority
        pass


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def digest(elements: list[bytes]) -> int:
    """CRC32 of a list of (self-delimiting) encoded elements: with the length, its identity."""
    crc = 0
    for element in elements:
        crc = zlib.crc32(element, crc)
    return crc


def check_inputs(where: str, lists: tuple[list[bytes], ...],
                 committed: list[tuple[int, int]]) -> None:
    """Refuse input lists that differ from what their producers committed to the driver."""
    for i, (elements, (count, crc)) in enumerate(zip(lists, committed, strict=True)):
        if len(elements) != count or digest(elements) != crc:
            raise LostDataError(
                f"{where}: input list {i} has {len(elements)} elements, digest "
                f"{digest(elements):08x}, but its producer committed {count} elements, digest "
                f"{crc:08x}: the engine recomputed it after a worker was lost")


def run_task(plan: StagePlan, input_transform: str, slices: list[tuple[int, int, int | None]],
             committed: list[tuple[int, int]], n_side: int, pieces: int, *args: Any) -> Any:
    """Run one bundle of ``plan``'s stage; returns ``(TaskResult, *output lists)`` (or the
    result alone when the stage has no outputs).

    ``args`` holds the values ``plan.provided`` names, ``n_side`` side-input state lists, then
    element lists, each checked against its ``committed`` (length, digest); ``slices`` picks
    ``(arg index, start, stop)`` ranges of those lists as the bundle's input. Each output not
    partitioned by key comes back as ``pieces`` lists (consecutive, of even length), so a
    consumer can take part of it without the whole (a Dask worker copies a whole list it
    reads from another worker, and frees it only when every element was read).
    """
    start = time.perf_counter()
    if plan.nice:
        yield_cpu(plan.nice)
    if plan.provided:
        with _runs_lock:
            _provided.setdefault(plan.run_id, {}).update(zip(plan.provided, args, strict=False))
        args = args[len(plan.provided):]
    side, lists = args[:n_side], args[n_side:]
    check_inputs(f"stage {plan.stage_name!r}", lists, committed)
    handlers = _handlers(plan)
    if n_side and not handlers.committed_side_inputs:
        with handlers._lock:
            if not handlers.committed_side_inputs:
                for entries in side:
                    for key, data in entries:
                        handlers.state.append_raw(beam_fn_api_pb2.StateKey.FromString(key), data)
                handlers.committed_side_inputs = True
    elements = [e for i, a, b in slices for e in itertools.islice(lists[i], a, b)]
    in_bytes = sum(map(len, elements))
    produced: dict[str, list[bytes]] = {o.transform_id: [] for o in plan.outputs}
    infos: list[bytes] = []
    handler = handlers.acquire()
    shared_model.begin_task()
    try:
        pending = {input_transform: elements}
        while pending:
            pending = _one_bundle(handler, handlers.descriptor.id, plan, pending, produced, infos)
    finally:
        batches, hint = shared_model.end_task()
        handlers.release(handler)
    outputs: list[list[bytes]] = []
    counts: list[list[int]] = []
    digests: list[list[int]] = []
    part_bytes: list[list[int]] = []
    for spec in plan.outputs:
        parts = _split(spec, produced[spec.transform_id], pieces)
        outputs.extend(parts)
        counts.append([len(p) for p in parts])
        digests.append([digest(p) for p in parts])
        part_bytes.append([sum(map(len, p)) for p in parts])
    result = TaskResult(counts, digests, infos, len(elements), time.perf_counter() - start,
                        in_bytes, sum(map(sum, part_bytes)), worker_name(), part_bytes, batches,
                        hint)
    return (result, *outputs) if outputs else result


def _one_bundle(handler: Any, descriptor_id: str, plan: StagePlan, inputs: dict[str, list[bytes]],
                produced: dict[str, list[bytes]], infos: list[bytes]) -> dict[str, list[bytes]]:
    """One ProcessBundle instruction; returns deferred inputs (SDF residuals) to run next."""
    instruction = f"bundle-{uuid.uuid4().hex}"
    channel = handler.task_channel
    for transform_id in plan.input_transforms:
        channel.feed(instruction, transform_id, inputs.get(transform_id, []))
    request = beam_fn_api_pb2.InstructionRequest(
        instruction_id=instruction,
        process_bundle=beam_fn_api_pb2.ProcessBundleRequest(process_bundle_descriptor_id=descriptor_id))
    response = handler.push(request).get()
    for transform_id, data in channel.take(instruction):
        produced[transform_id].append(data)
    if any(isinstance(out, beam_fn_api_pb2.Elements.Timers)
           for out in channel.inverse().input_elements(instruction, [])):
        raise UnsupportedError(f"stage {plan.stage_name!r} sets timers, which mmbeam's "
                               "distributed runners do not support yet; use the local runner")
    if response.error:
        raise RuntimeError(response.error)
    infos.extend(m.SerializeToString() for m in response.process_bundle.monitoring_infos)
    if response.process_bundle.requires_finalization:
        done = handler.push(beam_fn_api_pb2.InstructionRequest(
            finalize_bundle=beam_fn_api_pb2.FinalizeBundleRequest(instruction_id=instruction))).get()
        if done.error:
            raise RuntimeError(done.error)
    deferred: dict[str, list[bytes]] = {}
    for root in response.process_bundle.residual_roots:
        app = root.application
        read = plan.input_for[(app.transform_id, app.input_id)]
        deferred.setdefault(read, []).append(app.element)
    return deferred


def _split(spec: OutputSpec, chunks: list[bytes], pieces: int = 1) -> list[list[bytes]]:
    """Chunks from the data channel as individually encoded elements: hash-sharded if keyed,
    else in ``pieces`` consecutive lists of even length."""
    impl = spec.coder.get_impl()
    if spec.key_coder is None:
        elements = [element for _, element in _elements(impl, chunks)]
        bounds = [len(elements) * i // pieces for i in range(pieces + 1)]
        return [elements[a:b] for a, b in itertools.pairwise(bounds)]
    key_impl = spec.key_coder.get_impl()
    shards: list[list[bytes]] = [[] for _ in range(spec.shards)]
    for value, element in _elements(impl, chunks):
        key = key_impl.encode(value.value[0])
        shards[zlib.crc32(key) % spec.shards].append(element)
    return shards


def _elements(impl: Any, chunks: list[bytes]) -> Any:
    """(value, its encoded bytes) of each element in ``chunks``: the bytes are cut from the
    chunk where decoding found its end, not encoded again."""
    for chunk in chunks:
        stream = coder_impl.create_InputStream(chunk)
        end = len(chunk)
        while stream.size():
            start = end - stream.size()
            value = impl.decode_from_stream(stream, True)
            yield value, chunk[start:end - stream.size()]


def group_shards(coders_and_windowing: tuple, committed: list[tuple[int, int]],
                 *shards: list[bytes]) -> tuple[tuple[int, int], list[bytes]]:
    """GroupByKey of one hash shard with Beam's ``GroupingBuffer`` (windows and triggers
    included); one encoded chunk per key, so a key never spans two tasks downstream. Returns
    the output's (length, digest) and the output."""
    check_inputs("GroupByKey", shards, committed)
    buffer = GroupingBuffer(*coders_and_windowing)
    for shard in shards:
        if shard:
            buffer.append(b"".join(shard))
    keys = grouped_keys(buffer)  # one output stream per key
    grouped = [part[0] for part in buffer.partition(keys) if part[0]] if keys else []
    return (len(grouped), digest(grouped)), grouped


def side_input_state(transform_id: str, tag: str, access_pattern: bytes, coder: Any,
                     committed: list[tuple[int, int]],
                     *lists: list[bytes]) -> list[tuple[bytes, bytes]]:
    """A side input's state entries (as the FnApiRunner commits them), computed once per run."""
    check_inputs(f"side input {tag!r} of {transform_id!r}", lists, committed)
    spec = proto_utils.parse_Bytes(access_pattern, beam_runner_api_pb2.FunctionSpec)
    grouped = WindowGroupingBuffer(spec, coder)
    for chunk in lists:
        if chunk:
            grouped.append(b"".join(chunk))
    entries: list[tuple[bytes, bytes]] = []
    state_key = beam_fn_api_pb2.StateKey
    if spec.urn == common_urns.side_inputs.ITERABLE.urn:
        for _, window, data, _ in grouped.encoded_items():
            key = state_key(iterable_side_input=state_key.IterableSideInput(
                transform_id=transform_id, side_input_id=tag, window=window))
            entries.append((key.SerializeToString(), data))
    elif spec.urn == common_urns.side_inputs.MULTIMAP.urn:
        for key_bytes, window, data, count in grouped.encoded_items():
            entries.append((state_key(multimap_side_input=state_key.MultimapSideInput(
                transform_id=transform_id, side_input_id=tag, window=window,
                key=key_bytes)).SerializeToString(), data))
            entries.append((state_key(multimap_keys_side_input=state_key.MultimapKeysSideInput(
                transform_id=transform_id, side_input_id=tag,
                window=window)).SerializeToString(), key_bytes))
            entries.append((state_key(
                multimap_keys_values_side_input=state_key.MultimapKeysValuesSideInput(
                    transform_id=transform_id, side_input_id=tag, window=window)
            ).SerializeToString(), key_bytes + struct.pack(">i", count) + data))
    else:
        raise UnsupportedError(f"side input access pattern {spec.urn!r} is not supported")
    return entries
