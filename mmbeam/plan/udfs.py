"""UDF calls as their own plan step, so an executor can batch them.

:func:`split_udfs` rewrites every projection or filter that calls a UDF into three steps: a
projection computing the UDF's arguments into columns, a :class:`UdfApply` node running the UDFs,
and the original projection (or filter) reading the UDF's output column. Nested UDFs become one
``UdfApply`` per level. Pure: the Beam executor runs ``UdfApply``
(:mod:`mmbeam.exec.beam.udf_stage`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from mmbeam.expr import ir
from mmbeam.expr.udf import UdfCall
from mmbeam.plan import nodes as P
from mmbeam.types import Schema

__all__ = ["UdfApply", "split_udfs"]


@dataclass(frozen=True, eq=False)
class UdfApply(P.Plan):
    """Adds one column per UDF call; each call's arguments are columns of ``child``."""

    child: P.Plan
    calls: tuple[tuple[str, UdfCall], ...]

    def _schema(self) -> Schema:
        extra = [(out, call.udf.return_dtype) for out, call in self.calls]
        return Schema(list(self.child.schema.items()) + extra)

    def describe(self) -> str:
        """One line for ``explain``."""
        return "UdfStage: " + ", ".join(f"{out}={call!r}" for out, call in self.calls)


# -- plan rewrite ---------------------------------------------------------------------------------
def _has_udf(node: ir.Node) -> bool:
    return any(isinstance(n, UdfCall) for n in ir.walk(node))


def _innermost(nodes: tuple[ir.Node, ...]) -> list[UdfCall]:
    found: dict[int, UdfCall] = {}
    for node in nodes:
        for n in ir.walk(node):
            if isinstance(n, UdfCall) and not any(_has_udf(a) for a in n.args):
                found.setdefault(id(n), n)
    return list(found.values())


def _replace(node: ir.Node, mapping: dict[int, str]) -> ir.Node:
    if id(node) in mapping:
        return ir.Column(mapping[id(node)])
    return node.map_children(lambda c: _replace(c, mapping))


def _lift(child: P.Plan, exprs: tuple[ir.Node, ...]) -> tuple[P.Plan, tuple[ir.Node, ...]]:
    """``child`` extended with the innermost UDF calls of ``exprs`` as columns, and ``exprs``
    reading those columns instead."""
    taken = set(child.schema.names())
    counter = itertools.count()

    def fresh(stem: str) -> str:
        while True:
            name = f"__{stem}{next(counter)}"
            if name not in taken:
                taken.add(name)
                return name

    extra: list[ir.Node] = []
    calls, mapping = [], {}
    for call in _innermost(exprs):
        args = []
        for arg in call.args:
            if isinstance(arg, ir.Column):
                args.append(arg)
            else:
                name = fresh("udf_arg")
                extra.append(ir.Alias(arg, name))
                args.append(ir.Column(name))
        out = fresh("udf_out")
        calls.append((out, replace(call, args=tuple(args))))
        mapping[id(call)] = out
    if extra:
        child = P.Project(child, tuple(ir.Column(c) for c in child.schema.names()) + tuple(extra))
    new = []
    for e in exprs:
        body = _replace(e, mapping)
        name = ir.output_name(e)
        new.append(body if ir.output_name(body) == name else ir.Alias(body, name))
    return UdfApply(child, tuple(calls)), tuple(new)


def _split(plan: P.Plan) -> P.Plan:
    if isinstance(plan, P.Project) and any(_has_udf(e) for e in plan.exprs):
        child, exprs = _lift(plan.child, plan.exprs)
        return _split(P.Project(child, exprs))
    if isinstance(plan, P.Filter) and _has_udf(plan.predicate):
        names = plan.child.schema.names()
        child, (pred,) = _lift(plan.child, (plan.predicate,))
        return P.Project(_split(P.Filter(child, pred)), tuple(ir.Column(c) for c in names))
    return plan


def split_udfs(plan: P.Plan) -> P.Plan:
    """``plan`` with every UDF call moved into a :class:`UdfApply` stage (unchanged if none)."""
    if not any(_has_udf(e) for node in P.walk(plan) for e in _exprs(node)):
        return plan
    return _rewrite(plan)


def _rewrite(plan: P.Plan) -> P.Plan:
    if plan.inputs():
        plan = plan.with_inputs(*(_rewrite(c) for c in plan.inputs()))
    return _split(plan)


def _exprs(node: P.Plan) -> tuple[ir.Node, ...]:
    if isinstance(node, P.Project):
        return node.exprs
    if isinstance(node, P.Filter):
        return (node.predicate,)
    return ()
