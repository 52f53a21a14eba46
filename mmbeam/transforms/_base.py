"""What every per-element mmbeam transform shares: keys, nulls, errors, metrics, concurrency.

:class:`ElementFn` runs a kernel on each element through a bounded window of futures (a thread
pool for CPU work, fsspec's event loop for I/O). It yields results as they complete, blocks only
while the window is full (that is the backpressure), and drains in ``finish_bundle``; each result
keeps its input's timestamp and window. :class:`ElementTransform` is the public side: the
``on_error`` policy, ``keyed=True`` and ``.with_exception_handling()``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import os
import threading
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import typehints
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.errors import ConfigError, StageError
from mmbeam.ops.fetch import check_on_error

__all__ = [
    "FAILED_TAG",
    "ElementFn",
    "ElementTransform",
    "FailedRecord",
    "KernelFn",
    "check_connections",
    "cpu_pool",
]

FAILED_TAG = "failed"


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


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def cpu_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide thread pool for CPU kernels (Pillow and OpenCV release the GIL)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="mmbeam-cpu"
            )
            _pool_pid = os.getpid()
        return _pool


class ElementFn(beam.DoFn):
    """Base DoFn: ``submit(value)`` returns a future; subclasses say what the kernel is."""

    def __init__(self, stage: str, on_error: str, keyed: bool, failures: bool, window: int):
        self.stage = stage
        self.on_error = on_error
        self.keyed = keyed
        self.failures = failures
        self.window = max(1, window)

    def submit(self, value: Any, key: Any) -> concurrent.futures.Future:
        """Start the work for one value (``key`` is None unless keyed); the future holds its
        result or its exception."""
        raise NotImplementedError

    def size_of(self, result: Any) -> int:
        """Bytes of a result, for the ``bytes`` counter (0 when not meaningful)."""
        if isinstance(result, (bytes, bytearray)):
            return len(result)
        return int(getattr(result, "nbytes", 0))

    def setup(self):
        self._ok = Metrics.counter(self.stage, "succeeded")
        self._failed = Metrics.counter(self.stage, "failed")
        self._nulls = Metrics.counter(self.stage, "nulls")
        self._bytes = Metrics.counter(self.stage, "bytes")

    def start_bundle(self):
        self._inflight: collections.deque = collections.deque()

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        try:
            key, value = self._split(element)
        except StageError as err:
            yield from self._failure(element, None, err, timestamp, window)
            return
        if value is None:  # a null stays null (for example after a download with on_error="null")
            yield WindowedValue(element, timestamp, (window,))
            return
        yield from self._drain(self.window - 1)  # make room first: never more than `window`
        try:
            future = self.submit(value, key)
        except Exception as exc:  # noqa: BLE001 - a bad argument for this element, not a crash
            future = concurrent.futures.Future()
            future.set_exception(exc)
        self._inflight.append((future, element, key, timestamp, window))

    def finish_bundle(self):
        yield from self._drain(0)

    def _split(self, element):
        if not self.keyed:
            return None, element
        if not (isinstance(element, tuple) and len(element) == 2):
            raise StageError(f"keyed=True expects (key, value) pairs, got {type(element).__name__}")
        return element

    def _drain(self, limit: int):
        """Yield finished results; block on the oldest while more than ``limit`` are in flight."""
        inflight = self._inflight
        while inflight:
            if len(inflight) > limit:
                concurrent.futures.wait([f for f, *_ in inflight], return_when="FIRST_COMPLETED")
            done = [entry for entry in inflight if entry[0].done()]
            if not done:
                return
            for entry in done:
                inflight.remove(entry)
                yield from self._emit(*entry)
            if len(inflight) <= limit:
                return

    def _emit(self, future, element, key, timestamp, window):
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - routed by the on_error policy below
            yield from self._failure(element, key, exc, timestamp, window)
            return
        self._ok.inc()
        self._bytes.inc(self.size_of(result))
        yield WindowedValue((key, result) if self.keyed else result, timestamp, (window,))

    def _failure(self, element, key, exc, timestamp, window):
        self._failed.inc()
        err = exc if isinstance(exc, StageError) else StageError(f"{type(exc).__name__}: {exc}")
        err = err.located(self.stage, element)
        if self.failures:
            record = FailedRecord(element, self.stage, str(err))
            yield beam.pvalue.TaggedOutput(FAILED_TAG, WindowedValue(record, timestamp, (window,)))
        elif self.on_error == "null":
            self._nulls.inc()
            yield WindowedValue((key, None) if self.keyed else None, timestamp, (window,))
        else:
            raise err from exc


class ElementTransform(beam.PTransform):
    """Base of the per-element transforms: ``on_error``, ``keyed`` and exception handling.

    ``on_error="raise"`` fails the pipeline with an error naming the element, the stage and the
    cause; ``"null"`` emits None (counted in the stage's ``nulls`` metric).
    ``.with_exception_handling()`` makes the transform return ``(good, failed)`` where ``failed``
    holds a :class:`FailedRecord` per element that failed.
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

    def make_fn(self) -> ElementFn:
        raise NotImplementedError

    def output_type(self, input_type: Any) -> Any:
        """The element type hint of the good output, given the input PCollection's."""
        value = typehints.Optional[self.value_type] if self.value_type is not Any else Any
        if not self.keyed:
            return value
        pair = isinstance(input_type, typehints.TupleConstraint)
        key = input_type.tuple_types[0] if pair and len(input_type.tuple_types) == 2 else Any
        return typehints.Tuple[key, value]

    def expand(self, pcoll):
        fn = self.make_fn()
        out = self.output_type(pcoll.element_type)
        if not self._failures:
            return pcoll | beam.ParDo(fn).with_output_types(out)
        tagged = beam.ParDo(fn).with_output_types(out, **{FAILED_TAG: FailedRecord})
        results = pcoll | tagged.with_outputs(FAILED_TAG, main="good")
        return results.good, results[FAILED_TAG]


class KernelFn(ElementFn):
    """Runs a pure CPU kernel (a picklable callable, e.g. a ``functools.partial`` of an op) on
    the process thread pool, keeping up to ``window`` elements in flight."""

    def __init__(self, kernel, stage: str, on_error: str, keyed: bool, failures: bool, window=None):
        super().__init__(stage, on_error, keyed, failures, window or 2 * (os.cpu_count() or 2))
        self.kernel = kernel

    def submit(self, value, key):
        return cpu_pool().submit(self.kernel, value)
