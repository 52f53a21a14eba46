"""UDF calls as their own batched Beam stage.

:func:`mmbeam.plan.udfs.split_udfs` moves every UDF call into a :class:`~mmbeam.plan.udfs.UdfApply`
node; ``UdfApply`` compiles to :class:`_UdfStageFn`, which
gathers rows from incoming Arrow batches into UDF batches (``batch_size`` or autotuned), runs them
on the worker process's shared instance (:mod:`mmbeam.transforms.shared_model`), and emits each
incoming batch with the output column added, under its own key, so row order is kept.
"""

from __future__ import annotations

import math
import time
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.errors import MmbeamError, UdfError
from mmbeam.exec.arrow import column_to_arrow, concat_tables, to_batch
from mmbeam.exec.failures import FAILURE_KEY, FAILURES, RowFailures, failure_rows
from mmbeam.exec.metrics import OperatorCounters
from mmbeam.expr.udf import UdfCall
from mmbeam.plan.udfs import UdfApply
from mmbeam.transforms import shared_model as sm
from mmbeam.transforms.resources import StepResources, max_concurrency, requesting
from mmbeam.types import DataType, arrow_to_images

__all__ = ["expand_udf_apply"]


# -- execution ------------------------------------------------------------------------------------
def _python(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    if DataType.from_arrow(column.type).is_image():
        return arrow_to_images(column)
    return column.to_pylist()


def _row(values: list[list[Any]], i: int) -> Any:
    """Row ``i``'s UDF input as errors name it: the value, or a list of values."""
    return values[0][i] if len(values) == 1 else [v[i] for v in values]


class _Call:
    """One UDF call in a worker: its shared instance, invoker and current batch size."""

    def __init__(self, out: str, call: UdfCall):
        udf = call.udf
        self.out, self.call, self.udf = out, call, udf
        self.stage = f"udf {udf.name}"
        self.shared = sm.acquire(udf.token, udf.load_model, max_concurrency(udf.concurrency))
        self.invoker = sm.BatchInvoker(udf.name, f"udf {udf.name}", self.shared, call.invoke,
                                       udf.batch_size)
        self.size = self.invoker.next_size()
        self.sizes = Metrics.distribution(f"udf {udf.name}", "batch_size")
        self.nulled = Metrics.counter("mmbeam", f"udf {udf.name}.nulled")

    def run(self, table: pa.Table, capture: RowFailures | None = None) \
            -> tuple[pa.ChunkedArray | pa.Array, int]:
        """The call's output column over ``table`` and the rows it nulled; capturing failures,
        every failed row is recorded in ``capture`` instead of raising."""
        columns = [table.column(a.name) for a in self.call.args]
        values = [_python(c) for c in columns]
        outputs: list[Any] = []
        nulled = 0
        start = 0
        while start < table.num_rows:
            size = self.size
            part = [sm.Batch(v[start:start + size], c.slice(start, size))
                    for v, c in zip(values, columns, strict=True)]
            self.sizes.update(len(part[0]))
            got, failed = self.invoker.run(part, lambda i, s=start: _row(values, s + i))
            keep = self.udf.on_error == "null"
            for i, err in failed:
                if capture is not None:
                    capture.record(start + i, self.stage, err, kept=keep)
                elif not keep:
                    raise err
            if keep:
                self.nulled.inc(len(failed))
                nulled += len(failed)
            outputs.extend(got)
            start += size
            self.size = self.invoker.next_size()
        try:
            return column_to_arrow(outputs, self.udf.return_dtype), nulled
        except MmbeamError as exc:
            raise UdfError(f"{self.udf.name} returned values that are not "
                           f"{self.udf.return_dtype}: {exc}", stage=f"udf {self.udf.name}"
                           ) from exc


class _UdfStageFn(beam.DoFn):
    """Run a :class:`UdfApply`'s calls over batches gathered from ``(key, RecordBatch)`` pairs."""

    def __init__(self, calls: tuple[tuple[str, UdfCall], ...], schema: pa.Schema,
                 name: str = "Udf", capture: Any = None):
        self._spec = calls
        self._schema = schema
        self._name = name
        self._capture = capture  # failure-capturing mode: failed rows to the FAILURES output

    def setup(self):
        self._calls = [_Call(out, call) for out, call in self._spec]
        self._metrics = OperatorCounters(self._name)

    def teardown(self):
        for c in getattr(self, "_calls", ()):
            sm.release(c.udf.token)
        self._calls = []

    def start_bundle(self):
        self._pending: list[tuple[Any, Any, Any]] = []
        self._rows = 0

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        self._pending.append((element, timestamp, window))
        self._rows += element[1].num_rows
        self._hint(element[1].num_rows)
        if self._rows >= max(c.size for c in self._calls):
            yield from self._flush()

    def _hint(self, rows_per_element: int) -> None:
        """The cluster runner sizes this stage's tasks in elements (Arrow batches), not rows."""
        wanted = max(c.size for c in self._calls)
        sm.note_batch_hint(math.ceil(wanted / max(1, rows_per_element)))

    def finish_bundle(self):
        if self._pending:
            yield from self._flush()

    def _flush(self):
        pending, self._pending, self._rows = self._pending, [], 0
        inputs = concat_tables([batch for (_, batch), _, _ in pending], self._schema)
        table = inputs
        started = time.perf_counter()
        nulls = 0
        failures = None if self._capture is None else RowFailures()
        for c in self._calls:
            column, nulled = c.run(table, failures)
            nulls += nulled
            table = table.append_column(c.out, column)
        self._hint(inputs.num_rows // len(pending))
        keep = np.ones(table.num_rows, bool)
        if failures:
            keep[failures.dropped()] = False
        self._metrics.update(rows_in=inputs.num_rows, rows_out=int(keep.sum()), nulls=nulls,
                             failures=nulls if failures is None else len(failures),
                             seconds=time.perf_counter() - started,
                             held_bytes=inputs.nbytes + table.nbytes)
        offset = 0
        for (key, batch), timestamp, window in pending:
            part = table.slice(offset, batch.num_rows)
            if failures:
                part = part.filter(pa.array(keep[offset:offset + batch.num_rows]))
            offset += batch.num_rows
            yield WindowedValue((key, to_batch(part)), timestamp, (window,))
        if failures:
            key = (FAILURE_KEY,) + pending[0][0][0]
            yield beam.pvalue.TaggedOutput(FAILURES, WindowedValue(
                (key, to_batch(failure_rows(inputs, failures, self._capture))),
                pending[0][1], (pending[0][2],)))


def expand_udf_apply(plan: UdfApply, c: Any) -> beam.PCollection:
    """The compiler rule for :class:`UdfApply` (registered by :mod:`mmbeam.exec.beam.compile`)."""
    names = "+".join(call.udf.name for _, call in plan.calls)
    child = c.spread(c.expand(plan.child))
    fn = _UdfStageFn(plan.calls, plan.child.schema.to_arrow(), c.operator(plan), c.capture)
    resources = StepResources()
    for _, call in plan.calls:
        udf = call.udf
        resources = resources.merge(StepResources(udf.concurrency, udf.num_cpus, udf.num_gpus,
                                                  (f"udf {udf.name}",)))
    with requesting(child.pipeline, resources):  # a pool of actors on the RayRunner
        return c.capturing(child | c.label(f"Udf[{names}]") >> c.stage(fn))
