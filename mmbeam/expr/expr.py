"""The user-facing expression: operators and methods that only build IR nodes.

``col("a") + 1`` builds ``BinaryOp("+", Column("a"), Literal(1))``; nothing is evaluated
until a frame runs. Namespaces (``.str``, ``.url``, ``.image``) are properties returning a small
object whose methods each build one :class:`~mmbeam.expr.ir.Function` node.
"""

from __future__ import annotations

from typing import Any

from mmbeam.errors import ConfigError
from mmbeam.expr import ir
from mmbeam.expr.namespaces import ImageNamespace, StrNamespace, UrlNamespace, suggest_attribute
from mmbeam.types import DataType

__all__ = ["Expr", "col", "lit"]



class Expr:
    """A lazy column expression. Build with :func:`col` and :func:`lit`."""

    __slots__ = ("_node",)

    def __init__(self, node: ir.Node):
        self._node = node

    @property
    def node(self) -> ir.Node:
        """The IR node this expression builds."""
        return self._node

    # -- names ----------------------------------------------------------------------------------
    def name(self) -> str:
        """The output column name (alias, else the leftmost column)."""
        return ir.output_name(self._node)

    def alias(self, name: str) -> Expr:
        """The same expression under the output name ``name``."""
        node = self._node.child if isinstance(self._node, ir.Alias) else self._node
        return Expr(ir.Alias(node, str(name)))

    # -- operators ------------------------------------------------------------------------------
    def _bin(self, op: str, other: Any, reflected: bool = False) -> Expr:
        left, right = self._node, ir.as_node(other)
        if reflected:
            left, right = right, left
        return Expr(ir.BinaryOp(op, left, right))

    def __add__(self, o: Any) -> Expr:
        return self._bin("+", o)

    def __radd__(self, o: Any) -> Expr:
        return self._bin("+", o, True)

    def __sub__(self, o: Any) -> Expr:
        return self._bin("-", o)

    def __rsub__(self, o: Any) -> Expr:
        return self._bin("-", o, True)

    def __mul__(self, o: Any) -> Expr:
        return self._bin("*", o)

    def __rmul__(self, o: Any) -> Expr:
        return self._bin("*", o, True)

    def __truediv__(self, o: Any) -> Expr:
        return self._bin("/", o)

    def __rtruediv__(self, o: Any) -> Expr:
        return self._bin("/", o, True)

    def __floordiv__(self, o: Any) -> Expr:
        return self._bin("//", o)

    def __rfloordiv__(self, o: Any) -> Expr:
        return self._bin("//", o, True)

    def __mod__(self, o: Any) -> Expr:
        return self._bin("%", o)

    def __rmod__(self, o: Any) -> Expr:
        return self._bin("%", o, True)

    def __eq__(self, o: Any) -> Expr:  # type: ignore[override]
        return self._bin("==", o)

    def __ne__(self, o: Any) -> Expr:  # type: ignore[override]
        return self._bin("!=", o)

    def __lt__(self, o: Any) -> Expr:
        return self._bin("<", o)

    def __le__(self, o: Any) -> Expr:
        return self._bin("<=", o)

    def __gt__(self, o: Any) -> Expr:
        return self._bin(">", o)

    def __ge__(self, o: Any) -> Expr:
        return self._bin(">=", o)

    def __and__(self, o: Any) -> Expr:
        return self._bin("&", o)

    def __rand__(self, o: Any) -> Expr:
        return self._bin("&", o, True)

    def __or__(self, o: Any) -> Expr:
        return self._bin("|", o)

    def __ror__(self, o: Any) -> Expr:
        return self._bin("|", o, True)

    def __invert__(self) -> Expr:
        return Expr(ir.UnaryOp("not", self._node))

    def __neg__(self) -> Expr:
        return Expr(ir.UnaryOp("neg", self._node))

    def __abs__(self) -> Expr:
        return Expr(ir.UnaryOp("abs", self._node))

    def abs(self) -> Expr:
        """The absolute value."""
        return Expr(ir.UnaryOp("abs", self._node))

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise TypeError("an expression has no truth value; combine conditions with & | ~, "
                        "not and/or/not")

    # -- null handling and conditionals ---------------------------------------------------------
    def is_null(self) -> Expr:
        """True where the value is null."""
        return Expr(ir.UnaryOp("is_null", self._node))

    def not_null(self) -> Expr:
        """True where the value is not null."""
        return Expr(ir.UnaryOp("not_null", self._node))

    def fill_null(self, fill_value: Any) -> Expr:
        """The value, with nulls replaced by ``fill_value``."""
        return Expr(ir.FillNull(self._node, ir.as_node(fill_value)))

    def if_else(self, if_true: Any, if_false: Any) -> Expr:
        """``if_true`` where this boolean expression is true, else ``if_false`` (null → null)."""
        return Expr(ir.IfElse(self._node, ir.as_node(if_true), ir.as_node(if_false)))

    def is_in(self, values: list) -> Expr:
        """True where the value is one of ``values``."""
        return Expr(ir.Function("is_in", (self._node,), (("values", tuple(values)),)))

    def cast(self, dtype: DataType) -> Expr:
        """The value converted to ``dtype`` (a DataType)."""
        if not isinstance(dtype, DataType):
            raise ConfigError(f"cast() takes a DataType such as DataType.int64(), got {dtype!r}")
        return Expr(ir.Cast(self._node, dtype))

    # -- aggregations (for groupby().agg and Frame.agg) -----------------------------------------
    def count(self) -> Expr:
        """Aggregation: the number of non-null values."""
        return Expr(ir.Agg("count", self._node))

    def sum(self) -> Expr:
        """Aggregation: the sum."""
        return Expr(ir.Agg("sum", self._node))

    def mean(self) -> Expr:
        """Aggregation: the mean."""
        return Expr(ir.Agg("mean", self._node))

    def min(self) -> Expr:
        """Aggregation: the smallest value."""
        return Expr(ir.Agg("min", self._node))

    def max(self) -> Expr:
        """Aggregation: the largest value."""
        return Expr(ir.Agg("max", self._node))

    def agg_list(self) -> Expr:
        """Aggregation: the values of each group as a list."""
        return Expr(ir.Agg("list", self._node))

    # -- namespaces -----------------------------------------------------------------------------
    @property
    def str(self) -> StrNamespace:  # noqa: A003 - the Polars/Daft name
        """String functions (``.str.contains``...)."""
        return StrNamespace(self)

    @property
    def url(self) -> Any:
        """URL functions: ``.url.download()``, ``.url.upload(location)``."""
        return UrlNamespace(self)

    @property
    def image(self) -> Any:
        """Image functions: ``.image.decode()``, ``.image.resize(w, h)``..."""
        return ImageNamespace(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise suggest_attribute(self, name, "Expression")

    def __repr__(self) -> str:
        return ir.render(self._node)

    def __reduce__(self):
        return (Expr, (self._node,))


def col(name: str) -> Expr:
    """A reference to the column ``name``."""
    if not isinstance(name, str):
        raise ConfigError(f"col() takes a column name (str), got {name!r}")
    return Expr(ir.Column(name))


def lit(value: Any) -> Expr:
    """A constant; its type is inferred from the Python value."""
    if isinstance(value, Expr):
        return value
    return Expr(ir.Literal(value, DataType.infer(value)))
