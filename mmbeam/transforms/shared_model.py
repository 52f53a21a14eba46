"""Load a model once per worker process and run it on batches: what RunModel and UDFs share.

- :class:`Batch` is what a model's ``__call__`` receives: a list of the rows' values with
  ``to_pylist()``, ``to_numpy()`` and ``to_arrow()``.
- :func:`model_protocol` says how to load and call what the user gave: an ``@mmbeam.udf``, a
  class (``__init__`` loads, ``__call__`` runs), a Beam-style handler (``load_model()`` and
  ``run_inference(batch, model)``) or a plain function.
- :func:`acquire` returns this process's :class:`SharedModel` for a token fixed when the pipeline
  was built (as Beam's ``apache_beam.utils.shared.Shared``): every DoFn copy, bundle and thread
  in a process shares it, the first user loads the model; after the last DoFn releases it (in
  ``teardown``) it stays loaded among the ``MAX_IDLE`` most recently released, and a fork starts
  afresh.
- :class:`BatchInvoker` runs one batch, checks one output per row, and when a batch raises,
  reruns its rows one by one so that only the bad rows fail.
- :func:`begin_task` / :func:`end_task` let a cluster runner's task learn the batch sizes its
  models ran and the size they want next, so the runner sizes the model's tasks to whole
  batches (a batch is never cut short at a task boundary, unlike Beam's ``BatchElements``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mmbeam.autotune import BatchSizeController
from mmbeam.errors import ConfigError, UdfError

__all__ = [
    "Batch",
    "BatchInvoker",
    "SharedModel",
    "acquire",
    "begin_task",
    "check_batch_size",
    "end_task",
    "instances",
    "loads_in_process",
    "model_protocol",
    "name_of",
    "new_token",
    "note_batch_hint",
    "release",
]


class Batch(list):
    """The values of one column for the rows of a batch, in row order (nulls are None)."""

    def __init__(self, values: Sequence[Any] = (), arrow: pa.Array | pa.ChunkedArray | None = None):
        super().__init__(values)
        self._arrow = arrow

    def to_pylist(self) -> list[Any]:
        """The batch's values as a list."""
        return list(self)

    def to_arrow(self) -> pa.Array | pa.ChunkedArray:
        """The batch's values as an Arrow array."""
        if self._arrow is None:
            self._arrow = pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in self])
        return self._arrow

    def to_numpy(self) -> np.ndarray:
        """One array: same-shaped arrays (images, tensors) stacked, scalars as a 1-D array."""
        if self and all(isinstance(v, np.ndarray) for v in self):
            if len({v.shape for v in self}) == 1:
                return np.stack(self)
            out = np.empty(len(self), dtype=object)
            out[:] = list(self)
            return out
        return np.asarray(self.to_arrow().to_numpy(zero_copy_only=False))

    def __reduce__(self):
        return (Batch, (list(self),))


def check_batch_size(batch_size: Any) -> int | None:
    """Validate a ``batch_size`` argument (None means autotuned) when the pipeline is built."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int or None (autotuned), "
                          f"got {batch_size!r}")
    return batch_size


# -- what to load and how to call it -------------------------------------------------------------
def model_protocol(model: Any, init_args: tuple = (),
                   init_kwargs: dict | None = None) -> tuple[Callable[[], Any],
                                                            Callable[[Any, list[Batch]], Any]]:
    """``(load, run)`` for ``model``: ``load()`` builds the instance, ``run(instance, columns)``
    returns its outputs for the batch whose input columns are ``columns``."""
    kwargs = dict(init_kwargs or {})
    if hasattr(model, "load_model") and hasattr(model, "run_inference"):
        if init_args or kwargs:
            raise ConfigError("init arguments go to a handler's constructor, not to RunModel")
        return model.load_model, lambda instance, cols: model.run_inference(cols[0], instance)
    if isinstance(model, type):
        return (lambda: model(*init_args, **kwargs)), (lambda instance, cols: instance(*cols))
    if callable(model):
        if init_args or kwargs:
            raise ConfigError(f"{name_of(model)} is a function; init arguments need a class")
        return (lambda: model), (lambda fn, cols: fn(*cols))
    raise ConfigError(f"RunModel needs a class, a function, an @mmbeam.udf or a handler with "
                      f"load_model() and run_inference(batch, model); got {model!r}")


def name_of(model: Any) -> str:
    """A short readable name for a model (its class or function name)."""
    return str(getattr(model, "__name__", None) or type(model).__name__)


def new_token(model: Any) -> str:
    """A key naming one model's instances in every worker process (fixed at build time)."""
    return f"{name_of(model)}-{uuid.uuid4().hex}"


# -- one instance per process ---------------------------------------------------------------------
_registry: dict[str, SharedModel] = {}
_registry_lock = threading.Lock()
_registry_pid = os.getpid()
_loads: dict[str, int] = {}
_idle_order: list[str] = []  # tokens of unheld models, least recently released first
MAX_IDLE = 4


class SharedModel:
    """The instances of one model in this process, loaded on first use.

    With ``concurrency=None`` one instance serves every thread at once. With ``concurrency=n``
    at most ``n`` instances exist and each serves one batch at a time (others wait).
    """

    def __init__(self, token: str, load: Callable[[], Any], concurrency: int | None):
        self.token = token
        self._load = load
        self._limit = concurrency
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._created = 0
        self._slots = threading.Semaphore(concurrency) if concurrency else None
        self.refs = 0
        self.controller: BatchSizeController | None = None

    def _new_instance(self) -> Any:
        instance = self._load()
        self._created += 1
        _loads[self.token] = _loads.get(self.token, 0) + 1
        return instance

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        """An instance for one batch (loads it on first use)."""
        if self._slots is None:
            with self._lock:
                if not self._idle:
                    self._idle.append(self._new_instance())
                instance = self._idle[0]
            yield instance
            return
        with self._slots:
            with self._lock:
                instance = self._idle.pop() if self._idle else self._new_instance()
            try:
                yield instance
            finally:
                with self._lock:
                    self._idle.append(instance)


def acquire(token: str, load: Callable[[], Any], concurrency: int | None = None) -> SharedModel:
    """This process's shared model for ``token`` (created on first call); call
    :func:`release` once per acquire."""
    global _registry_pid
    with _registry_lock:
        if _registry_pid != os.getpid():  # a forked child starts with no models
            _registry.clear()
            _loads.clear()
            _idle_order.clear()
            _registry_pid = os.getpid()
        shared = _registry.get(token)
        if shared is None:
            shared = _registry[token] = SharedModel(token, load, concurrency)
        shared.refs += 1
        return shared


def release(token: str) -> None:
    """Drop one reference. Up to ``MAX_IDLE`` models nobody holds stay loaded (so ``show()``
    then ``collect()`` loads once); beyond that the least recently released is freed."""
    with _registry_lock:
        shared = _registry.get(token)
        if shared is None:
            return
        shared.refs -= 1
        if shared.refs <= 0:
            _idle_order[:] = [t for t in _idle_order if t != token] + [token]
            while len(_idle_order) > MAX_IDLE:
                oldest = _idle_order.pop(0)
                if oldest in _registry and _registry[oldest].refs <= 0:
                    del _registry[oldest]


def instances(token: str) -> list[Any]:
    """The idle instances this process holds for ``token`` (for benchmarks and debugging)."""
    with _registry_lock:
        shared = _registry.get(token)
        return [] if shared is None else list(shared._idle)


def loads_in_process(token: str) -> int:
    """How many times this process has built an instance for ``token`` (for tests and logs)."""
    return _loads.get(token, 0)


# -- what one runner task saw (per thread: a task runs its bundle on one thread) ------------------
_task = threading.local()


def begin_task() -> None:
    """Start recording the batches run on this thread (a cluster runner's task)."""
    _task.sizes, _task.hint = [], 0


def end_task() -> tuple[list[int], int]:
    """The batch sizes run since :func:`begin_task` and the elements the model wants in its
    next batch (0 when no model ran)."""
    sizes, hint = getattr(_task, "sizes", None) or [], getattr(_task, "hint", 0)
    _task.sizes, _task.hint = None, 0
    return sizes, hint


def _note_batch(size: int) -> None:
    if getattr(_task, "sizes", None) is not None:
        _task.sizes.append(size)


def note_batch_hint(elements: int) -> None:
    """The model wants ``elements`` input elements per batch next (the last call of a task
    counts; a frame UDF converts rows to its Arrow-batch elements)."""
    if getattr(_task, "sizes", None) is not None:
        _task.hint = max(1, int(elements))


# -- running batches ------------------------------------------------------------------------------
def _nbytes(values: Sequence[Any]) -> int:
    total = 0
    for v in values:
        if isinstance(v, (bytes, bytearray, str)):
            total += len(v)
        else:
            total += int(getattr(v, "nbytes", 8))
    return total


def _as_outputs(result: Any) -> list[Any]:
    if isinstance(result, (pa.Array, pa.ChunkedArray)):
        return result.to_pylist()
    if isinstance(result, np.ndarray):
        return list(result) if result.ndim else [result.item()]
    if hasattr(result, "tolist") and hasattr(result, "index"):  # a pandas Series
        return result.tolist()
    if isinstance(result, (str, bytes, dict)) or not hasattr(result, "__iter__"):
        raise TypeError(f"returned a {type(result).__name__}, not one value per row "
                        "(return a list, a numpy array or an Arrow array)")
    return list(result)


class BatchInvoker:
    """Runs batches of rows through a :class:`SharedModel` and sizes the next batch.

    ``batch_size`` fixes the size; None lets the shared :class:`BatchSizeController` learn it from
    time and memory per row. ``describe`` names a row in errors.
    """

    def __init__(self, name: str, stage: str, shared: SharedModel,
                 run: Callable[[Any, list[Batch]], Any],
                 batch_size: int | None, target_seconds: float = 0.5,
                 max_batch_size: int = 1024, memory_budget: int | None = None,
                 clock: Callable[[], float] | None = None):
        self.name = name
        self.stage = stage
        self.shared = shared
        self._run = run
        self.batch_size = batch_size
        self.sizes: list[int] = []
        if batch_size is None:
            with shared._lock:
                if shared.controller is None:
                    extra = {} if clock is None else {"clock": clock}
                    shared.controller = BatchSizeController(
                        name=name, target_seconds=target_seconds, memory_budget=memory_budget,
                        max_size=max_batch_size, **extra)
        self.controller = shared.controller

    def next_size(self) -> int:
        """The size of the next batch (reported to the runner as the model's batch hint)."""
        size = self.batch_size if self.batch_size is not None else self.controller.next_size()
        note_batch_hint(size)
        return size

    def call(self, columns: list[Batch]) -> list[Any]:
        """Outputs of one batch (one per row) or UdfError; ``columns`` are the model's inputs."""
        n = len(columns[0]) if columns else 0
        with self.shared.borrow() as instance:
            result = self._run(instance, columns)
        try:
            outputs = _as_outputs(result)
        except TypeError as exc:
            raise UdfError(f"{self.name} {exc}") from None
        if len(outputs) != n:
            raise UdfError(f"{self.name} returned {len(outputs)} values for a batch of {n} rows; "
                           "it must return one value per row")
        return outputs

    def run(self, columns: list[Batch], describe: Callable[[int], Any]
            ) -> tuple[list[Any], list[tuple[int, UdfError]]]:
        """Outputs for every row (None where a row failed) and the failures ``(row, error)``.

        A failing batch is rerun row by row, so one bad row does not fail the others.
        """
        n = len(columns[0]) if columns else 0
        self.sizes.append(n)
        _note_batch(n)
        try:
            if self.controller is None:
                return self.call(columns), []
            with self.controller.measure(n) as m:
                outputs = self.call(columns)
                m.input_bytes = sum(_nbytes(c) for c in columns)
                m.output_bytes = _nbytes(outputs)
            return outputs, []
        except Exception as exc:  # noqa: BLE001 - isolated row by row below
            if n == 1:
                return [None], [(0, self._located(exc, describe(0)))]
        outputs: list[Any] = [None] * n
        failures = []
        for i in range(n):
            try:
                outputs[i] = self.call([Batch([c[i]]) for c in columns])[0]
            except Exception as exc:  # noqa: BLE001 - reported per row
                failures.append((i, self._located(exc, describe(i))))
        return outputs, failures

    def _located(self, exc: BaseException, element: Any) -> UdfError:
        if isinstance(exc, UdfError):
            cause = exc.cause
        else:
            cause = f"{self.name} raised {type(exc).__name__}: {exc}"
        err = UdfError(cause).located(self.stage, element)
        err.__cause__ = exc
        return err
