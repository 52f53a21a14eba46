"""Logical rewrites: push filters and limits toward the source, merge projections, prune columns.

Merging projections is what fuses per-row chains: ``with_column("image", decode(download(url)))``
followed by ``with_column("thumb", resize(image))`` and a ``select("thumb")`` becomes one
expression ``resize(decode(download(url)))``, which the kernels run per row, so no column of
full-size images is ever built.
"""

from __future__ import annotations

from collections import Counter

from mmbeam.expr import ir
from mmbeam.plan import nodes as P
from mmbeam.types import DataType

__all__ = ["optimize"]


def optimize(root: P.Plan) -> P.Plan:
    """The rewritten plan (same schema, same rows)."""
    out = _rewrite(root)
    out = _prune(out, set(root.schema.names()))
    out = _rewrite(out)
    return out


# -- helpers ------------------------------------------------------------------------------------
def _and(nodes: list[ir.Node]) -> ir.Node:
    out = nodes[0]
    for n in nodes[1:]:
        out = ir.BinaryOp("&", out, n)
    return out


def _strip(node: ir.Node) -> ir.Node:
    return node.child if isinstance(node, ir.Alias) else node


def _substitute(node: ir.Node, mapping: dict[str, ir.Node]) -> ir.Node:
    def fn(n: ir.Node) -> ir.Node | None:
        if isinstance(n, ir.Column) and n.name in mapping:
            return mapping[n.name]
        return None

    return ir.transform(node, fn)


def _is_trivial(node: ir.Node) -> bool:
    return isinstance(_strip(node), (ir.Column, ir.Literal))


# -- pushdown and merging -----------------------------------------------------------------------
def _rewrite(plan: P.Plan) -> P.Plan:
    plan = plan.with_inputs(*(_rewrite(c) for c in plan.inputs())) if plan.inputs() else plan
    if isinstance(plan, P.Filter):
        return _push_filter(plan)
    if isinstance(plan, P.Limit):
        return _push_limit(plan)
    if isinstance(plan, P.Project):
        return _merge_project(plan)
    return plan


def _push_filter(f: P.Filter) -> P.Plan:
    child = f.child
    if isinstance(child, P.Filter):
        return _push_filter(P.Filter(child.child, ir.BinaryOp("&", child.predicate,
                                                             f.predicate)))
    if isinstance(child, P.Project):
        mapping = {ir.output_name(e): _strip(e) for e in child.exprs}
        refs = ir.columns_of(f.predicate)
        # push below only when every referenced column is a plain column (no work moved)
        if all(isinstance(mapping[c], ir.Column) for c in refs):
            inner = _push_filter(P.Filter(child.child, _substitute(f.predicate, mapping)))
            return P.Project(inner, child.exprs)
    if isinstance(child, P.Sort):
        return P.Sort(_push_filter(P.Filter(child.child, f.predicate)), child.by,
                      child.descending, child.nulls_first)
    if isinstance(child, P.Scan) and child.limit is None:
        pred = f.predicate if child.predicate is None else ir.BinaryOp(
            "&", child.predicate, f.predicate)
        return P.Scan(child.source, child.columns, pred, None)
    if isinstance(child, P.Join) and child.how in ("inner", "left", "right", "semi", "anti"):
        return _push_into_join(f, child)
    return f


def _push_into_join(f: P.Filter, j: P.Join) -> P.Plan:
    left_names = set(j.left.schema.names())
    right_out = {}
    for name in j.right.schema.names():
        if name in set(j.left_on) & set(j.right_on):
            continue
        right_out[name if name not in left_names else j.prefix + name] = name
    keep, to_left, to_right = [], [], []
    left_ok = j.how in ("inner", "left", "semi", "anti")
    right_ok = j.how in ("inner", "right")
    for c in ir.conjuncts(f.predicate):
        refs = ir.columns_of(c)
        if left_ok and refs <= left_names and not (j.how == "right" and refs & set(j.left_on)):
            to_left.append(c)
        elif right_ok and refs and all(r in right_out for r in refs):
            to_right.append(_substitute(c, {k: ir.Column(v) for k, v in right_out.items()}))
        else:
            keep.append(c)
    if not to_left and not to_right:
        return f
    left = _push_filter(P.Filter(j.left, _and(to_left))) if to_left else j.left
    right = _push_filter(P.Filter(j.right, _and(to_right))) if to_right else j.right
    out: P.Plan = P.Join(left, right, j.left_on, j.right_on, j.how, j.prefix)
    return P.Filter(out, _and(keep)) if keep else out


def _push_limit(lim: P.Limit) -> P.Plan:
    child = lim.child
    if isinstance(child, P.Limit):
        return _push_limit(P.Limit(child.child, min(lim.n, child.n)))
    if isinstance(child, P.Project):
        return P.Project(_push_limit(P.Limit(child.child, lim.n)), child.exprs)
    if isinstance(child, P.InMemory):
        return P.InMemory(child.table.slice(0, lim.n)) if child.table.num_rows > lim.n else child
    if isinstance(child, P.Scan):
        n = lim.n if child.limit is None else min(lim.n, child.limit)
        return P.Limit(P.Scan(child.source, child.columns, child.predicate, n), lim.n)
    return lim


def _merge_project(p: P.Project) -> P.Plan:
    child = p.child
    if not isinstance(child, P.Project):
        return p
    inner = {ir.output_name(e): _strip(e) for e in child.exprs}
    uses: Counter[str] = Counter()
    for e in p.exprs:
        for n in ir.walk(e):
            if isinstance(n, ir.Column):
                uses[n.name] += 1
    # inline an inner column only when that cannot duplicate work
    if any(uses[name] > 1 and not _is_trivial(expr) for name, expr in inner.items()):
        return p
    merged = []
    for e in p.exprs:
        name = ir.output_name(e)
        body = _substitute(_strip(e), inner)
        merged.append(body if isinstance(body, ir.Column) and body.name == name
                      else ir.Alias(body, name))
    return P.Project(child.child, tuple(merged))


# -- column pruning -----------------------------------------------------------------------------
def _refs(nodes: tuple[ir.Node, ...] | list[ir.Node]) -> set[str]:
    out: set[str] = set()
    for n in nodes:
        out |= ir.columns_of(n)
    return out


def _prune(plan: P.Plan, needed: set[str]) -> P.Plan:
    """Drop columns no consumer reads; ``needed`` is what the parent reads from ``plan``."""
    if isinstance(plan, P.Project):
        exprs = tuple(e for e in plan.exprs if ir.output_name(e) in needed)
        if not exprs:  # keep the row count: batches without columns lose their length
            trivial = [e for e in plan.exprs if _is_trivial(e)]
            exprs = (trivial[0],) if trivial else (ir.Alias(ir.Literal(True, _bool()), "__row"),)
        return P.Project(_prune(plan.child, _refs(exprs)), exprs)
    if isinstance(plan, P.Filter):
        child = _prune(plan.child, needed | ir.columns_of(plan.predicate))
        out: P.Plan = P.Filter(child, plan.predicate)
        if needed and set(child.schema.names()) - needed:
            out = P.Project(out, tuple(ir.Column(c) for c in child.schema.names()
                                       if c in needed))
        return out
    if isinstance(plan, (P.Limit, P.Sort, P.Explode)):
        extra = set(plan.by) if isinstance(plan, P.Sort) else set()
        if isinstance(plan, P.Explode):
            extra = set(plan.columns)
        child = _prune(plan.inputs()[0], needed | extra)
        return plan.with_inputs(child)
    if isinstance(plan, P.Distinct):
        cols = set(plan.on) if plan.on else set(plan.child.schema.names())
        return plan.with_inputs(_prune(plan.child, needed | cols))
    if isinstance(plan, P.Aggregate):
        refs = set(plan.keys) | _refs(plan.aggs)
        return plan.with_inputs(_prune(plan.child, refs))
    if isinstance(plan, P.Join):
        merged = {a for a, b in zip(plan.left_on, plan.right_on, strict=True) if a == b}
        lneed = {c for c in plan.left.schema.names() if c in needed or c in merged}
        lneed |= set(plan.left_on)
        rneed = set(plan.right_on)
        lnames = set(plan.left.schema.names())
        for c in plan.right.schema.names():
            out_name = c if (c not in lnames or c in merged) else plan.prefix + c
            if out_name in needed:
                rneed.add(c)
        left = _prune(plan.left, lneed)
        right = _prune(plan.right, rneed)
        if plan.how in ("semi", "anti"):
            return P.Join(left, right, plan.left_on, plan.right_on, plan.how, plan.prefix)
        # keep prefixes stable: a pruned right column no longer clashes with left, so rename
        j = P.Join(left, right, plan.left_on, plan.right_on, plan.how, plan.prefix)
        want = [c for c in plan.schema.names() if c in needed]
        if j.schema.names() == want:
            return j
        rename = _join_renames(plan, j)
        return P.Project(j, tuple(_col_as(rename.get(c, c), c) for c in want))
    if isinstance(plan, P.Scan):
        cols = tuple(c for c in plan.source.schema.names() if c in needed)
        cols = cols or tuple(plan.source.schema.names()[:1])
        return P.Scan(plan.source, cols, plan.predicate, plan.limit)
    if isinstance(plan, P.InMemory):
        if set(plan.table.column_names) <= needed:
            return plan
        keep = [c for c in plan.table.column_names if c in needed] or plan.table.column_names[:1]
        return P.InMemory(plan.table.select(keep))
    return plan


def _col_as(src: str, name: str) -> ir.Node:
    return ir.Column(src) if src == name else ir.Alias(ir.Column(src), name)


def _join_renames(old: P.Join, new: P.Join) -> dict[str, str]:
    """Output name in ``old`` -> output name in ``new`` for right columns whose prefix changed."""
    out: dict[str, str] = {}
    old_l = set(old.left.schema.names())
    new_l = set(new.left.schema.names())
    for c in new.right.schema.names():
        before = c if c not in old_l else old.prefix + c
        after = c if c not in new_l else new.prefix + c
        if before != after:
            out[before] = after
    return out


def _bool():
    return DataType.bool()
