"""The logical plan: immutable nodes, each knowing its output schema.

Frames build these; :mod:`mmbeam.plan.optimizer` rewrites them; :mod:`mmbeam.exec.beam.compile`
turns them into Beam transforms. Nothing here imports Beam or touches data beyond the in-memory
table a source may hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

import pyarrow as pa

from mmbeam.errors import SchemaError
from mmbeam.expr import ir
from mmbeam.expr.infer import infer, supertype
from mmbeam.types import DataType, Schema

__all__ = [
    "Aggregate",
    "Distinct",
    "Explode",
    "Filter",
    "FromPCollection",
    "InMemory",
    "JOIN_HOWS",
    "Join",
    "Limit",
    "Plan",
    "Project",
    "Scan",
    "Shard",
    "Sort",
    "join_output",
    "render",
]

JOIN_HOWS = ("inner", "left", "right", "outer", "semi", "anti")


@dataclass(frozen=True, eq=False)
class Plan:
    """Base of plan nodes; ``schema`` is computed (and checked) once."""

    def inputs(self) -> tuple[Plan, ...]:
        """The plans this one reads."""
        return tuple(getattr(self, f.name) for f in fields(self)
                     if isinstance(getattr(self, f.name), Plan))

    def with_inputs(self, *new: Plan) -> Plan:
        """A copy reading ``new`` instead."""
        names = [f.name for f in fields(self) if isinstance(getattr(self, f.name), Plan)]
        return replace(self, **dict(zip(names, new, strict=True)))

    @cached_property
    def schema(self) -> Schema:
        """The output schema (checked when the node is built)."""
        return self._schema()

    def _schema(self) -> Schema:  # pragma: no cover - every node overrides
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``explain``."""
        return type(self).__name__


@dataclass(frozen=True, eq=False)
class InMemory(Plan):
    """A table held by the driver (from_pydict, from_arrow, a collected result)."""

    table: pa.Table

    def _schema(self) -> Schema:
        return Schema.from_arrow(self.table.schema)

    def describe(self) -> str:
        """One line for ``explain``."""
        return f"InMemory: {self.table.num_rows} rows"


@dataclass(frozen=True, eq=False)
class Scan(Plan):
    """Files read by a source from :mod:`mmbeam.io.readers`, with pushed-down work.

    ``columns`` (None = all), ``predicate`` (rows kept) and ``limit`` are filled by the optimizer.
    """

    source: Any
    columns: tuple[str, ...] | None = None
    predicate: ir.Node | None = None
    limit: int | None = None

    def _schema(self) -> Schema:
        full: Schema = self.source.schema
        if self.columns is None:
            return full
        return Schema((c, full[c]) for c in self.columns)

    def describe(self) -> str:
        """One line for ``explain``."""
        parts = [self.source.describe()]
        if self.columns is not None:
            parts.append(f"columns={list(self.columns)}")
        if self.predicate is not None:
            parts.append(f"filter={ir.render(self.predicate)}")
        if self.limit is not None:
            parts.append(f"limit={self.limit}")
        return "Scan: " + ", ".join(parts)


@dataclass(frozen=True, eq=False)
class FromPCollection(Plan):
    """A Beam PCollection of dict rows or Arrow record batches, with a declared schema."""

    pcoll: Any
    declared: Schema

    def _schema(self) -> Schema:
        return self.declared


@dataclass(frozen=True, eq=False)
class Project(Plan):
    """Compute ``exprs`` (each aliased to its output name) per row."""

    child: Plan
    exprs: tuple[ir.Node, ...]

    def _schema(self) -> Schema:
        inp = self.child.schema
        return Schema((ir.output_name(e), infer(e, inp)) for e in self.exprs)

    def describe(self) -> str:
        """One line for ``explain``."""
        return "Project: " + ", ".join(ir.render(e) for e in self.exprs)


@dataclass(frozen=True, eq=False)
class Filter(Plan):
    """Rows of ``child`` where ``predicate`` is true."""
    child: Plan
    predicate: ir.Node

    def _schema(self) -> Schema:
        t = infer(self.predicate, self.child.schema)
        if t.kind not in ("bool", "null"):
            raise SchemaError(f"where() needs a Boolean expression, {ir.render(self.predicate)} "
                              f"is {t}")
        return self.child.schema

    def describe(self) -> str:
        """One line for ``explain``."""
        return f"Filter: {ir.render(self.predicate)}"


@dataclass(frozen=True, eq=False)
class Limit(Plan):
    """The first ``n`` rows of ``child``."""
    child: Plan
    n: int

    def _schema(self) -> Schema:
        return self.child.schema

    def describe(self) -> str:
        """One line for ``explain``."""
        return f"Limit: {self.n}"


@dataclass(frozen=True, eq=False)
class Join(Plan):
    """Equi-join on column names; with ``how`` in :data:`JOIN_HOWS` and SQL null semantics."""

    left: Plan
    right: Plan
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: str = "inner"
    prefix: str = "right."

    def _schema(self) -> Schema:
        return Schema(join_output(self).items())

    def describe(self) -> str:
        """One line for ``explain``."""
        return f"Join: how={self.how}, left_on={list(self.left_on)}, right_on={list(self.right_on)}"


def join_output(j: Join) -> dict[str, DataType]:
    """Output columns of a join: merged keys first, then left, then right (prefixed on clash)."""
    ls, rs = j.left.schema, j.right.schema
    for side, on, schema in (("left", j.left_on, ls), ("right", j.right_on, rs)):
        for name in on:
            if name not in schema:
                raise SchemaError(f"join key {name!r} is missing on the {side} side; the {side} "
                                  f"frame has columns: {', '.join(schema) or '(none)'}")
    for a, b in zip(j.left_on, j.right_on, strict=True):
        if supertype(ls[a], rs[b]) is None:
            raise SchemaError(f"join keys {a!r} ({ls[a]}) and {b!r} ({rs[b]}) have "
                              "incompatible types")
    merged = [a for a, b in zip(j.left_on, j.right_on, strict=True) if a == b]
    out: dict[str, DataType] = {}
    for name in merged:
        out[name] = supertype(ls[name], rs[name])  # type: ignore[assignment]
    for name, t in ls.items():
        if name not in out:
            out[name] = t
    if j.how in ("semi", "anti"):
        return out
    for name, t in rs.items():
        if name in merged:
            continue
        target = name if name not in out else j.prefix + name
        if target in out:
            raise SchemaError(f"join output would have column {target!r} twice; rename it first")
        out[target] = t
    return out


@dataclass(frozen=True, eq=False)
class Aggregate(Plan):
    """Group by ``keys`` (column names) and compute ``aggs`` (Alias(Agg(...)) nodes)."""

    child: Plan
    keys: tuple[str, ...]
    aggs: tuple[ir.Node, ...]

    def _schema(self) -> Schema:
        inp = self.child.schema
        cols = [(k, inp[k]) for k in self.keys]
        cols += [(ir.output_name(a), infer(a, inp)) for a in self.aggs]
        return Schema(cols)

    def describe(self) -> str:
        """One line for ``explain``."""
        return f"Aggregate: keys={list(self.keys)}, aggs=[{', '.join(map(ir.render, self.aggs))}]"


@dataclass(frozen=True, eq=False)
class Sort(Plan):
    """``child`` sorted by the columns ``by``."""
    child: Plan
    by: tuple[str, ...]
    descending: tuple[bool, ...]
    nulls_first: bool = False

    def _schema(self) -> Schema:
        for name in self.by:
            t = self.child.schema[name]
            if t.is_image() or t.is_list() or t.kind == "struct":
                raise SchemaError(f"cannot sort by {name!r} of type {t}")
        return self.child.schema

    def describe(self) -> str:
        """One line for ``explain``."""
        return f"Sort: by={list(self.by)}, descending={list(self.descending)}"


@dataclass(frozen=True, eq=False)
class Distinct(Plan):
    """``child`` without duplicate rows (judged on ``on`` when given)."""
    child: Plan
    on: tuple[str, ...] | None = None

    def _schema(self) -> Schema:
        for name in self.on or self.child.schema.names():
            t = self.child.schema[name]
            if t.is_image() or t.is_tensor():
                raise SchemaError(f"distinct cannot compare {name!r} of type {t}")
        return self.child.schema

    def describe(self) -> str:
        """One line for ``explain``."""
        return "Distinct" + (f": on={list(self.on)}" if self.on else "")


@dataclass(frozen=True, eq=False)
class Explode(Plan):
    """One row per element of the list ``columns``."""
    child: Plan
    columns: tuple[str, ...] = field(default=())

    def _schema(self) -> Schema:
        inp = self.child.schema
        out = []
        for name, t in inp.items():
            if name in self.columns:
                if not t.is_list():
                    raise SchemaError(f"explode needs a List column, {name!r} is {t}")
                out.append((name, t.inner))
            else:
                out.append((name, t))
        for name in self.columns:
            inp[name]  # raises for unknown columns
        return Schema(out)

    def describe(self) -> str:
        """One line for ``explain``."""
        return f"Explode: {list(self.columns)}"


@dataclass(frozen=True, eq=False)
class Shard(Plan):
    """Share ``index`` of ``count`` of the child's rows: its rows cut into consecutive blocks of
    ``block_rows``, block ``b`` kept when ``b % count == index``. The ``count`` shares hold every
    row exactly once (a torch ``DataLoader`` worker reads one share; in-process only)."""

    child: Plan
    index: int
    count: int
    block_rows: int = 64

    def _schema(self) -> Schema:
        return self.child.schema

    def describe(self) -> str:
        """One line for ``explain``."""
        return f"Shard: {self.index} of {self.count} (blocks of {self.block_rows} rows)"


def walk(plan: Plan) -> Iterator[Plan]:
    yield plan
    for child in plan.inputs():
        yield from walk(child)


def render(plan: Plan, indent: int = 0) -> str:
    """The plan as an indented tree, one node a line."""
    lines = ["  " * indent + "* " + plan.describe()]
    for child in plan.inputs():
        lines.append(render(child, indent + 1))
    return "\n".join(lines)
