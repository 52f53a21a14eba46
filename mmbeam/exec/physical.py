"""Arrow kernels for the shuffle operators: hash partitioning, join, aggregate, sort, distinct.

Pure functions over ``pyarrow.Table``; :mod:`mmbeam.exec.beam.compile` runs them inside Beam DoFns
(one call per hash partition after a GroupByKey / CoGroupByKey), and tests call them directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmbeam.errors import UnsupportedError
from mmbeam.exec.evaluate import EvalContext, project
from mmbeam.expr import ir
from mmbeam.types import Schema

__all__ = [
    "GLOBAL_KEY",
    "aggregate_table",
    "finish_aggregate",
    "merge_partials",
    "partial_aggregate",
    "distinct_table",
    "explode_table",
    "hash_columns",
    "join_tables",
    "partition_table",
    "sort_table",
]

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    return h


def _hash_bytes(arr: pa.Array) -> np.ndarray:
    """A deterministic 64-bit hash of each string/binary value (same in every process)."""
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int64)[arr.offset: arr.offset + n + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
    start, stop = offsets[0], offsets[-1]
    data = data[start:stop].astype(np.uint64)
    lengths = np.diff(offsets)
    if data.size == 0:
        return _mix(lengths.astype(np.uint64) + _MIX)
    row_start = np.repeat(offsets[:-1] - start, lengths)
    pos = np.arange(data.size, dtype=np.int64) - row_start
    maxlen = int(lengths.max())
    powers = np.ones(maxlen, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(1, maxlen):
            powers[i] = powers[i - 1] * _PRIME
        weighted = data * powers[pos]
        starts = (offsets[:-1] - start)[lengths > 0]
        sums = np.zeros(n, np.uint64)
        sums[lengths > 0] = np.add.reduceat(weighted, starts)
        return _mix(sums + lengths.astype(np.uint64) * _MIX)


def _hash_array(arr: pa.Array) -> np.ndarray:
    t = arr.type
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    with np.errstate(over="ignore"):
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
                or pa.types.is_large_binary(t):
            h = _hash_bytes(arr)
        elif pa.types.is_floating(t):
            vals = arr.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
            vals = np.where(vals == 0.0, 0.0, vals)  # -0.0 and 0.0 meet
            h = _mix(vals.view(np.uint64) + _MIX)
        elif pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t):
            vals = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
            h = _mix(vals.view(np.uint64) + _MIX)
        elif pa.types.is_null(t):
            h = np.zeros(len(arr), np.uint64)
        else:
            raise UnsupportedError(f"cannot hash-partition a column of type {t}")
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return np.where(valid, h, np.uint64(0))


def hash_columns(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """A deterministic 64-bit hash per row of ``columns`` (nulls hash alike)."""
    h = np.zeros(table.num_rows, np.uint64)
    with np.errstate(over="ignore"):
        for name in columns:
            h = _mix(h * _PRIME + _hash_array(table.column(name)))
    return h


def partition_table(table: pa.Table, columns: Sequence[str],
                    num_partitions: int) -> list[tuple[int, pa.Table]]:
    """Split rows by hash of ``columns`` into ``num_partitions`` (only non-empty parts)."""
    if num_partitions <= 1 or table.num_rows == 0:
        return [(0, table)]
    part = (hash_columns(table, columns) % np.uint64(num_partitions)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=num_partitions)
    sorted_table = table.take(pa.array(order))
    out, start = [], 0
    for pid, count in enumerate(counts):
        if count:
            out.append((pid, sorted_table.slice(start, int(count))))
        start += int(count)
    return out


def _concat(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if t.num_rows] or [schema.empty_table()]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


_HOW = {"inner": "inner", "left": "left outer", "right": "right outer", "outer": "full outer",
        "semi": "left semi", "anti": "left anti"}


def join_tables(left: pa.Table, right: pa.Table, left_on: Sequence[str],
                right_on: Sequence[str], how: str, output: Schema, prefix: str = "right.") \
        -> pa.Table:
    """Join two tables with SQL semantics (null keys never match); columns as in ``output``.

    Only the keys and row indices go through Arrow's hash join; every other column is gathered
    with ``take``, so payload columns of any type (lists, images) are supported.
    """
    keys = [f"__k{i}" for i in range(len(left_on))]
    lk = pa.table({**{k: _key(left.column(c), right.schema.field(r).type)
                      for k, c, r in zip(keys, left_on, right_on, strict=True)},
                   "__l": pa.array(np.arange(left.num_rows, dtype=np.int64))})
    rk = pa.table({**{k: _key(right.column(r), left.schema.field(c).type)
                      for k, c, r in zip(keys, left_on, right_on, strict=True)},
                   "__r": pa.array(np.arange(right.num_rows, dtype=np.int64))})
    joined = lk.join(rk, keys=keys, join_type=_HOW[how], use_threads=True,
                     coalesce_keys=False)
    li = joined.column("__l")
    if how in ("semi", "anti"):
        li = li.take(pc.sort_indices(li))  # keep left order
        return left.take(li).select(list(output.names()))
    ri = joined.column("__r")
    merged = {a for a, b in zip(left_on, right_on, strict=True) if a == b}
    cols, names = [], []
    for name in output.names():
        t = output[name].to_arrow()
        if name in merged:
            lv = left.column(name).take(li)
            rv = right.column(name).take(ri)
            value = pc.coalesce(lv.cast(t), rv.cast(t)) if how in ("right", "outer") else lv
        elif name in left.column_names:
            value = left.column(name).take(li)
        else:
            src = name[len(prefix):] if name.startswith(prefix) and name not in \
                right.column_names else name
            value = right.column(src).take(ri)
        cols.append(value.cast(t) if value.type != t else value)
        names.append(name)
    return pa.Table.from_arrays(cols, names=names)


def _key(arr: pa.ChunkedArray, other: pa.DataType) -> pa.ChunkedArray:
    """A join key cast to the common type of both sides."""
    t = arr.type
    if t == other:
        return arr
    if pa.types.is_integer(t) and pa.types.is_integer(other):
        return arr.cast(pa.int64())
    if (pa.types.is_integer(t) or pa.types.is_floating(t)) and (
            pa.types.is_integer(other) or pa.types.is_floating(other)):
        return arr.cast(pa.float64())
    if pa.types.is_null(t):
        return arr.cast(other)
    return arr


#: the constant key column a global aggregate groups its partial states by
GLOBAL_KEY = "__g"


def _agg(node: ir.Node) -> ir.Agg:
    while isinstance(node, ir.Alias):
        node = node.child
    assert isinstance(node, ir.Agg), node
    return node


def _state(i: int, op: str) -> list[tuple[str, str]]:
    """The partial-state columns of aggregation ``i`` and how partials of each merge."""
    if op in ("count", "count_all"):
        return [(f"__p{i}", "sum")]
    if op == "mean":
        return [(f"__p{i}", "sum"), (f"__q{i}", "sum")]
    return [(f"__p{i}", op)]  # sum, min, max, list


def _group(table: pa.Table, keys: list[str], specs: list) -> pa.Table:
    """``table`` grouped by ``keys``; columns: keys, then each spec's output named as its input."""
    result = table.group_by(keys, use_threads=False).aggregate(specs)
    names = [spec[0] for spec in specs]
    return pa.Table.from_arrays([result.column(k) for k in keys] +
                                [result.column(f"{n}_{spec[1]}") for n, spec in
                                 zip(names, specs, strict=True)], names=keys + names)


def partial_aggregate(table: pa.Table, keys: Sequence[str], aggs: Sequence[ir.Node]) -> pa.Table:
    """Per-group partial states of ``aggs`` over ``table`` (the combiner before a shuffle).

    Columns: ``keys`` (or one constant ``__g`` key for a global aggregate), then per aggregation
    its state: a count, a sum, a min/max, a list, or (sum, count) for a mean. Partials of many
    tables merge with :func:`merge_partials`; :func:`finish_aggregate` turns them into results.
    """
    exprs: list[ir.Node] = [ir.Column(k) for k in keys]
    specs: list = []
    for i, a in enumerate(aggs):
        agg = _agg(a)
        exprs.append(ir.Alias(agg.child, f"__p{i}"))
        if agg.op in ("count", "count_all"):
            mode = "all" if agg.op == "count_all" else "only_valid"
            specs.append((f"__p{i}", "count", pc.CountOptions(mode=mode)))
        elif agg.op == "mean":
            specs += [(f"__p{i}", "sum"), (f"__q{i}", "count", pc.CountOptions(mode="only_valid"))]
        else:
            specs.append((f"__p{i}", agg.op))
    work = project(table, tuple(exprs), EvalContext())
    for i, a in enumerate(aggs):
        column = work.column(f"__p{i}")
        if _agg(a).op in ("sum", "mean") and pa.types.is_boolean(column.type):
            work = work.set_column(work.schema.get_field_index(f"__p{i}"), f"__p{i}",
                                   column.cast(pa.int64()))
        if _agg(a).op == "mean":
            work = work.append_column(f"__q{i}", work.column(f"__p{i}"))
    group_keys = list(keys)
    if not group_keys:
        group_keys = [GLOBAL_KEY]
        work = work.append_column(GLOBAL_KEY, pa.array(np.zeros(work.num_rows, np.int8)))
    return _group(work, group_keys, specs)


def merge_partials(partials: pa.Table, keys: Sequence[str], aggs: Sequence[ir.Node]) -> pa.Table:
    """Partial states merged per group (same columns as :func:`partial_aggregate`)."""
    group_keys = list(keys) or [GLOBAL_KEY]
    specs = [(name, how) for i, a in enumerate(aggs) for name, how in _state(i, _agg(a).op)
             if how != "list"]
    lists = [f"__p{i}" for i, a in enumerate(aggs) if _agg(a).op == "list"]
    if lists:  # Arrow cannot list lists: collect each group's partial rows, then splice
        partials = partials.append_column("__row", pa.array(np.arange(partials.num_rows)))
        specs.append(("__row", "list"))
    merged = _group(partials, group_keys, specs)
    if not lists:
        return merged
    rows = merged.column("__row").combine_chunks()
    for name in lists:
        taken = partials.column(name).take(rows.values).combine_chunks()
        outer = pa.ListArray.from_arrays(rows.offsets, taken)
        merged = merged.append_column(name, _concat_lists(outer))
    return merged.drop_columns(["__row"])


def _concat_lists(outer: pa.ListArray) -> pa.Array:
    """Per row, the concatenation of a list of lists (one level flattened within each row)."""
    inner = outer.values
    offsets = inner.offsets.take(outer.offsets)
    return pa.ListArray.from_arrays(offsets, inner.values, type=inner.type)


def finish_aggregate(partials: pa.Table, keys: Sequence[str], aggs: Sequence[ir.Node],
                     output: Schema) -> pa.Table:
    """The aggregation results (keys, then one column per agg, typed as ``output``) from the
    partial states of all rows of these groups."""
    merged = merge_partials(partials, keys, aggs)
    target = output.to_arrow()
    if not keys and merged.num_rows == 0:  # a global aggregate over no rows: one row
        return pa.Table.from_arrays([_empty_value(_agg(a).op, target.field(ir.output_name(a)).type)
                                     for a in aggs], schema=target)
    cols = [merged.column(k) for k in keys]
    for i, a in enumerate(aggs):
        value = merged.column(f"__p{i}")
        if _agg(a).op == "mean":
            value = pc.divide(value.cast(pa.float64()), merged.column(f"__q{i}").cast(pa.float64()))
        cols.append(value)
    out = pa.Table.from_arrays(cols, names=list(keys) + [ir.output_name(a) for a in aggs])
    return out.cast(target) if out.schema != target else out


def _empty_value(op: str, t: pa.DataType) -> pa.Array:
    if op in ("count", "count_all"):
        return pa.array([0], t)
    return pa.array([[]] if op == "list" else [None], t)


def aggregate_table(table: pa.Table, keys: Sequence[str], aggs: Sequence[ir.Node],
                    output: Schema) -> pa.Table:
    """Group ``table`` by ``keys`` and compute ``aggs`` (``Alias(Agg(...))`` nodes)."""
    return finish_aggregate(partial_aggregate(table, keys, aggs), keys, aggs, output)


def sort_table(table: pa.Table, by: Sequence[str], descending: Sequence[bool],
               nulls_first: bool) -> pa.Table:
    """``table`` sorted by ``by`` (stable, nulls last unless ``nulls_first``)."""
    if table.num_rows == 0:
        return table
    place = "at_start" if nulls_first else "at_end"
    keys = [(name, "descending" if d else "ascending", place) for name, d in
            zip(by, descending, strict=True)]
    idx = pc.sort_indices(table, sort_keys=keys)
    return table.take(idx)


def distinct_table(table: pa.Table, on: Sequence[str] | None) -> pa.Table:
    """The first row of each distinct value of ``on`` (all columns when None), in input order."""
    cols = list(on) if on else table.column_names
    if table.num_rows == 0:
        return table
    work = table.select(cols).append_column(
        "__i", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    firsts = work.group_by(cols, use_threads=False).aggregate([("__i", "min")])
    idx = pc.sort_indices(firsts.column("__i_min"))
    return table.take(firsts.column("__i_min").take(idx))


def explode_table(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """One row per list element of ``columns`` (same lengths per row); empty or null → null."""
    if table.num_rows == 0:
        return pa.Table.from_arrays(
            [pa.array([], c.type.value_type) if n in columns else c
             for n, c in zip(table.column_names, table.columns, strict=True)],
            names=table.column_names)
    first = table.column(columns[0]).combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(first), 0).to_numpy(zero_copy_only=False)
    for name in columns[1:]:
        other = pc.fill_null(pc.list_value_length(table.column(name)), 0)
        if not np.array_equal(other.to_numpy(zero_copy_only=False), lengths):
            raise UnsupportedError(f"explode: lists in {columns[0]!r} and {name!r} have "
                                   "different lengths in the same row")
    reps = np.maximum(lengths, 1)
    parent = np.repeat(np.arange(table.num_rows), reps)
    out, names = [], []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if name in columns:
            flat = pc.list_flatten(column.combine_chunks())
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            pos = np.arange(int(reps.sum()), dtype=np.int64) - np.repeat(
                np.cumsum(reps) - reps, reps)
            idx = np.repeat(starts, reps) + pos
            values = flat.take(pa.array(idx, mask=np.repeat(lengths == 0, reps)))
            out.append(values)
        else:
            out.append(column.take(pa.array(parent)))
        names.append(name)
    return pa.Table.from_arrays(out, names=names)
