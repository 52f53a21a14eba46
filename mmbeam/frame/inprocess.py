"""Run a purely tabular plan in this process, without starting a Beam pipeline.

On the local runner a Beam pipeline costs a fixed ~0.2 s or more (FnApiRunner start-up, stage
fusion, encoding every batch between stages) however small the work. When the plan is purely
tabular (no URL or image work, no UDF, no PCollection input) and the runner is the local
default, this module drives the very same operators the Beam DoFns call
(:mod:`mmbeam.frame.operators`, :mod:`mmbeam.frame.physical`) over whole Arrow tables: the same
kernels, only no pipeline around them. Everything else, and every non-local runner, compiles to
Beam. ``explain()`` says which path a plan takes; ``set_execution_config(in_process=False)``
forces Beam.
"""

from __future__ import annotations

from functools import singledispatch

import pyarrow as pa

from mmbeam.errors import UnsupportedError
from mmbeam.expr import ir
from mmbeam.expr.udf import UdfCall
from mmbeam.frame import operators, physical
from mmbeam.frame import plan as P
from mmbeam.frame.context import ExecOptions
from mmbeam.frame.evaluate import EvalContext

__all__ = ["execution_path", "run_in_process"]


def execution_path(plan: P.Plan, options: ExecOptions, runner_name: str) -> tuple[bool, str]:
    """(True, why) when ``plan`` runs in this process, else (False, why it needs Beam)."""
    if options.in_process is False:
        return False, "in_process=False in the execution config"
    if runner_name != "local":
        return False, f"the runner is {runner_name!r}, not the local default"
    for node in P.walk(plan):
        if isinstance(node, P.FromPCollection):
            return False, "the plan reads a Beam PCollection"
        exprs: tuple = ()
        if isinstance(node, P.Project):
            exprs = node.exprs
        elif isinstance(node, P.Filter):
            exprs = (node.predicate,)
        elif isinstance(node, P.Scan) and node.predicate is not None:
            exprs = (node.predicate,)
        if operators.has_multimodal(exprs):
            return False, "the plan has URL/image work, which runs as fused Beam stages"
        if any(isinstance(n, UdfCall) for e in exprs for n in ir.walk(e)):
            return False, "the plan calls a UDF, which runs as a batched Beam stage"
    return True, "a purely tabular plan on the local runner"


def run_in_process(plan: P.Plan, options: ExecOptions) -> tuple[pa.Table, dict[str, int]]:
    """The rows of an (optimized, tabular) plan and the counts of rows nulled per operation."""
    ctx = EvalContext()
    table = _execute(plan, options, ctx)
    return table, dict(ctx.errors)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.Table.from_batches([operators.empty_batch(schema)])
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


@singledispatch
def _execute(plan: P.Plan, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    raise UnsupportedError(f"the in-process executor has no rule for {type(plan).__name__}")


@_execute.register
def _(plan: P.InMemory, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    return plan.table


@_execute.register
def _(plan: P.Scan, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    tables = [table for index, spec in operators.scan_tasks(plan)
              for _, table in operators.scan_task(plan, index, spec, options.batch_rows)]
    return _concat(tables, plan.schema.to_arrow())


def _rows(plan: P.Plan, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    ops, source, _ = operators.row_ops(plan)
    return operators.run_row_ops(_execute(source, options, ctx), ops, ctx)


_execute.register(P.Project, _rows)
_execute.register(P.Filter, _rows)
_execute.register(P.Explode, _rows)


@_execute.register
def _(plan: P.Join, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    left = _execute(plan.left, options, ctx)
    right = _execute(plan.right, options, ctx)
    return physical.join_tables(left, right, plan.left_on, plan.right_on, plan.how,
                                plan.schema, plan.prefix)


@_execute.register
def _(plan: P.Aggregate, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    table = _execute(plan.child, options, ctx)
    return physical.aggregate_table(table, plan.keys, plan.aggs, plan.schema)


@_execute.register
def _(plan: P.Distinct, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    return physical.distinct_table(_execute(plan.child, options, ctx), plan.on)


@_execute.register
def _(plan: P.Sort, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    table = _execute(plan.child, options, ctx)
    return physical.sort_table(table, plan.by, plan.descending, plan.nulls_first)


@_execute.register
def _(plan: P.Limit, options: ExecOptions, ctx: EvalContext) -> pa.Table:
    return _execute(plan.child, options, ctx).slice(0, plan.n)
