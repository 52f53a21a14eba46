"""Evaluate expressions over an Arrow table, vectorised with ``pyarrow.compute``.

One ``functools.singledispatch`` function per node type; a node this backend cannot run raises
UnsupportedError. URL and image functions are handed to :mod:`mmbeam.exec.kernels`, which runs
whole chains of them fused per row.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import singledispatch
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmbeam.errors import CastError, ConfigError, SchemaError, UnsupportedError
from mmbeam.exec.kernels import StageTotals, evaluate_multimodal, is_multimodal
from mmbeam.expr import ir
from mmbeam.expr.infer import infer
from mmbeam.ops.image import to_mode
from mmbeam.types import (
    DataType,
    Schema,
    arrow_to_images,
    arrow_to_tensors,
    images_to_arrow,
    tensors_to_arrow,
)

__all__ = [
    "EvalContext",
    "as_array",
    "evaluate",
    "evaluate_capturing",
    "filter_table",
    "project",
    "python_values",
]

Array = pa.Array | pa.ChunkedArray


class EvalContext:
    """Per-stage state: what each URL/image stage did (:class:`~mmbeam.exec.kernels.StageTotals`:
    rows succeeded, failed, nulled by ``on_error="null"``, bytes), the fused URL/image chains
    built so far (reused by later batches, with their windows) and, capturing failures
    (:mod:`mmbeam.exec.failures`), the mode, the failures of the batch being evaluated and the
    failure tables made so far."""

    def __init__(self, chains: dict | None = None, capture: Any = None) -> None:
        self.stages = StageTotals()
        self.chains: dict = {} if chains is None else chains
        self.capture = capture
        self.failures: Any = None  # a RowFailures while an operator evaluates a batch
        self.failed: list[pa.Table] = []


def as_array(value: Any, n: int, dtype: pa.DataType | None = None) -> Array:
    """``value`` as an array of ``n`` rows (a scalar is repeated; a null one gets ``dtype``)."""
    if isinstance(value, pa.Scalar):
        return pa.repeat(value, n) if value.is_valid else pa.nulls(n, dtype or value.type)
    return value


@singledispatch
def evaluate(node: ir.Node, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    """The value of ``node`` over ``table``: an array, or a scalar for constant expressions."""
    raise UnsupportedError(f"the Arrow evaluator cannot run {type(node).__name__}")


@evaluate.register
def _(node: ir.Column, table: pa.Table, ctx: EvalContext) -> Array:
    return table.column(node.name)


@evaluate.register
def _(node: ir.Literal, table: pa.Table, ctx: EvalContext) -> pa.Scalar:
    return pa.scalar(node.value, node.dtype.to_arrow())


@evaluate.register
def _(node: ir.Alias, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    return evaluate(node.child, table, ctx)


_NUMERIC: dict[str, Callable] = {
    "+": pc.add, "-": pc.subtract, "*": pc.multiply,
    "==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
    ">": pc.greater, ">=": pc.greater_equal, "&": pc.and_kleene, "|": pc.or_kleene,
}


def _types(node: ir.BinaryOp, table: pa.Table) -> tuple[DataType, DataType]:
    schema = Schema.from_arrow(table.schema)
    return infer(node.left, schema), infer(node.right, schema)


def _to_numpy(arr: Array | pa.Scalar, n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    arr = as_array(arr, n)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    values = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values, valid


def _modulo(node: ir.BinaryOp, left: Any, right: Any, table: pa.Table) -> Array:
    out = infer(node, Schema.from_arrow(table.schema))
    dtype = np.dtype(out.to_arrow().to_pandas_dtype())
    n = table.num_rows
    a, va = _to_numpy(left, n, dtype)
    b, vb = _to_numpy(right, n, dtype)
    valid = va & vb
    if out.is_integer():
        valid &= b != 0
        b = np.where(b == 0, 1, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.floor_divide(a, b) if node.op == "//" else np.mod(a, b)
    return pa.array(result, mask=~valid, type=out.to_arrow())


@evaluate.register
def _(node: ir.BinaryOp, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    left = evaluate(node.left, table, ctx)
    right = evaluate(node.right, table, ctx)
    op = node.op
    if op == "+":
        lt, rt = _types(node, table)
        if lt.kind in ("string", "binary") or rt.kind in ("string", "binary"):
            t = pa.large_string() if "string" in (lt.kind, rt.kind) else pa.large_binary()
            left, right = pc.cast(left, t), pc.cast(right, t)
            return pc.binary_join_element_wise(left, right, pa.scalar(b"" if t ==
                                                                      pa.large_binary() else "",
                                                                      t))
    if op in ("%", "//"):
        return _modulo(node, left, right, table)
    if op == "/":
        return pc.divide(pc.cast(left, pa.float64()), pc.cast(right, pa.float64()))
    fn = _NUMERIC.get(op)
    if fn is None:
        raise UnsupportedError(f"operator {op!r} is not supported by the Arrow evaluator")
    if op in ("&", "|"):
        left, right = (pc.cast(v, pa.bool_()) for v in (left, right))
    return fn(left, right)


@evaluate.register
def _(node: ir.UnaryOp, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    value = evaluate(node.child, table, ctx)
    if node.op == "is_null":
        return pc.is_null(as_array(value, table.num_rows))
    if node.op == "not_null":
        return pc.is_valid(as_array(value, table.num_rows))
    if node.op == "not":
        return pc.invert(pc.cast(value, pa.bool_()))
    if node.op == "neg":
        return pc.negate(value)
    if node.op == "abs":
        return pc.abs(value)
    raise UnsupportedError(f"unary operator {node.op!r} is not supported")


@evaluate.register
def _(node: ir.Cast, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    value = evaluate(node.child, table, ctx)
    target = node.dtype
    if target.is_image() or target.is_tensor():
        source = infer(node.child, Schema.from_arrow(table.schema))
        value = as_array(value, table.num_rows, source.to_arrow())
        try:
            if target.is_image():
                return _cast_images(value, source, target)
            return _cast_tensors(value, source, target)
        except CastError as err:
            raise err.located("cast", f"{ir.render(node.child)} to {target}") from err
    return pc.cast(value, target.to_arrow())


def _cast_images(value: Array, source: DataType, target: DataType) -> pa.Array:
    """Images converted to the target mode; a fixed height x width is checked, not resized."""
    mode, height, width = target.params
    images = arrow_to_images(value)
    if mode is not None:
        images = [None if img is None else to_mode(
            img[:, :, 0] if img.shape[2] == 1 else img, mode) for img in images]
    if height is not None:
        for i, img in enumerate(images):
            if img is not None and img.shape[:2] != (height, width):
                raise CastError(f"row {i} is {img.shape[0]} x {img.shape[1]}, the type "
                                f"needs {height} x {width}; resize with .image.resize("
                                f"{width}, {height}) first")
    out = images_to_arrow(images, mode)
    return pa.ExtensionArray.from_storage(target.to_arrow(), out.storage)


def _cast_tensors(value: Array, source: DataType, target: DataType) -> pa.Array:
    """Lists, fixed-size lists or tensors to a tensor (of a fixed shape, or any shape)."""
    if source.is_tensor():
        rows = arrow_to_tensors(value)
    else:
        rows = [None if v is None else np.asarray(v) for v in value.to_pylist()]
    return tensors_to_arrow(rows, target)


@evaluate.register
def _(node: ir.FillNull, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    out = infer(node, Schema.from_arrow(table.schema)).to_arrow()
    child = pc.cast(evaluate(node.child, table, ctx), out)
    fill = pc.cast(evaluate(node.fill, table, ctx), out)
    return pc.coalesce(child, fill)


@evaluate.register
def _(node: ir.IfElse, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    out = infer(node, Schema.from_arrow(table.schema)).to_arrow()
    cond = pc.cast(evaluate(node.predicate, table, ctx), pa.bool_())
    then = pc.cast(evaluate(node.then, table, ctx), out)
    other = pc.cast(evaluate(node.otherwise, table, ctx), out)
    return pc.if_else(cond, then, other)


def _literal(node: ir.Function, i: int) -> Any:
    arg = node.args[i]
    assert isinstance(arg, ir.Literal)
    return arg.value


def _str_fn(node: ir.Function, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    s = evaluate(node.args[0], table, ctx)
    name = node.name
    if name == "str.contains":
        return pc.match_substring(s, _literal(node, 1))
    if name == "str.startswith":
        return pc.starts_with(s, _literal(node, 1))
    if name == "str.endswith":
        return pc.ends_with(s, _literal(node, 1))
    if name == "str.lower":
        return pc.utf8_lower(s)
    if name == "str.upper":
        return pc.utf8_upper(s)
    if name == "str.length":
        return pc.cast(pc.utf8_length(s), pa.int64())
    if name == "str.split":
        return pc.split_pattern(s, _literal(node, 1))
    if name == "str.replace":
        fn = pc.replace_substring_regex if node.option("regex") else pc.replace_substring
        return fn(s, _literal(node, 1), _literal(node, 2))
    raise UnsupportedError(f"{name} is not supported by the Arrow evaluator")


@evaluate.register
def _(node: ir.Function, table: pa.Table, ctx: EvalContext) -> Array | pa.Scalar:
    if node.name.startswith("str."):
        return _str_fn(node, table, ctx)
    if node.name == "is_in":
        value = evaluate(node.args[0], table, ctx)
        return pc.is_in(value, value_set=pa.array(list(node.option("values"))))
    if is_multimodal(node):
        return evaluate_multimodal(node, table, ctx, lambda n: python_values(n, table, ctx),
                                   lambda n: evaluate(n, table, ctx))
    raise UnsupportedError(f"function {node.name!r} is not supported by the Arrow evaluator")


@evaluate.register
def _(node: ir.Agg, table: pa.Table, ctx: EvalContext) -> Array:
    raise UnsupportedError("aggregations run in groupby().agg() or Frame.agg(), not in "
                           "with_column/select")


def project(table: pa.Table, exprs: tuple[ir.Node, ...], ctx: EvalContext) -> pa.Table:
    """A table of ``exprs`` evaluated over ``table``, cast to their inferred types."""
    schema = Schema.from_arrow(table.schema)
    n = table.num_rows
    arrays, names = [], []
    for e in exprs:
        if isinstance(e, ir.Alias) and isinstance(e.child, ir.Column):
            value: Any = table.column(e.child.name)
        elif isinstance(e, ir.Column):
            value = table.column(e.name)
        elif ctx.failures is not None:
            value = evaluate_capturing(e, table, ctx, infer(e, schema).to_arrow())
        else:
            value = evaluate(e, table, ctx)
        target = infer(e, schema).to_arrow()
        value = as_array(value, n, target)
        if value.type != target:
            value = value.cast(target)
        arrays.append(value)
        names.append(ir.output_name(e))
    return pa.Table.from_arrays(arrays, names=names) if arrays else table.select([])


#: errors that are the plan's fault, never one row's: raised even when capturing failures
_PLAN_ERRORS = (ConfigError, SchemaError, UnsupportedError)


def evaluate_capturing(node: ir.Node, table: pa.Table, ctx: EvalContext,
                        target: pa.DataType) -> Array | pa.Scalar:
    """``node`` over ``table``; when a vectorised function (a cast ...) fails, again row by row,
    the failing rows recorded in ``ctx.failures`` and null. (URL/image functions record their
    rows' failures themselves and never raise here.)"""
    try:
        return evaluate(node, table, ctx)
    except _PLAN_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - found row by row below
        pass
    outer, parts = ctx.failures, []
    try:
        for i in range(table.num_rows):
            ctx.failures = type(outer)()
            try:
                part = as_array(evaluate(node, table.slice(i, 1), ctx), 1, target)
                if part.type != target:
                    part = part.cast(target)
            except _PLAN_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - this row's failure, recorded
                outer.record(i, _stage_of(exc, node), exc, kept=False)
                part = pa.nulls(1, target)
            for stage, error, kept in ctx.failures.rows.values():
                outer.record(i, stage, error, kept)
            parts.append(part.combine_chunks() if isinstance(part, pa.ChunkedArray) else part)
    finally:
        ctx.failures = outer
    return pa.chunked_array(parts, target)


def _stage_of(exc: BaseException, node: ir.Node) -> str:
    """The stage a row failed in: the error's own, else the expression's first cast or function
    (``cast`` in ``col("n").cast(int) > 0``)."""
    stage = getattr(exc, "stage", None)
    if stage:
        return stage
    for inner in ir.walk(node):
        if isinstance(inner, ir.Cast):
            return "cast"
        if isinstance(inner, ir.Function):
            return inner.name
    return type(node).__name__.lower()


def filter_table(table: pa.Table, predicate: ir.Node, ctx: EvalContext) -> pa.Table:
    """Rows of ``table`` where ``predicate`` is true (null counts as false)."""
    mask = evaluate(predicate, table, ctx)
    if isinstance(mask, pa.Scalar):
        return table if mask.as_py() else table.slice(0, 0)
    return table.filter(pc.cast(mask, pa.bool_()), null_selection_behavior="drop")


def python_values(node: ir.Node, table: pa.Table, ctx: EvalContext) -> list[Any]:
    """``node``'s values over ``table`` as Python objects (images as numpy arrays)."""
    dtype = infer(node, Schema.from_arrow(table.schema))
    arr = as_array(evaluate(node, table, ctx), table.num_rows, dtype.to_arrow())
    if dtype.is_image():
        return arrow_to_images(arr)
    return arr.to_pylist()
