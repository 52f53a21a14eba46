"""The expression IR: tiny immutable nodes, nothing else.

User-facing methods (:class:`mmbeam.expr.Expr`) only build these nodes; type inference
(:mod:`mmbeam.expr.infer`) and each backend's evaluator walk them with
``functools.singledispatch``. Nodes never hold data or import Beam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from mmbeam.types import DataType

__all__ = [
    "AGG_OPS",
    "Agg",
    "Alias",
    "BinaryOp",
    "Cast",
    "Column",
    "FillNull",
    "Function",
    "IfElse",
    "Literal",
    "Node",
    "UnaryOp",
    "columns_of",
    "conjuncts",
    "output_name",
    "transform",
    "walk",
]

AGG_OPS = ("count", "sum", "mean", "min", "max", "list", "count_all")


@dataclass(frozen=True)
class Node:
    """Base of every IR node."""

    def children(self) -> tuple[Node, ...]:
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
    name: str


@dataclass(frozen=True, eq=False)
class Literal(Node):
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
    child: Node
    name: str


@dataclass(frozen=True)
class Cast(Node):
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
    child: Node
    fill: Node


@dataclass(frozen=True)
class IfElse(Node):
    predicate: Node
    then: Node
    otherwise: Node


@dataclass(frozen=True)
class Function(Node):
    """A named function such as ``str.contains`` or ``image.resize``.

    ``args`` are expression inputs; ``options`` are plain, hashable keyword values
    (``(("width", 256), ("height", 256))``).
    """

    name: str
    args: tuple[Node, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        for k, v in self.options:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Agg(Node):
    """An aggregation (``op`` in :data:`AGG_OPS`) of one expression, used by group-bys."""

    op: str
    child: Node


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
