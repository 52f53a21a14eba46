"""What every per-element mmbeam transform shares: keys, nulls, errors, metrics, concurrency.

:class:`ElementFn` is a thin Beam DoFn over the row engine (:mod:`mmbeam.ops.engine`): it
submits each element's value to a :class:`~mmbeam.ops.engine.RowWindow` (one step for a plain
transform, several for a fused one), which bounds and autotunes the rows in flight; rows
complete on their own, results are yielded as they complete (each with its input's timestamp
and window), the bundle thread blocks only while the window is full (that is the
backpressure), and ``finish_bundle`` drains. The window shows as the stage's ``window``
distribution metric; the window's per-stage counts become the Beam counters ``succeeded``,
``failed``, ``nulls`` and ``bytes`` (namespace: the stage name).

:class:`ElementTransform` is the public side (``on_error``, ``keyed=True``,
``.with_exception_handling()``); :class:`FunctionTransform` is the transform of one declared
function (:mod:`mmbeam.ops.functions`): ``Download``, ``DecodeImage``... are made from the
declarations in :mod:`mmbeam.transforms.functions`.
"""

from __future__ import annotations

import collections
import copy
import inspect
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import typehints
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.autotune import default_memory_budget
from mmbeam.beam_internals import consumers
from mmbeam.errors import ConfigError, StageError
from mmbeam.ops.engine import MAX_WINDOW, RowWindow, chain_steps
from mmbeam.ops.fetch import check_on_error
from mmbeam.ops.registry import TRANSFORM, Call, Function
from mmbeam.ops.rowchain import RowChain, Step
from mmbeam.progress import get_progress
from mmbeam.transforms.options import memory_budget_of

__all__ = [
    "FAILED_TAG",
    "MAX_WINDOW",
    "ElementFn",
    "ElementTransform",
    "FailedRecord",
    "FunctionTransform",
]

FAILED_TAG = "failed"


class FailedRecord(NamedTuple):
    """One element that failed: the input as it arrived, the stage, and the error text."""

    element: Any
    stage: str
    error: str


class ElementFn(beam.DoFn):
    """Runs ``chain`` on every element through a :class:`~mmbeam.ops.engine.RowWindow`.

    ``failures=True`` sends rows that failed to the ``failed`` output as FailedRecords;
    otherwise they raise (a step with ``nullable`` set has already turned its failure into a
    None). ``memory_budget`` caps the bytes the window may hold.

    ``parts`` (set by :mod:`mmbeam.runners.fusion`) gives the index of the first step of each
    ElementFn this one was fused from, so it behaves as those did one after another: a failure
    in part ``i > 0`` names that part's input, only the last part's failures go to the
    ``failed`` output, and each part's last stage counts ``bytes``. Every part after the first
    is a single step.

    ``calls`` and ``output`` (set by :class:`FunctionTransform`) let a decode learn, when the
    pipeline is serialized to run, what reads its output: the steps are then rebuilt by
    :func:`~mmbeam.ops.engine.chain_steps`, which decides the reduced JPEG scale.
    """

    def __init__(self, chain: RowChain, *, keyed: bool, failures: bool, memory_budget: int,
                 max_window: int = MAX_WINDOW, parts: tuple[int, ...] = (0,),
                 calls: tuple[Call, ...] = (), output: Any = None):
        self.chain = chain
        self.keyed = keyed
        self.failures = failures
        self.memory_budget = memory_budget
        self.max_window = max_window
        self.parts = parts
        self.calls = calls
        self.output = output
        self.stage = chain.stages[-1] if len(chain.stages) == 1 else "+".join(chain.stages)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["output"] = None
        if self.output is not None and self.calls:
            readers = [_reader(applied) for applied in consumers(self.output)]
            nullable = [s.nullable for s in self.chain.steps]
            state["chain"] = RowChain(chain_steps(self.calls, readers=readers,
                                                  nullable=nullable))
        for name in ("window", "_ok", "_failed", "_nulls", "_bytes", "_window_metric",
                     "_progress", "_done", "_ready"):
            state.pop(name, None)
        return state

    def setup(self):
        """Once per DoFn instance on a worker: build what the bundles share."""
        stages = self.chain.stages
        self._ok = {s: Metrics.counter(s, "succeeded") for s in stages}
        self._failed = {s: Metrics.counter(s, "failed") for s in stages}
        self._nulls = {s: Metrics.counter(s, "nulls") for s in stages}
        self._bytes = {s: Metrics.counter(s, "bytes") for s in stages}
        self._window_metric = Metrics.distribution(self.stage, "window")
        ends = [end - 1 for end in (*self.parts[1:], len(stages))]
        self.window = RowWindow(self.chain, name=self.stage, memory_budget=self.memory_budget,
                                max_window=self.max_window, ends=ends)
        self._progress = get_progress()

    def start_bundle(self):
        """Start a bundle with nothing in flight."""
        self._done: collections.deque = collections.deque()
        self._ready = threading.Semaphore(0)
        self._held = 0

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        """Handle one element (see the class docstring)."""
        try:
            key, value = self._split(element)
        except StageError as err:
            yield from self._failure(element, 0, err, timestamp, window)
            return
        if value is None:  # a null stays null (for example after a download with on_error="null")
            yield WindowedValue(element, timestamp, (window,))
            return
        yield from self._drain(block=False)
        future = self.window.submit(value, key, element)  # blocks while the window is full
        self._held += 1
        entry = (element, key, timestamp, window)
        future.add_done_callback(lambda f, e=entry: self._completes(f, e))
        yield from self._drain(block=False)

    def _completes(self, future, entry):
        self._done.append((future, entry))
        self._ready.release()

    def finish_bundle(self):
        """Emit what is still in flight, then report the bundle's metrics."""
        yield from self._drain(block=True)
        for stage, counts in self.window.counts.take().items():
            for name, metric in (("succeeded", self._ok), ("failed", self._failed),
                                 ("nulls", self._nulls), ("bytes", self._bytes)):
                if counts.get(name):
                    metric[stage].inc(counts[name])
        for size in self.window.take_sizes():
            self._window_metric.update(size)

    def _split(self, element):
        if not self.keyed:
            return None, element
        if not (isinstance(element, tuple) and len(element) == 2):
            raise StageError(f"keyed=True expects (key, value) pairs, got {type(element).__name__}")
        return element

    def _drain(self, block: bool):
        """Yield the rows that have finished; with ``block``, wait for every held row."""
        while self._held and self._ready.acquire(blocking=block):
            future, entry = self._done.popleft()
            self._held -= 1
            yield from self._emit(future.result(), *entry)

    def _emit(self, outcome, element, key, timestamp, window):
        stages = self.chain.stages
        ran = len(outcome.sizes)  # steps that succeeded; stages[ran] failed or nulled the row
        if outcome.error is not None:
            self._progress.update(stages[-1], failed=1)
            err = outcome.error
            if ran > 0 and ran in self.parts:  # a fused part: named by its own input
                element = (key, outcome.failed_input) if self.keyed else outcome.failed_input
                err = err.located(err.stage, element)
            yield from self._failure(element, ran, err, timestamp, window)
            return
        self._progress.update(stages[-1], done=1, failed=int(outcome.nulled is not None),
                              inflight_bytes=self._inflight_bytes())
        result = outcome.value
        yield WindowedValue((key, result) if self.keyed else result, timestamp, (window,))

    def _inflight_bytes(self) -> int:
        return int(self.window.held * (self.window.controller.peak_bytes_per_element or 0))

    def _failure(self, element, step, exc, timestamp, window):
        """Route a failure of step ``step``: to the failed output if it is in the last part
        and ``failures`` is set, else raise."""
        err = exc if isinstance(exc, StageError) else StageError(f"{type(exc).__name__}: {exc}")
        if err.stage is None:  # failed before the chain (a keyed element that is no pair)
            self._failed[self.chain.stages[step]].inc()
            err = err.located(self.chain.stages[step], element)
        if self.failures and step >= self.parts[-1]:
            record = FailedRecord(element, err.stage, str(err))
            yield beam.pvalue.TaggedOutput(FAILED_TAG, WindowedValue(record, timestamp, (window,)))
        else:
            raise err


def _reader(applied: Any) -> Call | None:
    """The declared call an applied transform makes on its input, if it is one."""
    fn = getattr(applied.transform, "fn", None)
    if isinstance(fn, ElementFn) and fn.calls:
        return fn.calls[0]
    return None


class ElementTransform(beam.PTransform):
    """Base of the per-element transforms: ``on_error``, ``keyed`` and exception handling.

    ``on_error="raise"`` fails the pipeline with an error naming the element, the stage and the
    cause; ``"null"`` emits None (counted in the stage's ``nulls`` metric).
    ``.with_exception_handling()`` makes the transform return ``(good, failed)`` where ``failed``
    holds a :class:`FailedRecord` per element that failed. Subclasses build their DoFn in
    :meth:`make_fn`.
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

    @property
    def handles_failures(self) -> bool:
        """True after :meth:`with_exception_handling`."""
        return self._failures

    def with_exception_handling(self) -> ElementTransform:
        """A copy that returns ``(good, failed)`` instead of raising or nulling."""
        clone = copy.copy(self)
        clone._failures = True
        return clone

    def output_type(self, input_type: Any) -> Any:
        """The element type hint of the good output, given the input PCollection's."""
        value = typehints.Optional[self.value_type] if self.value_type is not Any else Any
        if not self.keyed:
            return value
        pair = isinstance(input_type, typehints.TupleConstraint)
        key = input_type.tuple_types[0] if pair and len(input_type.tuple_types) == 2 else Any
        return typehints.Tuple[key, value]

    def make_fn(self, memory_budget: int | None = None) -> beam.DoFn:
        """This transform's DoFn."""
        raise NotImplementedError

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
        """Apply this transform (see the class docstring)."""
        return self.apply_pardo(pcoll, beam.ParDo(self.make_fn(memory_budget_of(pcoll.pipeline))))


class FunctionTransform(ElementTransform):
    """The transform of one declared function (``function``): its arguments are the
    declaration's options (checked when the pipeline is built), plus ``keyed`` and ``label``.

    A decode whose output only resizes read decodes JPEGs at the reduced scale those need
    (decided when the pipeline is serialized to run, when every reader is known)."""

    function: ClassVar[Function]

    def __init__(self, *args: Any, keyed: bool = False, label: str | None = None, **kwargs: Any):
        options = self.function.bind(TRANSFORM, args, kwargs)
        super().__init__(on_error=options["on_error"], keyed=keyed, label=label)
        self.options = options
        self.stage = self.function.stage
        self.value_type = self.function.value_type

    def __getattr__(self, name: str) -> Any:  # the options read as attributes: .width
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def call(self) -> Call:
        """This transform's function call (its declaration and options)."""
        return Call(self.function, self.options)

    def nullable(self) -> bool:
        """True when a failure becomes None (``on_error="null"`` without exception handling)."""
        return self.on_error == "null" and not self._failures

    def step(self, nullable: bool) -> Step:
        """This transform's work on one value as a row step (``nullable``: a failure gives
        None)."""
        return chain_steps([self.call()], nullable=[nullable])[0]

    def make_fn(self, memory_budget: int | None = None) -> ElementFn:
        """This transform's DoFn."""
        return ElementFn(RowChain([self.step(self.nullable())]), keyed=self.keyed,
                         failures=self._failures,
                         memory_budget=memory_budget or default_memory_budget(),
                         calls=(self.call(),))

    def expand(self, pcoll):
        """Apply this transform (see the class docstring)."""
        pardo = beam.ParDo(self.make_fn(memory_budget_of(pcoll.pipeline)))
        out = self.apply_pardo(pcoll, pardo)
        if self.function.box_option is not None and not self._failures:
            pardo.fn.output = out  # its readers decide the reduced scale (see ElementFn)
        return out


def function_transforms(functions: Sequence[Function], module: str) -> dict[str, type]:
    """One :class:`FunctionTransform` subclass per declaration that has a transform, named
    by its stage (``ResizeImage``), with the declaration's signature and docstring."""
    made = {}
    for fn in functions:
        if not fn.transform:
            continue
        options = ", ".join(f"``{o.name}``" for o in fn.options_for(TRANSFORM))
        doc = f"{fn.doc}\n\nOptions: {options}; ``keyed=True`` maps ``(key, value)`` pairs."
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                 for name, default in (("keyed", False), ("label", None))]
        signature = fn.signature(TRANSFORM)
        cls = type(fn.stage, (FunctionTransform,), {
            "function": fn, "__doc__": doc, "__module__": module, "__qualname__": fn.stage,
            "__signature__": signature.replace(
                parameters=[*signature.parameters.values(), *extra])})
        made[fn.stage] = cls
    return made
