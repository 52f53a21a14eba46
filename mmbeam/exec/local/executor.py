"""Run a plan in this process as a stream of Arrow batches, without starting a Beam pipeline.

On the local runner a Beam pipeline costs a fixed ~1 s or more (importing Beam, FnApiRunner
start-up, stage fusion, encoding every batch between stages) however small the work. So on the
local default runner every plan without a UDF or a PCollection input runs here: this module
drives the very same operators the Beam DoFns call (:mod:`mmbeam.exec.operators`,
:mod:`mmbeam.exec.physical`, the fused URL/image kernel of :mod:`mmbeam.exec.kernels`) as a
pull-based stream: the source yields batches, each stage's row operations run per batch (URL/image
stages per autotuned sub-batch, as on Beam) and a ``limit`` stops pulling once it has its rows, so
memory stays flat and ``show(2)`` downloads two rows. Blocking operators (join, aggregate, sort,
distinct) materialize their input. Everything else, and every non-local runner, compiles to Beam
(imported only then): :class:`LocalExecutor` hands such plans to its fallback executor.
``explain()`` says which path a plan takes; ``set_execution_config(in_process=False)`` forces Beam.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import singledispatch
from typing import Any

import pyarrow as pa

from mmbeam.errors import UnsupportedError
from mmbeam.exec import operators, physical
from mmbeam.exec.arrow import concat_tables as _concat
from mmbeam.exec.base import Collect, Executor, Outcome, Sink, WriteFiles, log_counts
from mmbeam.exec.evaluate import EvalContext
from mmbeam.exec.failures import FailureCapture, concat_failures
from mmbeam.exec.metrics import RunMetrics, operator_kind
from mmbeam.exec.options import ExecOptions
from mmbeam.exec.stages import describe_stages
from mmbeam.expr import ir
from mmbeam.expr.udf import UdfCall
from mmbeam.io.writers import write_table
from mmbeam.plan import nodes as P
from mmbeam.progress import get_progress

__all__ = ["LocalExecutor", "execution_path", "run_in_process", "stream_in_process",
           "write_in_process"]

def execution_path(plan: P.Plan, options: ExecOptions, runner_name: str) -> tuple[bool, str]:
    """(True, why) when ``plan`` runs in this process, else (False, why it needs Beam)."""
    if options.in_process is False:
        return False, "in_process=False in the execution config"
    if runner_name != "local":
        return False, f"the runner is {runner_name!r}, not the local default"
    multimodal = False
    for node in P.walk(plan):
        if isinstance(node, P.FromPCollection):
            return False, "the plan reads a Beam PCollection"
        exprs = _exprs(node)
        if any(isinstance(n, UdfCall) for e in exprs for n in ir.walk(e)):
            return False, "the plan calls a UDF, which runs as a batched Beam stage"
        multimodal |= operators.has_multimodal(exprs)
    if multimodal:
        return True, "local runner; URL/image work streams through the fused per-row kernel"
    return True, "a purely tabular plan on the local runner"


def _exprs(node: P.Plan) -> tuple:
    if isinstance(node, P.Project):
        return node.exprs
    if isinstance(node, P.Filter):
        return (node.predicate,)
    if isinstance(node, P.Scan) and node.predicate is not None:
        return (node.predicate,)
    return ()


class LocalExecutor(Executor):
    """Runs plans in this process when :func:`execution_path` allows, else on ``fallback(why)``
    (the Beam executor of the local runner, made only when a plan needs it)."""

    def __init__(self, options: ExecOptions, fallback: Callable[[str], Executor],
                 runner_name: str = "local"):
        self.options = options
        self.fallback = fallback
        self.runner_name = runner_name

    def _here(self, plan: P.Plan) -> tuple[bool, str]:
        return execution_path(plan, self.options, self.runner_name)

    def run(self, plan: P.Plan, sink: Sink, capture: FailureCapture | None = None) -> Outcome:
        """Run an optimized plan into ``sink`` here, or on Beam when it cannot run here."""
        here, why = self._here(plan)
        if not here:
            return self.fallback(why).run(plan, sink, capture)
        if isinstance(sink, WriteFiles):
            return write_in_process(plan, sink.spec, self.options, capture)
        assert isinstance(sink, Collect)
        return run_in_process(plan, self.options, capture)

    def in_process(self, plan: P.Plan) -> bool:
        """Whether ``plan`` runs here (see :func:`execution_path`)."""
        return self._here(plan)[0]

    def stream(self, plan: P.Plan, done: Callable[[Outcome], None] | None = None,
               capture: FailureCapture | None = None) -> Iterator[pa.Table]:
        """The rows of ``plan`` as they come (see :func:`stream_in_process`), or on Beam."""
        here, why = self._here(plan)
        if not here:
            yield from self.fallback(why).stream(plan, done, capture)
            return
        yield from stream_in_process(plan, self.options, done, capture)

    def explain(self, plan: P.Plan, show_all: bool = False) -> str:
        """Where the plan runs and why (and its stages with ``show_all``)."""
        here, why = self._here(plan)
        if not here:
            return self.fallback(why).explain(plan, show_all)
        text = ("== Execution ==\nin-process: the stages' Arrow operators stream batches in this "
                "process (joins, group-bys, sorts and distinct materialize their input), no "
                f"Beam pipeline ({why})")
        if show_all:
            text += "\n\n== Physical stages ==\n" + describe_stages(plan, self.options)
        return text


#: the most rows per sub-batch of URL/image work in a stream (iterators): the first batch comes
#: early and the rows in flight stay few however long the stream (flat memory)
STREAM_ROWS = 256


def _run_context(capture: FailureCapture | None, max_sub_rows: int = 8192) -> RunContext:
    progress = get_progress()
    return RunContext(RunMetrics(progress if getattr(progress, "enabled", False) else None),
                      max_sub_rows, capture)


def _close_progress(ctx: RunContext) -> None:
    if ctx.metrics.progress is not None:
        ctx.metrics.progress.close()


def _finish(ctx: RunContext, table: pa.Table) -> Outcome:
    """End a run: close its progress bars, log its null counts; its outcome."""
    _close_progress(ctx)
    failures = None if ctx.capture is None else concat_failures(ctx.failed, ctx.capture.columns)
    return Outcome(table, ctx.stages.nulled(), log_counts(ctx.stages), ctx.metrics.table(),
                   failures)


def run_in_process(plan: P.Plan, options: ExecOptions,
                   capture: FailureCapture | None = None) -> Outcome:
    """The rows of an (optimized) plan, the counts of rows nulled per operation, the run's
    metrics and (capturing) its failures."""
    ctx = _run_context(capture)
    try:
        table = _concat(list(_stream(plan, options, ctx)), plan.schema.to_arrow())
    except BaseException:
        _close_progress(ctx)
        raise
    return _finish(ctx, table)


def stream_in_process(plan: P.Plan, options: ExecOptions,
                      done: Callable[[Outcome], None] | None = None,
                      capture: FailureCapture | None = None) -> Iterator[pa.Table]:
    """The rows of an (optimized) plan as they come; closing the stream stops the stages (no
    URL/image work past the sub-batches in flight). When the stream ends (or is closed),
    ``done`` gets an :class:`Outcome` with no rows, the null counts, metrics and failures."""
    ctx = _run_context(capture, STREAM_ROWS)
    batches = _stream(plan, options, ctx)
    try:
        for table in batches:
            if table.num_rows:
                yield table
    finally:
        batches.close()
        outcome = _finish(ctx, plan.schema.to_arrow().empty_table())
        if done is not None:
            done(outcome)


def write_in_process(plan: P.Plan, spec: Any, options: ExecOptions,
                     capture: FailureCapture | None = None) -> Outcome:
    """Run an (optimized) ``plan`` here writing its rows as files as they come (files of up to
    ``batch_rows`` rows); the table of written paths."""
    ctx = _run_context(capture)
    paths: list[str] = []
    pending: list[pa.Table] = []

    def flush() -> None:
        whole = _concat(pending, plan.schema.to_arrow())
        for start in range(0, max(whole.num_rows, 1), options.batch_rows):
            paths.extend(write_table(whole.slice(start, options.batch_rows), spec))
        pending.clear()

    try:
        for table in _stream(plan, options, ctx):
            pending.append(table)
            if sum(t.num_rows for t in pending) >= options.batch_rows:
                flush()
        if any(t.num_rows for t in pending) or not paths:  # an empty result still writes a file
            flush()
    except BaseException:
        _close_progress(ctx)
        raise
    return _finish(ctx, pa.table({"path": pa.array(paths, pa.large_string())}))


def _whole(plan: P.Plan, options: ExecOptions, ctx: RunContext, ahead: bool) -> pa.Table:
    """A blocking operator's input, materialized (its bytes held by the operator)."""
    name = ctx.operator
    table = _concat(list(_stream(plan, options, ctx, ahead)), plan.schema.to_arrow())
    ctx.metrics.update(name, held_bytes=ctx.metrics.operators[name].peak_bytes + table.nbytes)
    return table


# -- the stream of batches per plan node ----------------------------------------------------------
class RunContext(EvalContext):
    """An in-process run's state: the null counts and fused chains of :class:`EvalContext`,
    the run's per-operator :class:`~mmbeam.exec.metrics.RunMetrics`, and the operator whose
    batch is being computed (so the operators it reads from know their consumer)."""

    def __init__(self, metrics: RunMetrics, max_sub_rows: int = 8192,
                 capture: FailureCapture | None = None) -> None:
        super().__init__(capture=capture)
        self.metrics = metrics
        self.operator: str | None = None
        #: the most rows per sub-batch of URL/image work (smaller for streams: see STREAM_ROWS)
        self.max_sub_rows = max_sub_rows


def _stream(plan: P.Plan, options: ExecOptions, ctx: RunContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    """``plan``'s rows as a stream of tables; ``ahead=False`` (under a limit) never runs URL/image
    work on rows the consumer has not asked for yet. Each node is one operator of the run's
    metrics: its rows out, its time (its inputs' taken off later), the batch it hands on."""
    metrics = ctx.metrics
    name = metrics.add(operator_kind(plan))
    if ctx.operator is not None:
        metrics.operators[ctx.operator].inputs.append(name)
    leaf = not plan.inputs()
    inner = _node_stream(plan, options, ctx, ahead)
    try:
        while True:
            outer, ctx.operator = ctx.operator, name
            started = time.perf_counter()
            try:
                table = next(inner)
            except StopIteration:
                return
            finally:
                ctx.operator = outer
                metrics.update(name, seconds=time.perf_counter() - started)
            metrics.update(name, rows_out=table.num_rows, rows_in=table.num_rows if leaf else 0,
                           held_bytes=table.nbytes)
            yield table
    finally:
        inner.close()


@singledispatch
def _node_stream(plan: P.Plan, options: ExecOptions, ctx: RunContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    raise UnsupportedError(f"the in-process executor has no rule for {type(plan).__name__}")


@_node_stream.register
def _(plan: P.InMemory, options: ExecOptions, ctx: EvalContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    rows, total = options.batch_rows, plan.table.num_rows
    for start in range(0, max(total, 1), rows):  # clamped: pyarrow 25 does not clamp a slice of
        yield plan.table.slice(start, min(rows, total - start))  # a table without columns


@_node_stream.register
def _(plan: P.Scan, options: ExecOptions, ctx: EvalContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    for index, spec in operators.scan_tasks(plan):
        for _, table in operators.scan_task(plan, index, spec, options.batch_rows):
            yield table


def _rows(plan: P.Plan, options: ExecOptions, ctx: RunContext,
          ahead: bool = True) -> Iterator[pa.Table]:
    name = ctx.operator  # this operator's name in the run's metrics
    ops, source, multimodal = operators.row_ops(plan)
    batches = _stream(source, options, ctx, ahead)
    if not multimodal:
        for table in batches:
            nulls, failed = ctx.stages.total("nulls"), len(ctx.failed)
            out = operators.run_row_ops(table, ops, ctx)
            nulls = ctx.stages.total("nulls") - nulls
            ctx.metrics.update(name, nulls=nulls,
                               failures=_failures(ctx, nulls, ctx.failed[failed:]))
            yield out
        return
    sizer = operators.multimodal_sizer(options.multimodal_batch_rows, ctx.max_sub_rows)
    held = _Held()

    def run(part: pa.Table) -> tuple[pa.Table, EvalContext]:
        sub = EvalContext(ctx.chains, ctx.capture)  # the same fused chains and window
        ctx.metrics.update(name, held_bytes=held.add(part.nbytes))
        with sizer.measure(part.num_rows) as cost:
            out = operators.run_row_ops(part, ops, sub)
            cost.output_bytes = out.nbytes
        ctx.metrics.update(name, held_bytes=held.add(out.nbytes - part.nbytes))
        return out, sub

    parts = (part for table in batches for part in operators.sub_batches(table, sizer))
    for out, sub in operators.in_order(run, parts, 2 if ahead else 1):
        ctx.stages.add(sub.stages)
        ctx.failed.extend(sub.failed)
        nulls = sub.stages.total("nulls")
        ctx.metrics.update(name, nulls=nulls, failures=_failures(ctx, nulls, sub.failed),
                           held_bytes=held.add(-out.nbytes))
        yield out


def _failures(ctx: RunContext, nulls: int, failed: list[pa.Table]) -> int:
    """Rows a batch failed on: its failure rows when capturing, else the rows it nulled."""
    return nulls if ctx.capture is None else sum(t.num_rows for t in failed)


class _Held:
    """Arrow bytes a stage holds: sub-batches in work and results not yet handed on."""

    def __init__(self) -> None:
        self.bytes = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> int:
        with self._lock:
            self.bytes += n
            return self.bytes


_node_stream.register(P.Project, _rows)
_node_stream.register(P.Filter, _rows)
_node_stream.register(P.Explode, _rows)


@_node_stream.register
def _(plan: P.Limit, options: ExecOptions, ctx: EvalContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    left = plan.n
    batches = _stream(plan.child, options, ctx, False)
    try:
        for table in batches:
            table = table.slice(0, left)
            left -= table.num_rows
            yield table
            if left <= 0:
                break
    finally:
        batches.close()  # stop the upstream stages: no row past the limit is fetched


@_node_stream.register
def _(plan: P.Shard, options: ExecOptions, ctx: EvalContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    offset = 0  # of the child's first row not yet seen
    block, count, index = plan.block_rows, plan.count, plan.index
    batches = _stream(plan.child, options, ctx, ahead)
    try:
        for table in batches:
            start, end = offset, offset + table.num_rows
            offset = end
            keep = []
            for b in range(start // block, -(-end // block)):
                if b % count == index:
                    lo, hi = max(b * block, start), min((b + 1) * block, end)
                    keep.append(table.slice(lo - start, hi - lo))
            if keep:
                yield pa.concat_tables(keep)
    finally:
        batches.close()


@_node_stream.register
def _(plan: P.Join, options: ExecOptions, ctx: EvalContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    left = _whole(plan.left, options, ctx, ahead)
    right = _whole(plan.right, options, ctx, ahead)
    yield physical.join_tables(left, right, plan.left_on, plan.right_on, plan.how,
                               plan.schema, plan.prefix)


@_node_stream.register
def _(plan: P.Aggregate, options: ExecOptions, ctx: EvalContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    yield physical.aggregate_table(_whole(plan.child, options, ctx, ahead), plan.keys, plan.aggs,
                                   plan.schema)


@_node_stream.register
def _(plan: P.Distinct, options: ExecOptions, ctx: EvalContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    yield physical.distinct_table(_whole(plan.child, options, ctx, ahead), plan.on)


@_node_stream.register
def _(plan: P.Sort, options: ExecOptions, ctx: EvalContext, ahead: bool = True) \
        -> Iterator[pa.Table]:
    yield physical.sort_table(_whole(plan.child, options, ctx, ahead), plan.by, plan.descending,
                              plan.nulls_first)
