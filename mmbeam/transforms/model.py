"""RunModel: run a model on batches of elements, loaded once per worker process.

::

    good, failed = (p | beam.Create(images)
                      | RunModel(Classifier, batch_size=None).with_exception_handling())

``setup()`` takes the process's shared instance (:mod:`mmbeam.transforms.shared_model`), so every
DoFn copy, bundle and thread in a process uses one model. Elements are buffered into batches of
``batch_size``, or of a size learned from time and memory per element when it is None. A batch
that raises is rerun element by element: the bad elements fail (to the failed output, to null or
as an error, by ``on_error``) and the others succeed. A None element stays None without reaching
the model. Each output keeps its element's timestamp and window.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.errors import StageError
from mmbeam.transforms import shared_model as sm
from mmbeam.transforms.element import FAILED_TAG, ElementTransform, FailedRecord
from mmbeam.transforms.resources import StepResources, max_concurrency, requesting

__all__ = ["RunModel"]


class _RunModelFn(beam.DoFn):
    def __init__(self, model: Any, init_args: tuple, init_kwargs: dict, token: str,
                 stage: str, batch_size: int | None, concurrency: int | None,
                 on_error: str, keyed: bool, failures: bool, tuning: dict):
        self.model = model
        self.init_args = init_args
        self.init_kwargs = init_kwargs
        self.token = token
        self.stage = stage
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.on_error = on_error
        self.keyed = keyed
        self.failures = failures
        self.tuning = tuning

    def setup(self):
        load, run = sm.model_protocol(self.model, self.init_args, self.init_kwargs)
        self._shared = sm.acquire(self.token, load, max_concurrency(self.concurrency))
        self._invoker = sm.BatchInvoker(sm.name_of(self.model), self.stage, self._shared, run,
                                        self.batch_size, **self.tuning)
        self._ok = Metrics.counter(self.stage, "succeeded")
        self._failed = Metrics.counter(self.stage, "failed")
        self._nulls = Metrics.counter(self.stage, "nulls")
        self._sizes = Metrics.distribution(self.stage, "batch_size")

    def teardown(self):
        if getattr(self, "_shared", None) is not None:
            sm.release(self.token)
            self._shared = None

    def start_bundle(self):
        self._pending: list[tuple[Any, Any, Any, Any]] = []
        self._size = self._invoker.next_size()

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        if self.keyed and not (isinstance(element, tuple) and len(element) == 2):
            err = StageError(f"keyed=True expects (key, value) pairs, got "
                             f"{type(element).__name__}").located(self.stage, element)
            yield from self._fail(element, None, err, timestamp, window)
            return
        key, value = element if self.keyed else (None, element)
        if value is None:  # a null stays null (after a download with on_error="null", say)
            yield WindowedValue(element, timestamp, (window,))
            return
        self._pending.append((element, key, value, timestamp, window))
        if len(self._pending) >= self._size:
            yield from self._flush()

    def finish_bundle(self):
        while self._pending:
            yield from self._flush()

    def _flush(self):
        batch, self._pending = self._pending[:self._size], self._pending[self._size:]
        self._sizes.update(len(batch))
        values = sm.Batch([v for _, _, v, _, _ in batch])
        outputs, failures = self._invoker.run([values], lambda i: batch[i][0])
        bad = dict(failures)
        for i, (element, key, _, timestamp, window) in enumerate(batch):
            if i in bad:
                yield from self._fail(element, key, bad[i], timestamp, window)
            else:
                self._ok.inc()
                out = (key, outputs[i]) if self.keyed else outputs[i]
                yield WindowedValue(out, timestamp, (window,))
        self._size = self._invoker.next_size()

    def _fail(self, element, key, err: StageError, timestamp, window):
        self._failed.inc()
        if self.failures:
            record = FailedRecord(element, self.stage, str(err))
            yield beam.pvalue.TaggedOutput(FAILED_TAG, WindowedValue(record, timestamp, (window,)))
        elif self.on_error == "null":
            self._nulls.inc()
            yield WindowedValue((key, None) if self.keyed else None, timestamp, (window,))
        else:
            raise err


class RunModel(ElementTransform):
    """Run ``model`` on batches of elements; one output per element.

    ``model`` is a class (``__init__`` loads, ``__call__(batch)`` returns one value per element;
    ``init_args``/``init_kwargs`` go to the constructor), an ``@mmbeam.udf``, a Beam-style
    handler (``load_model()`` and ``run_inference(batch, model)``) or a function. The batch is a
    list of values with ``to_numpy()``/``to_arrow()``. ``batch_size=None`` autotunes: batches
    take about ``target_seconds`` and stay under ``memory_budget`` bytes, up to
    ``max_batch_size``. ``concurrency`` caps instances per worker process (None: one, shared by
    all threads); on the Dask and Ray runners the step runs on its own pool, apart from the
    steps before it: ``concurrency`` Ray actors, each requesting ``num_cpus``/``num_gpus`` (one
    model per actor), ``(min, max)`` for a pool that grows while elements wait and shrinks when
    idle; on Dask, workers declaring the resources. Plus ``on_error``, ``keyed``
    and ``.with_exception_handling()`` as every mmbeam transform.
    """

    stage = "RunModel"

    def __init__(self, model: Any, batch_size: int | None = None, *, init_args: tuple = (),
                 init_kwargs: dict | None = None,
                 concurrency: int | tuple[int, int] | None = None,
                 num_cpus: float | None = None, num_gpus: float | None = None,
                 target_seconds: float = 0.5, max_batch_size: int = 1024,
                 memory_budget: int | None = None, on_error: str = "raise",
                 keyed: bool = False, label: str | None = None):
        sm.model_protocol(model, init_args, init_kwargs)  # fails now on a bad model
        stage = label or f"RunModel[{sm.name_of(model)}]"
        super().__init__(on_error=on_error, keyed=keyed, label=stage)
        self.resources = StepResources(concurrency, num_cpus, num_gpus, (stage,))  # checked
        self.model = model
        self.batch_size = sm.check_batch_size(batch_size)
        if batch_size is None:
            sm.check_batch_size(max_batch_size)
        self.init_args = tuple(init_args)
        self.init_kwargs = dict(init_kwargs or {})
        self.concurrency = self.resources.concurrency
        self.tuning = {"target_seconds": target_seconds, "max_batch_size": max_batch_size,
                       "memory_budget": memory_budget}
        self.stage = stage
        self.token = getattr(model, "token", None) or sm.new_token(model)

    def expand(self, pcoll):
        """Apply this transform (see the class docstring)."""
        with requesting(pcoll.pipeline, self.resources):
            return super().expand(pcoll)

    def make_fn(self, memory_budget: int | None = None) -> _RunModelFn:
        """The DoFn; ``memory_budget`` (the pipeline's ``--memory_budget``) applies unless the
        transform was given its own."""
        tuning = dict(self.tuning)
        tuning["memory_budget"] = tuning["memory_budget"] or memory_budget
        return _RunModelFn(self.model, self.init_args, self.init_kwargs, self.token, self.stage,
                           self.batch_size, self.concurrency, self.on_error, self.keyed,
                           self._failures, tuning)
