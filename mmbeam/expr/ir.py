"""The expression IR: tiny immutable nodes, nothing else.

User-facing methods (:class:`mmbeam.expr.Expr`) only build these nodes; type inference
(:mod:`mmbeam.expr.infer`) and each backend's evaluator walk them with
``functools.singledispatch``. Nodes never hold data or import Beam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from mmbeam.ops.registry import get_function
from mmbeam.types import DataType

__all__ = [
    "AGG_OPS",
    "Agg",
    "Alias",
    "Arg",
    "BinaryOp",
    "Cast",
    "Column",
    "FillNull",
    "Function",
    "IfElse",
    "Literal",
    "Node",
    "UnaryOp",
    "as_node",
    "columns_of",
    "conjuncts",
    "output_name",
    "render",
    "transform",
    "walk",
]

AGG_OPS = ("count", "sum", "mean", "min", "max", "list", "count_all")


@dataclass(frozen=True)
class Node:
    """Base of every IR node."""

    def children(self) -> tuple[Node, ...]:
        """The direct child nodes."""
        out: list[Node] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Node):
                out.append(value)
            elif isinstance(value, tuple):
                out.extend(v for v in value if isinstance(v, Node))
        return tuple(out)

    def map_children(self, fn: Callable[[Node], Node]) -> Node:
        """A copy with ``fn`` applied to each direct child node."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Node):
                changes[f.name] = fn(value)
            elif isinstance(value, tuple) and any(isinstance(v, Node) for v in value):
                changes[f.name] = tuple(fn(v) if isinstance(v, Node) else v for v in value)
        return replace(self, **changes) if changes else self


@dataclass(frozen=True)
class Column(Node):
    """A reference to the column ``name``."""
    name: str


@dataclass(frozen=True, eq=False)
class Literal(Node):
    """A constant of type ``dtype``."""
    value: Any
    dtype: DataType

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Literal) or other.dtype != self.dtype:
            return False
        try:
            return bool(self.value == other.value)
        except (TypeError, ValueError):
            return self.value is other.value

    def __hash__(self) -> int:
        try:
            return hash((self.value, self.dtype))
        except TypeError:
            return hash(self.dtype)


@dataclass(frozen=True)
class Alias(Node):
    """``child`` under the output name ``name``."""
    child: Node
    name: str


@dataclass(frozen=True)
class Cast(Node):
    """``child`` converted to ``dtype``."""
    child: Node
    dtype: DataType


@dataclass(frozen=True)
class BinaryOp(Node):
    """``op`` is one of ``+ - * / % // == != < <= > >= & |``."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class UnaryOp(Node):
    """``op`` is one of ``not``, ``neg``, ``is_null``, ``not_null``, ``abs``."""

    op: str
    child: Node


@dataclass(frozen=True)
class FillNull(Node):
    """``child`` with nulls replaced by ``fill``."""
    child: Node
    fill: Node


@dataclass(frozen=True)
class IfElse(Node):
    """``then`` where ``predicate`` is true, else ``otherwise``."""
    predicate: Node
    then: Node
    otherwise: Node


@dataclass(frozen=True)
class Arg:
    """An option given as a column (``crop(bbox=col("box"))``): the function's ``args[index]``.
    Not a node: the column itself is in ``args``."""

    index: int


@dataclass(frozen=True)
class Function(Node):
    """A named function such as ``str.contains`` or ``image.resize``.

    ``args`` are expression inputs; ``options`` are plain, hashable keyword values
    (``(("width", 256), ("height", 256))``); an option given as a column is an :class:`Arg`.
    """

    name: str
    args: tuple[Node, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        """The option ``key``, or ``default``."""
        for k, v in self.options:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Agg(Node):
    """An aggregation (``op`` in :data:`AGG_OPS`) of one expression, used by group-bys."""

    op: str
    child: Node


def as_node(value: Any) -> Node:
    """An IR node for ``value``: a node itself, an expression's node, else a literal."""
    if isinstance(value, Node):
        return value
    node = getattr(value, "node", None)
    if isinstance(node, Node):
        return node
    return Literal(value, DataType.infer(value))


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents before children."""
    yield node
    for child in node.children():
        yield from walk(child)


def transform(node: Node, fn: Callable[[Node], Node | None]) -> Node:
    """Rewrite bottom-up: ``fn`` returns a replacement node or None to keep it."""
    node = node.map_children(lambda c: transform(c, fn))
    out = fn(node)
    return node if out is None else out


def columns_of(node: Node) -> set[str]:
    """Names of the columns an expression reads."""
    return {n.name for n in walk(node) if isinstance(n, Column)}


def conjuncts(node: Node) -> list[Node]:
    """The parts of an ``a & b & ...`` predicate (a filter keeps rows where all hold)."""
    if isinstance(node, BinaryOp) and node.op == "&":
        return conjuncts(node.left) + conjuncts(node.right)
    return [node]


def output_name(node: Node) -> str:
    """The column name an expression produces: its alias, else its leftmost column (Daft)."""
    if isinstance(node, Alias):
        return node.name
    if isinstance(node, Column):
        return node.name
    if isinstance(node, Literal):
        return "literal"
    for child in node.children():
        return output_name(child)
    return "literal"  # pragma: no cover


def render(node: Node) -> str:
    """A short, readable form of an expression for messages and ``explain``
    (``image.resize(col(img), width=256, height=256)``); credentials are never shown."""
    if isinstance(node, Column):
        return f"col({node.name})"
    if isinstance(node, Literal):
        return f"lit({node.value!r})"
    if isinstance(node, Alias):
        return f"{render(node.child)} as {node.name}"
    if isinstance(node, BinaryOp):
        return f"{render(node.left)} {node.op} {render(node.right)}"
    if isinstance(node, (UnaryOp, Agg)):
        return f"{node.op}({render(node.child)})"
    if isinstance(node, Cast):
        return f"cast({render(node.child)} as {node.dtype})"
    if isinstance(node, FillNull):
        return f"fill_null({render(node.child)}, {render(node.fill)})"
    if isinstance(node, IfElse):
        return (f"if_else({render(node.predicate)}, {render(node.then)}, "
                f"{render(node.otherwise)})")
    if isinstance(node, Function):
        return f"{node.name}({', '.join(_function_parts(node))})"
    return repr(node)  # pragma: no cover


def _function_parts(node: Function) -> list[str]:
    """The arguments and the options worth showing (declared ones: not secret, not default)."""
    declared = get_function(node.name)
    if declared is None:
        return [render(a) for a in node.args] + [f"{k}={v!r}" for k, v in node.options
                                                 if k != "io_config"]
    parts = [render(node.args[0])]
    for key, value in declared.shown_options(dict(node.options)):
        text = render(node.args[value.index]) if isinstance(value, Arg) else repr(value)
        parts.append(f"{key}={text}")
    return parts
