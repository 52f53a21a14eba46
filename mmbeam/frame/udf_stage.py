"""UDF calls as their own batched Beam stage.

Before compiling, :func:`split_udfs` rewrites every projection or filter that calls a UDF into
three steps: a projection computing the UDF's arguments into columns, a :class:`UdfApply` node
running the UDFs, and the original projection (or filter) reading the UDF's output column. Nested
UDFs become one ``UdfApply`` per level. ``UdfApply`` compiles to :class:`_UdfStageFn`, which
gathers rows from incoming Arrow batches into UDF batches (``batch_size`` or autotuned), runs them
on the worker process's shared instance (:mod:`mmbeam.transforms.shared_model`), and emits each
incoming batch with the output column added, under its own key, so row order is kept.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.errors import MmbeamError, UdfError
from mmbeam.expr import ir
from mmbeam.expr.udf import UdfCall
from mmbeam.frame import plan as P
from mmbeam.transforms import shared_model as sm
from mmbeam.transforms.coders import KeyedBatch
from mmbeam.transforms.resources import StepResources, max_concurrency, requesting
from mmbeam.types import DataType, Schema, arrow_to_images

__all__ = ["UdfApply", "expand_udf_apply", "split_udfs"]


@dataclass(frozen=True, eq=False)
class UdfApply(P.Plan):
    """Adds one column per UDF call; each call's arguments are columns of ``child``."""

    child: P.Plan
    calls: tuple[tuple[str, UdfCall], ...]

    def _schema(self) -> Schema:
        extra = [(out, call.udf.return_dtype) for out, call in self.calls]
        return Schema(list(self.child.schema.items()) + extra)

    def describe(self) -> str:
        return "UdfStage: " + ", ".join(f"{out}={call!r}" for out, call in self.calls)


# -- plan rewrite ---------------------------------------------------------------------------------
def _has_udf(node: ir.Node) -> bool:
    return any(isinstance(n, UdfCall) for n in ir.walk(node))


def _innermost(nodes: tuple[ir.Node, ...]) -> list[UdfCall]:
    found: dict[int, UdfCall] = {}
    for node in nodes:
        for n in ir.walk(node):
            if isinstance(n, UdfCall) and not any(_has_udf(a) for a in n.args):
                found.setdefault(id(n), n)
    return list(found.values())


def _replace(node: ir.Node, mapping: dict[int, str]) -> ir.Node:
    if id(node) in mapping:
        return ir.Column(mapping[id(node)])
    return node.map_children(lambda c: _replace(c, mapping))


def _lift(child: P.Plan, exprs: tuple[ir.Node, ...]) -> tuple[P.Plan, tuple[ir.Node, ...]]:
    """``child`` extended with the innermost UDF calls of ``exprs`` as columns, and ``exprs``
    reading those columns instead."""
    taken = set(child.schema.names())
    counter = itertools.count()

    def fresh(stem: str) -> str:
        while True:
            name = f"__{stem}{next(counter)}"
            if name not in taken:
                taken.add(name)
                return name

    extra: list[ir.Node] = []
    calls, mapping = [], {}
    for call in _innermost(exprs):
        args = []
        for arg in call.args:
            if isinstance(arg, ir.Column):
                args.append(arg)
            else:
                name = fresh("udf_arg")
                extra.append(ir.Alias(arg, name))
                args.append(ir.Column(name))
        out = fresh("udf_out")
        calls.append((out, replace(call, args=tuple(args))))
        mapping[id(call)] = out
    if extra:
        child = P.Project(child, tuple(ir.Column(c) for c in child.schema.names()) + tuple(extra))
    new = []
    for e in exprs:
        body = _replace(e, mapping)
        name = ir.output_name(e)
        new.append(body if ir.output_name(body) == name else ir.Alias(body, name))
    return UdfApply(child, tuple(calls)), tuple(new)


def _split(plan: P.Plan) -> P.Plan:
    if isinstance(plan, P.Project) and any(_has_udf(e) for e in plan.exprs):
        child, exprs = _lift(plan.child, plan.exprs)
        return _split(P.Project(child, exprs))
    if isinstance(plan, P.Filter) and _has_udf(plan.predicate):
        names = plan.child.schema.names()
        child, (pred,) = _lift(plan.child, (plan.predicate,))
        return P.Project(_split(P.Filter(child, pred)), tuple(ir.Column(c) for c in names))
    return plan


def split_udfs(plan: P.Plan) -> P.Plan:
    """``plan`` with every UDF call moved into a :class:`UdfApply` stage (unchanged if none)."""
    if not any(_has_udf(e) for node in P.walk(plan) for e in _exprs(node)):
        return plan
    return _rewrite(plan)


def _rewrite(plan: P.Plan) -> P.Plan:
    if plan.inputs():
        plan = plan.with_inputs(*(_rewrite(c) for c in plan.inputs()))
    return _split(plan)


def _exprs(node: P.Plan) -> tuple[ir.Node, ...]:
    if isinstance(node, P.Project):
        return node.exprs
    if isinstance(node, P.Filter):
        return (node.predicate,)
    return ()


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
        self.shared = sm.acquire(udf.token, udf.load_model, max_concurrency(udf.concurrency))
        self.invoker = sm.BatchInvoker(udf.name, f"udf {udf.name}", self.shared, call.invoke,
                                       udf.batch_size)
        self.size = self.invoker.next_size()
        self.sizes = Metrics.distribution(f"udf {udf.name}", "batch_size")
        self.nulled = Metrics.counter("mmbeam", f"udf {udf.name}.nulled")

    def run(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        from mmbeam.frame.sources import column_to_arrow

        columns = [table.column(a.name) for a in self.call.args]
        values = [_python(c) for c in columns]
        outputs: list[Any] = []
        start = 0
        while start < table.num_rows:
            size = self.size
            part = [sm.Batch(v[start:start + size], c.slice(start, size))
                    for v, c in zip(values, columns, strict=True)]
            self.sizes.update(len(part[0]))
            got, failures = self.invoker.run(part, lambda i, s=start: _row(values, s + i))
            for _, err in failures:
                if self.udf.on_error != "null":
                    raise err
            self.nulled.inc(len(failures))
            outputs.extend(got)
            start += size
            self.size = self.invoker.next_size()
        try:
            return column_to_arrow(outputs, self.udf.return_dtype)
        except MmbeamError as exc:
            raise UdfError(f"{self.udf.name} returned values that are not "
                           f"{self.udf.return_dtype}: {exc}", stage=f"udf {self.udf.name}"
                           ) from exc


class _UdfStageFn(beam.DoFn):
    """Run a :class:`UdfApply`'s calls over batches gathered from ``(key, RecordBatch)`` pairs."""

    def __init__(self, calls: tuple[tuple[str, UdfCall], ...], schema: pa.Schema):
        self._spec = calls
        self._schema = schema

    def setup(self):
        self._calls = [_Call(out, call) for out, call in self._spec]

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
        from mmbeam.frame.compile import _concat, to_batch

        pending, self._pending, self._rows = self._pending, [], 0
        inputs = _concat([batch for (_, batch), _, _ in pending], self._schema)
        table = inputs
        for c in self._calls:
            table = table.append_column(c.out, c.run(table))
        self._hint(inputs.num_rows // len(pending))
        offset = 0
        for (key, batch), timestamp, window in pending:
            part = table.slice(offset, batch.num_rows)
            offset += batch.num_rows
            yield WindowedValue((key, to_batch(part)), timestamp, (window,))


def expand_udf_apply(plan: UdfApply, c: Any) -> beam.PCollection:
    """The compiler rule for :class:`UdfApply` (registered by :mod:`mmbeam.frame.compile`)."""
    names = "+".join(call.udf.name for _, call in plan.calls)
    fn = _UdfStageFn(plan.calls, plan.child.schema.to_arrow())
    child = c.expand(plan.child)
    resources = StepResources()
    for _, call in plan.calls:
        udf = call.udf
        resources = resources.merge(StepResources(udf.concurrency, udf.num_cpus, udf.num_gpus,
                                                  (f"udf {udf.name}",)))
    with requesting(child.pipeline, resources):  # a pool of actors on the RayRunner
        return child | c.label(f"Udf[{names}]") >> beam.ParDo(fn).with_output_types(KeyedBatch)
