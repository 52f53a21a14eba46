"""Stage operators over Arrow tables, shared by both execution paths.

The Beam DoFns in :mod:`mmbeam.exec.beam.compile` and the in-process executor in
:mod:`mmbeam.exec.local` call these same functions, so a plan computes the same rows either
way: one implementation, two drivers. Nothing here imports Beam.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmbeam.autotune import BatchSizeController
from mmbeam.exec import physical
from mmbeam.exec.evaluate import EvalContext, evaluate_capturing, filter_table, project
from mmbeam.exec.failures import RowFailures, failure_rows
from mmbeam.exec.kernels import is_multimodal
from mmbeam.expr import ir
from mmbeam.plan import nodes as P

__all__ = [
    "RowOps",
    "broadcast_right",
    "empty_batch",
    "has_multimodal",
    "in_order",
    "multimodal_sizer",
    "physical_size",
    "prune_tasks",
    "row_ops",
    "run_row_ops",
    "scan_task",
    "scan_tasks",
    "sub_batches",
]

#: the per-row work of one stage, innermost first: ("project", exprs), ("filter", predicate),
#: ("explode", columns)
RowOps = list[tuple[str, Any]]


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    """A record batch with no rows (extension types built from their storage)."""
    arrays = []
    for f in schema:
        if isinstance(f.type, pa.ExtensionType):
            storage = pa.array([], f.type.storage_type)
            arrays.append(pa.ExtensionArray.from_storage(f.type, storage))
        else:
            arrays.append(pa.array([], f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def has_multimodal(exprs: tuple[ir.Node, ...]) -> bool:
    """True when any expression calls a declared URL or image function."""
    return any(is_multimodal(n) for e in exprs for n in ir.walk(e))


def row_ops(plan: P.Plan) -> tuple[RowOps, P.Plan, bool]:
    """The chain of Project/Filter/Explode nodes at ``plan`` as one stage's ops (innermost
    first), the node the chain reads from, and whether any op is multimodal."""
    ops: RowOps = []
    node = plan
    multimodal = False
    while isinstance(node, (P.Project, P.Filter, P.Explode)):
        if isinstance(node, P.Project):
            ops.append(("project", node.exprs))
            multimodal |= has_multimodal(node.exprs)
        elif isinstance(node, P.Filter):
            ops.append(("filter", node.predicate))
            multimodal |= has_multimodal((node.predicate,))
        else:
            ops.append(("explode", node.columns))
        node = node.inputs()[0]
    ops.reverse()
    return ops, node, multimodal


def run_row_ops(table: pa.Table, ops: RowOps, ctx: EvalContext) -> pa.Table:
    """Projections, filters and explodes of one stage, in order, over ``table``; capturing
    failures (``ctx.capture``), failed rows leave the output for ``ctx.failed``."""
    for kind, arg in ops:
        if kind == "explode":
            table = physical.explode_table(table, arg)
        elif ctx.capture is not None:
            table = _capturing(kind, arg, table, ctx)
        elif kind == "project":
            table = project(table, arg, ctx)
        else:
            table = filter_table(table, arg, ctx)
    return table


def _capturing(kind: str, arg: Any, table: pa.Table, ctx: EvalContext) -> pa.Table:
    """One projection or filter with its rows' failures recorded: a failure table (of this
    op's input rows) in ``ctx.failed``, the dropped rows out of the result."""
    ctx.failures = failures = RowFailures()
    try:
        if kind == "project":
            out = project(table, arg, ctx)
            keep = np.ones(table.num_rows, bool)
        else:
            mask = evaluate_capturing(arg, table, ctx, pa.bool_())
            if isinstance(mask, pa.Scalar):
                mask = pa.repeat(pa.scalar(bool(mask.as_py())), table.num_rows)
            mask = pc.fill_null(pc.cast(mask, pa.bool_()), False)
            keep = np.asarray(mask.to_numpy(zero_copy_only=False), bool).copy()
            out = table
    finally:
        ctx.failures = None
    if not len(failures):
        return out.filter(pa.array(keep)) if kind == "filter" else out
    ctx.failed.append(failure_rows(table, failures, ctx.capture))
    keep[failures.dropped()] = False
    return out.filter(pa.array(keep))


#: seconds of URL/image work per sub-batch the autotuned sizer aims for
MULTIMODAL_SECONDS = 3.0


def multimodal_sizer(rows: int | None, max_rows: int = 8192) -> Any:
    """The sub-batch sizer of a stage with URL/image work: always ``rows`` rows, or (None) an
    autotune controller aiming at ``MULTIMODAL_SECONDS`` of work and output bytes under the
    memory budget per sub-batch, at most ``max_rows`` (visible in ``explain(show_all=True)``
    after a run)."""
    if rows:
        return BatchSizeController(name="frame:multimodal_batch_rows", min_size=rows,
                                   initial=rows, max_size=rows)
    return BatchSizeController(
        name="frame:multimodal_batch_rows", target_seconds=MULTIMODAL_SECONDS, min_size=8,
        initial=min(64, max_rows), max_size=max_rows).register()


def sub_batches(table: pa.Table, sizer: Any) -> Iterator[pa.Table]:
    """``table`` cut into consecutive slices of the sizes ``sizer.next_size()`` proposes."""
    start = 0
    while start < table.num_rows:
        size = sizer.next_size()
        yield table.slice(start, size)
        start += size


def in_order(fn: Callable[[Any], Any], items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``fn`` over ``items``, results in order, up to ``depth`` calls running at once: with 2,
    the next sub-batch's rows fill the kernel's window while the current one drains."""
    if depth == 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(depth, thread_name_prefix="mmbeam-stage")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) == depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def prune_tasks(scan: P.Scan, tasks: list) -> list:
    """Drop files whose hive partition values fail the scan's filter (partition pruning)."""
    parts = set(getattr(scan.source, "partition_columns", ()))
    if scan.predicate is None or not parts:
        return tasks
    usable = [c for c in ir.conjuncts(scan.predicate)
              if ir.columns_of(c) and ir.columns_of(c) <= parts]
    if not usable:
        return tasks
    kept = []
    ctx = EvalContext()
    for task in tasks:
        values = dict(task.partitions)
        row = pa.table({k: pa.array([values.get(k)], scan.source.schema[k].to_arrow())
                        for k in parts})
        if all(filter_table(row, c, ctx).num_rows for c in usable):
            kept.append(task)
    return kept


def scan_tasks(scan: P.Scan) -> list[tuple[int, Any]]:
    """The numbered read tasks of a scan (one per file) after limit and partition pruning."""
    tasks = scan.source.tasks(scan.limit if scan.predicate is None else None)
    return list(enumerate(prune_tasks(scan, tasks))) or [(0, None)]


def scan_task(scan: P.Scan, index: int, spec: Any, rows: int) \
        -> Iterator[tuple[tuple[int, int], pa.Table]]:
    """Read one scan task as keyed tables of at most ``rows`` rows, applying the scan's filter,
    columns and limit; at least one (possibly empty) table."""
    out_cols = list(scan.schema.names())
    read_cols = list(out_cols)
    if scan.predicate is not None:
        read_cols += sorted(ir.columns_of(scan.predicate) - set(out_cols))
    if not read_cols:  # nothing needed but the row count: read the cheapest column
        read_cols = [scan.source.schema.names()[0]]
    left = scan.limit
    j = 0
    ctx = EvalContext()
    if spec is not None or scan.source.tasks() == [None]:
        for table in scan.source.read(spec, read_cols, rows):
            if scan.predicate is not None:
                table = filter_table(table, scan.predicate, ctx)
            table = table.select(out_cols) if out_cols else table.select(read_cols[:1])
            if left is not None:
                table = table.slice(0, left)
                left -= table.num_rows
            if table.num_rows or j == 0:
                yield (index, j), table
                j += 1
            if left is not None and left <= 0:
                break
    if j == 0:
        yield (index, 0), pa.Table.from_batches([empty_batch(scan.schema.to_arrow())])


def broadcast_right(plan: P.Join, options: Any) -> bool:
    """True when the right side is known to be small and the join keeps no unmatched right
    rows, so each left batch can join the whole right side without a shuffle."""
    size = physical_size(plan.right)
    return plan.how in ("inner", "left", "semi", "anti") and size is not None and \
        size <= options.broadcast_bytes


def physical_size(plan: P.Plan) -> int | None:
    """A rough estimate of a plan's bytes in memory, when cheap to know (None otherwise)."""
    if isinstance(plan, P.InMemory):
        return plan.table.nbytes
    if isinstance(plan, P.Scan):
        sizes = [getattr(t, "size", None) for t in plan.source.tasks()]
        if not sizes or any(s is None for s in sizes):
            return None
        return 8 * sum(sizes)  # compressed files: allow for decompression
    if isinstance(plan, (P.Filter, P.Limit, P.Project)) and not (
            isinstance(plan, P.Project) and has_multimodal(plan.exprs)):
        return physical_size(plan.inputs()[0])
    return None
