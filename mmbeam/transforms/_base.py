"""What every per-element mmbeam transform shares: keys, nulls, errors, metrics, concurrency.

:class:`ElementFn` runs a :class:`~mmbeam.ops.rowchain.RowChain` (one step for a plain
transform, several for a fused one) on each element through a bounded window of rows in flight:
I/O on fsspec's event loop, CPU work on the shared thread pool. Rows complete on their own
(callbacks, not the bundle thread), results are yielded as they complete, the bundle thread
blocks only while the window is full (that is the backpressure), and ``finish_bundle`` drains.
The window is chosen by an autotune controller from each row's measured seconds (waiting vs.
working) and bytes, under ``--memory_budget``; it shows as the ``window`` distribution metric
of the stage and in debug logs. Each result keeps its input's timestamp and window.
:class:`ElementTransform` is the public side: ``on_error``, ``keyed=True`` and
``.with_exception_handling()``.
"""

from __future__ import annotations

import collections
import copy
import functools
import logging
import threading
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import typehints
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.autotune import ROW_SMOOTHING, BatchSizeController, Measurement
from mmbeam.errors import ConfigError, StageError
from mmbeam.ops.fetch import check_on_error
from mmbeam.ops.pool import cpu_pool, cpu_workers
from mmbeam.ops.rowchain import RowChain, Step
from mmbeam.progress import get_progress
from mmbeam.transforms.options import memory_budget_of

__all__ = [
    "FAILED_TAG",
    "ElementFn",
    "ElementTransform",
    "FailedRecord",
    "check_connections",
    "cpu_pool",
    "cpu_step",
]

FAILED_TAG = "failed"
MAX_WINDOW = 512
_RETUNE_EVERY = 8
_log = logging.getLogger("mmbeam.autotune")


class FailedRecord(NamedTuple):
    """One element that failed: the input as it arrived, the stage, and the error text."""

    element: Any
    stage: str
    error: str


def check_connections(max_connections: int) -> int:
    """Validate a ``max_connections`` argument when the pipeline is built."""
    valid = isinstance(max_connections, int) and not isinstance(max_connections, bool)
    if not valid or max_connections < 1:
        raise ConfigError(f"max_connections must be a positive int, got {max_connections!r}")
    return max_connections


class ElementFn(beam.DoFn):
    """Runs ``chain`` on every element with an autotuned window of rows in flight.

    ``failures=True`` sends rows that failed to the ``failed`` output as FailedRecords;
    otherwise they raise (a step with ``nullable`` set has already turned its failure into a
    None). ``memory_budget`` caps the bytes the window may hold.

    ``parts`` (set by :mod:`mmbeam.runners.fusion`) gives the index of the first step of each
    ElementFn this one was fused from, so it behaves as those did one after another: a failure
    in part ``i > 0`` names that part's input, only the last part's failures go to the
    ``failed`` output, and each part's last stage counts ``bytes``. Every part after the first
    is a single step.
    """

    def __init__(self, chain: RowChain, *, keyed: bool, failures: bool, memory_budget: int,
                 max_window: int = MAX_WINDOW, parts: tuple[int, ...] = (0,)):
        self.chain = chain
        self.keyed = keyed
        self.failures = failures
        self.memory_budget = memory_budget
        self.max_window = max_window
        self.parts = parts
        self.stage = chain.stages[-1] if len(chain.stages) == 1 else "+".join(chain.stages)

    def setup(self):
        stages = self._stages = self.chain.stages
        self._ok = {s: Metrics.counter(s, "succeeded") for s in stages}
        self._failed = {s: Metrics.counter(s, "failed") for s in stages}
        self._nulls = {s: Metrics.counter(s, "nulls") for s in stages}
        # the last step of each part counts the bytes of its output
        self._ends = {end - 1: Metrics.counter(stages[end - 1], "bytes")
                      for end in (*self.parts[1:], len(stages))}
        self._window_metric = Metrics.distribution(self.stage, "window")
        steps = self.chain.steps
        io_only = all(s.kind == "io" for s in steps)
        # what the window must keep busy: the connections of an I/O stage, else the CPU pool
        self._workers = max(s.limit or 1 for s in steps) if io_only else cpu_workers()
        self._io_only = io_only
        first = min(self.max_window, self.chain.first_window())
        self._floor = min(first, self.chain.min_window())
        self.controller = BatchSizeController(
            name=self.stage, memory_budget=self.memory_budget, min_size=1,
            max_size=max(first, self.max_window), initial=first,
            smoothing=ROW_SMOOTHING).register()
        self.window = first
        self._progress = get_progress()

    def start_bundle(self):
        self._done: collections.deque = collections.deque()
        self._ready = threading.Semaphore(0)
        self._held = 0
        self._completed = 0
        # rows and bytes that went through each step: counted here, added to the Beam counters
        # once per bundle (a counter's inc looks up the bundle's tracker on every call)
        self._ok_rows = [0] * len(self._stages)
        self._end_bytes = dict.fromkeys(self._ends, 0)

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        try:
            key, value = self._split(element)
        except StageError as err:
            yield from self._failure(element, 0, err, timestamp, window)
            return
        if value is None:  # a null stays null (for example after a download with on_error="null")
            yield WindowedValue(element, timestamp, (window,))
            return
        yield from self._drain(self.window - 1)  # make room first: never more than `window`
        entry = (element, key, timestamp, window)
        future = self.chain.submit(value, key, element)
        self._held += 1
        future.add_done_callback(lambda f, e=entry: self._completes(f, e))

    def _completes(self, future, entry):
        self._done.append((future, entry))
        self._ready.release()

    def finish_bundle(self):
        yield from self._drain(0)
        for index, rows in enumerate(self._ok_rows):
            if rows:
                self._ok[self._stages[index]].inc(rows)
        for index, size in self._end_bytes.items():
            if size:
                self._ends[index].inc(size)

    def _split(self, element):
        if not self.keyed:
            return None, element
        if not (isinstance(element, tuple) and len(element) == 2):
            raise StageError(f"keyed=True expects (key, value) pairs, got {type(element).__name__}")
        return element

    def _drain(self, limit: int):
        """Yield finished rows; block for the next one while more than ``limit`` are held."""
        while self._held:
            if not self._ready.acquire(blocking=self._held > limit):
                return
            future, entry = self._done.popleft()
            self._held -= 1
            yield from self._emit(future.result(), *entry)

    def _emit(self, outcome, element, key, timestamp, window):
        self._learn(outcome)
        stages = self._stages
        ran = len(outcome.sizes)  # steps that succeeded; stages[ran] failed or nulled the row
        ok_rows, end_bytes = self._ok_rows, self._end_bytes
        for index in range(ran):
            ok_rows[index] += 1
            if index in end_bytes:
                end_bytes[index] += outcome.sizes[index]
        if outcome.error is not None:
            self._failed[stages[ran]].inc()
            self._progress.update(stages[-1], failed=1)
            err = outcome.error
            if ran > 0 and ran in self.parts:  # a fused part: named by its own input
                element = (key, outcome.failed_input) if self.keyed else outcome.failed_input
                err = err.located(err.stage, element)
            yield from self._failure(element, ran, err, timestamp, window)
            return
        if outcome.nulled is not None:
            self._failed[stages[ran]].inc()
            self._nulls[stages[ran]].inc()
        self._progress.update(stages[-1], done=1, failed=int(outcome.nulled is not None),
                              inflight_bytes=self._inflight_bytes())
        result = outcome.value
        yield WindowedValue((key, result) if self.keyed else result, timestamp, (window,))

    def _learn(self, outcome):
        """Feed the row's cost to the controller; every few rows, pick the window again."""
        seconds = outcome.io_seconds + outcome.cpu_seconds
        self.controller.record(Measurement(
            1, seconds=seconds, busy_seconds=outcome.cpu_seconds or outcome.io_seconds,
            peak_bytes=outcome.peak_bytes))
        self._completed += 1
        if self._completed % _RETUNE_EVERY == 0:
            window = self.controller.inflight(self._workers, floor=self._floor,
                                              headroom=1.5 if self._io_only else 2.0)
            if window != self.window:
                _log.debug("%s: window %d -> %d (%s)", self.stage, self.window, window,
                           self.controller.describe())
                self.window = window
            self._window_metric.update(window)

    def _inflight_bytes(self) -> int:
        return int(self._held * (self.controller.peak_bytes_per_element or 0))

    def _failure(self, element, step, exc, timestamp, window):
        """Route a failure of step ``step``: to the failed output if it is in the last part
        and ``failures`` is set, else raise."""
        err = exc if isinstance(exc, StageError) else StageError(f"{type(exc).__name__}: {exc}")
        if err.stage is None:
            stage = self._stages[step]
            self._failed[stage].inc()
            err = err.located(stage, element)
        if self.failures and step >= self.parts[-1]:
            record = FailedRecord(element, err.stage, str(err))
            yield beam.pvalue.TaggedOutput(FAILED_TAG, WindowedValue(record, timestamp, (window,)))
        else:
            raise err


class ElementTransform(beam.PTransform):
    """Base of the per-element transforms: ``on_error``, ``keyed`` and exception handling.

    ``on_error="raise"`` fails the pipeline with an error naming the element, the stage and the
    cause; ``"null"`` emits None (counted in the stage's ``nulls`` metric).
    ``.with_exception_handling()`` makes the transform return ``(good, failed)`` where ``failed``
    holds a :class:`FailedRecord` per element that failed. Subclasses say what one element's
    work is with :meth:`step`; :class:`~mmbeam.transforms.fuse.Fuse` chains those steps.
    """

    stage = "Element"
    #: type of a successful output value; the output type hint (and so the coder a portable
    #: runner uses) is ``Optional[value_type]``, paired with the input's key type when keyed
    value_type: Any = Any

    def __init__(self, *, on_error: str = "raise", keyed: bool = False, label: str | None = None):
        super().__init__(label)
        self.on_error = check_on_error(on_error)
        if not isinstance(keyed, bool):
            raise ConfigError(f"keyed must be True or False, got {keyed!r}")
        self.keyed = keyed
        self._failures = False

    def with_exception_handling(self) -> ElementTransform:
        """A copy that returns ``(good, failed)`` instead of raising or nulling."""
        clone = copy.copy(self)
        clone._failures = True
        return clone

    def step(self, nullable: bool) -> Step:
        """This transform's work on one value as a row step."""
        raise NotImplementedError

    def output_type(self, input_type: Any) -> Any:
        """The element type hint of the good output, given the input PCollection's."""
        value = typehints.Optional[self.value_type] if self.value_type is not Any else Any
        if not self.keyed:
            return value
        pair = isinstance(input_type, typehints.TupleConstraint)
        key = input_type.tuple_types[0] if pair and len(input_type.tuple_types) == 2 else Any
        return typehints.Tuple[key, value]

    def make_fn(self, memory_budget: int | None = None) -> ElementFn:
        from mmbeam.autotune import default_memory_budget

        nullable = self.on_error == "null" and not self._failures
        return ElementFn(RowChain([self.step(nullable)]), keyed=self.keyed,
                         failures=self._failures,
                         memory_budget=memory_budget or default_memory_budget())

    def apply_pardo(self, pcoll, pardo: beam.ParDo):
        """Apply this transform's ParDo with its output types; ``(good, failed)`` with
        exception handling."""
        out = self.output_type(pcoll.element_type)
        if not self._failures:
            return pcoll | pardo.with_output_types(out)
        tagged = pardo.with_output_types(out, **{FAILED_TAG: FailedRecord})
        results = pcoll | tagged.with_outputs(FAILED_TAG, main="good")
        return results.good, results[FAILED_TAG]

    def expand(self, pcoll):
        return self.apply_pardo(pcoll, beam.ParDo(self.make_fn(memory_budget_of(pcoll.pipeline))))


def cpu_step(stage: str, kernel, nullable: bool) -> Step:
    """A CPU step running ``kernel(value)`` (a picklable callable) on the shared pool."""
    return Step(stage, "cpu", functools.partial(_call, kernel), nullable)


def _call(kernel, value, key):
    return kernel(value)
