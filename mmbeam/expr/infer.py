"""Type inference: the DataType of an expression over a schema, or a SchemaError.

Runs when an expression meets a frame (``with_column``, ``where`` ...), so an unknown column or
a type mismatch (``.image.resize`` on a string) fails before anything runs, naming the
column and what exists.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import singledispatch

from mmbeam.errors import SchemaError, UnsupportedError
from mmbeam.expr import ir
from mmbeam.ops.registry import Function, get_function
from mmbeam.types import DataType, Schema

__all__ = ["FUNCTIONS", "infer", "supertype"]

_INT_ORDER = ["int8", "int16", "int32", "int64"]
_UINT_ORDER = ["uint8", "uint16", "uint32", "uint64"]


_desc = ir.render


def supertype(a: DataType, b: DataType) -> DataType | None:
    """The type both ``a`` and ``b`` convert to without loss of meaning, or None."""
    if a == b:
        return a
    if a.is_null():
        return b
    if b.is_null():
        return a
    if a.is_integer() and b.is_integer():
        ka, kb = a.kind, b.kind
        if (ka in _INT_ORDER) == (kb in _INT_ORDER):
            order = _INT_ORDER if ka in _INT_ORDER else _UINT_ORDER
            return DataType(max(ka, kb, key=order.index))
        return DataType.int64()
    if a.is_numeric() and b.is_numeric():
        if {a.kind, b.kind} <= {"float32", "int8", "int16", "uint8", "uint16"}:
            return DataType.float32()
        return DataType.float64()
    if a.is_image() and b.is_image():
        return DataType.image(a.image_mode if a.image_mode == b.image_mode else None)
    if a.is_list() and b.is_list():
        inner = supertype(a.inner, b.inner)
        return None if inner is None else DataType.list(inner)
    return None


@singledispatch
def infer(node: ir.Node, schema: Schema) -> DataType:
    """The DataType ``node`` produces over ``schema``."""
    raise UnsupportedError(f"no type rule for {type(node).__name__}")


@infer.register
def _(node: ir.Column, schema: Schema) -> DataType:
    return schema[node.name]


@infer.register
def _(node: ir.Literal, schema: Schema) -> DataType:
    return node.dtype


@infer.register
def _(node: ir.Alias, schema: Schema) -> DataType:
    return infer(node.child, schema)


_ARITH = {"+", "-", "*", "/", "//", "%"}
_CMP = {"==", "!=", "<", "<=", ">", ">="}


@infer.register
def _(node: ir.BinaryOp, schema: Schema) -> DataType:
    lt, rt = infer(node.left, schema), infer(node.right, schema)
    op = node.op

    def mismatch() -> SchemaError:
        return SchemaError(f"cannot apply {op!r} to {_desc(node.left)} of type {lt} and "
                           f"{_desc(node.right)} of type {rt}")

    if op in _ARITH:
        if op == "+" and lt.kind in ("string", "null") and rt.kind in ("string", "null"):
            return DataType.string()
        if op == "+" and lt.kind in ("binary", "null") and rt.kind in ("binary", "null"):
            return DataType.binary()
        if not ((lt.is_numeric() or lt.is_null()) and (rt.is_numeric() or rt.is_null())):
            raise mismatch()
        if op == "/":
            return DataType.float64()
        out = supertype(lt, rt)
        return DataType.int64() if out is None or out.is_null() else out
    if op in _CMP:
        if supertype(lt, rt) is None or lt.is_image() or lt.is_list():
            raise mismatch()
        return DataType.bool()
    if op in ("&", "|"):
        if lt.kind not in ("bool", "null") or rt.kind not in ("bool", "null"):
            raise mismatch()
        return DataType.bool()
    raise UnsupportedError(f"unknown operator {op!r}")


@infer.register
def _(node: ir.UnaryOp, schema: Schema) -> DataType:
    t = infer(node.child, schema)
    if node.op in ("is_null", "not_null"):
        return DataType.bool()
    if node.op == "not":
        if t.kind not in ("bool", "null"):
            raise SchemaError(f"~ needs a Boolean expression, {_desc(node.child)} is {t}")
        return DataType.bool()
    if node.op in ("neg", "abs"):
        if not t.is_numeric():
            raise SchemaError(f"{node.op} needs a numeric expression, {_desc(node.child)} is {t}")
        return t
    raise UnsupportedError(f"unknown unary operator {node.op!r}")


@infer.register
def _(node: ir.Cast, schema: Schema) -> DataType:
    t = infer(node.child, schema)
    if (t.is_image() or node.dtype.is_image()) and not (t.is_image() and node.dtype.is_image()):
        raise SchemaError(f"cannot cast {_desc(node.child)} of type {t} to {node.dtype}; use "
                          ".image.decode() / .image.encode() to convert bytes and images")
    return node.dtype


@infer.register
def _(node: ir.FillNull, schema: Schema) -> DataType:
    t, f = infer(node.child, schema), infer(node.fill, schema)
    out = supertype(t, f)
    if out is None:
        raise SchemaError(f"fill_null value {_desc(node.fill)} of type {f} does not fit "
                          f"{_desc(node.child)} of type {t}")
    return out


@infer.register
def _(node: ir.IfElse, schema: Schema) -> DataType:
    p = infer(node.predicate, schema)
    if p.kind not in ("bool", "null"):
        raise SchemaError(f"if_else needs a Boolean condition, {_desc(node.predicate)} is {p}")
    a, b = infer(node.then, schema), infer(node.otherwise, schema)
    out = supertype(a, b)
    if out is None:
        raise SchemaError(f"if_else branches have different types: {a} and {b}")
    return out


@infer.register
def _(node: ir.Agg, schema: Schema) -> DataType:
    t = infer(node.child, schema)
    if node.op in ("count", "count_all"):
        return DataType.int64()
    if node.op in ("sum", "mean"):
        if not (t.is_numeric() or t.is_null() or t.is_boolean()):
            raise SchemaError(f"{node.op} needs a numeric column, {_desc(node.child)} is {t}")
        if node.op == "mean" or t.is_floating():
            return DataType.float64()
        return DataType.uint64() if t.kind.startswith("uint") else DataType.int64()
    if node.op in ("min", "max"):
        if t.is_image() or t.is_list() or t.kind == "struct":
            raise SchemaError(f"{node.op} cannot order {_desc(node.child)} of type {t}")
        return t
    if node.op == "list":
        return DataType.list(t)
    raise UnsupportedError(f"unknown aggregation {node.op!r}")


# -- functions ----------------------------------------------------------------------------------
def _expect(node: ir.Function, i: int, schema: Schema, ok: Callable[[DataType], bool],
            what: str) -> DataType:
    arg = node.args[i]
    t = infer(arg, schema)
    if not (ok(t) or t.is_null()):
        raise SchemaError(f"{node.name} expects {what}, but {_desc(arg)} is {t}")
    return t


def _literal_arg(node: ir.Function, i: int, schema: Schema, ok: Callable[[DataType], bool],
                 what: str) -> None:
    _expect(node, i, schema, ok, what)
    if not isinstance(node.args[i], ir.Literal):
        raise UnsupportedError(f"{node.name} takes a constant {what} for now, not "
                               f"{_desc(node.args[i])}")


def _is_str(t: DataType) -> bool:
    return t.is_string()


def _str_pred(node: ir.Function, schema: Schema) -> DataType:
    _expect(node, 0, schema, _is_str, "a Utf8 column")
    _literal_arg(node, 1, schema, _is_str, "string pattern")
    return DataType.bool()


def _str_map(out: DataType) -> Callable[[ir.Function, Schema], DataType]:
    def rule(node: ir.Function, schema: Schema) -> DataType:
        _expect(node, 0, schema, _is_str, "a Utf8 column")
        for i in range(1, len(node.args)):
            _literal_arg(node, i, schema, _is_str, "string")
        return out

    return rule


def _declared(function: Function, node: ir.Function, schema: Schema) -> DataType:
    """A declared URL/image function: its input and column options checked against the
    declaration, and its output type rule."""
    _expect(node, 0, schema, function.accepts, function.accepts_doc)
    options = dict(node.options)
    for key, value in node.options:
        if isinstance(value, ir.Arg):
            ok, what = function.per_row_accepts[key]
            _expect(node, value.index, schema, ok, what)
    return function.output(infer(node.args[0], schema), options)


def _is_in(node: ir.Function, schema: Schema) -> DataType:
    infer(node.args[0], schema)
    return DataType.bool()


FUNCTIONS: dict[str, Callable[[ir.Function, Schema], DataType]] = {
    "str.contains": _str_pred,
    "str.startswith": _str_pred,
    "str.endswith": _str_pred,
    "str.lower": _str_map(DataType.string()),
    "str.upper": _str_map(DataType.string()),
    "str.length": _str_map(DataType.int64()),
    "str.split": _str_map(DataType.list(DataType.string())),
    "str.replace": _str_map(DataType.string()),
    "is_in": _is_in,
}


@infer.register
def _(node: ir.Function, schema: Schema) -> DataType:
    declared = get_function(node.name)
    if declared is not None:
        return _declared(declared, node, schema)
    rule = FUNCTIONS.get(node.name)
    if rule is None:
        raise UnsupportedError(f"no type rule for function {node.name!r}")
    return rule(node, schema)
