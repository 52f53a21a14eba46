"""Run URL and image expressions over a batch through the row engine: plan → steps.

``col("url").url.download().image.decode().image.resize(256, 256).image.encode("JPEG")
.url.upload(dir)`` is a chain of declared function calls (:mod:`mmbeam.ops.functions`);
:func:`~mmbeam.ops.engine.chain_steps` makes their steps (the decode at the reduced JPEG scale
the resize allows) and a :class:`~mmbeam.ops.engine.RowWindow` runs the rows, as the Beam
transforms do: the same steps, window rule, stage names (``Download``, ``DecodeImage``...),
errors and per-stage counts. Only the chain's final value is kept, so full-size pixels exist for
one row at a time per thread and never as a column nobody asked for.

Capturing failures (``ctx.capture``, :mod:`mmbeam.exec.failures`) no step nulls by itself: each
row's :class:`~mmbeam.ops.rowchain.RowOutcome` names the step that failed it and the error,
and the row is recorded in ``ctx.failures`` (kept as a null where that step's ``on_error`` is
``"null"``, else dropped by the operator) instead of raising, as a transform with exception
handling sends it to its failed output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mmbeam.expr import ir
from mmbeam.expr.infer import infer
from mmbeam.ops.engine import RowWindow, chain_steps
from mmbeam.ops.registry import Call, get_function
from mmbeam.ops.rowchain import RowChain
from mmbeam.types import DataType, Schema, images_to_arrow

__all__ = ["StageTotals", "chain_names", "evaluate_multimodal", "is_multimodal"]

#: ``values(node)``: a node's values over the batch as Python objects (images as arrays)
Values = Callable[[ir.Node], list[Any]]
_SIZES = ("image.width", "image.height")


class StageTotals(dict):
    """What each stage did over a run: ``{stage: Counter(succeeded=, failed=, nulls=,
    bytes=)}``, the counters the Beam transforms report as metrics."""

    def add(self, counts: dict[str, dict[str, int]]) -> None:
        """Add a :meth:`~mmbeam.ops.engine.StageCounts.take`."""
        for stage, values in counts.items():
            self.setdefault(stage, Counter()).update(values)

    def total(self, name: str) -> int:
        """One counter (``"nulls"``, ``"failed"`` ...) summed over the stages."""
        return sum(c.get(name, 0) for c in self.values())

    def nulled(self) -> dict[str, int]:
        """Rows set to null by ``on_error="null"``, per stage (stages with none left out)."""
        return {stage: c["nulls"] for stage, c in self.items() if c.get("nulls")}


def is_multimodal(node: ir.Node) -> bool:
    """True for a call of a declared URL or image function."""
    return isinstance(node, ir.Function) and get_function(node.name) is not None


def _plan(node: ir.Function) -> tuple[list[ir.Function], ir.Node]:
    """The chain of declared calls ending at ``node`` (first call first) and the node it
    reads."""
    calls: list[ir.Function] = []
    cur: ir.Node = node
    while is_multimodal(cur):
        calls.append(cur)
        cur = cur.args[0]
    calls.reverse()
    return calls, cur


def chain_names(exprs: tuple[ir.Node, ...]) -> set[str]:
    """The names of the row windows ``exprs`` run (their stages joined by ``+``, as a fused
    transform is named), for ``explain``."""
    return {"+".join(get_function(fn.name).stage for fn in _plan(node)[0])
            for e in exprs for node in ir.walk(e) if is_multimodal(node)}


def _window(node: ir.Function, values: Values, ctx: Any) \
        -> tuple[RowWindow, ir.Node, tuple[bool, ...]]:
    """The window running ``node``'s chain, the node the chain reads and each call's
    ``on_error == "null"``. A chain whose options read no column is built once per run
    (``ctx.chains``) and shared by every batch: its connections, its window and what it has
    learnt. Capturing failures, no step nulls (the caller nulls or drops the failed rows)."""
    calls, base = _plan(node)
    per_row = any(isinstance(v, ir.Arg) for fn in calls for _, v in fn.options)
    if not per_row and id(node) in ctx.chains:
        return ctx.chains[id(node)]
    rows = []
    declared = []
    for fn in calls:
        columns = {k: values(fn.args[v.index]) for k, v in fn.options if isinstance(v, ir.Arg)}
        rows.append(columns)
        options = {k: v for k, v in fn.options if not isinstance(v, ir.Arg)}
        declared.append(Call(get_function(fn.name), options))
    capturing = getattr(ctx, "capture", None) is not None
    steps = chain_steps(declared, rows=rows, nullable=[False] * len(declared) if capturing
                        else None)
    window = RowWindow(RowChain(steps), ends=range(len(steps)))  # each step is a stage
    entry = (window, base, tuple(call.nullable for call in declared))
    return entry if per_row else ctx.chains.setdefault(id(node), entry)


def _run(node: ir.Function, values: Values, ctx: Any) -> list[Any]:
    window, base, nullable = _window(node, values, ctx)
    inputs = values(base)
    if window.chain.steps[0].stage == get_function("url.download").stage:
        names = inputs
    else:
        names = [f"row {i}" for i in range(len(inputs))]
    outcomes = window.run(inputs, names)
    ctx.stages.add(window.counts.take())
    failures = getattr(ctx, "failures", None)  # capturing: the batch's failed rows go there
    for i, outcome in enumerate(outcomes):
        if outcome.error is None:
            continue
        step = len(outcome.sizes)  # the step that failed the row
        if failures is not None:
            failures.record(i, window.chain.steps[step].stage, outcome.error,
                            kept=nullable[step])
        elif not nullable[step]:
            raise outcome.error
        if nullable[step]:  # nulled, as the step would have without capturing
            ctx.stages.add({window.chain.steps[step].stage: {"nulls": 1}})
    return [outcome.value for outcome in outcomes]


def _to_arrow(values: list[Any], dtype: DataType) -> pa.Array:
    if dtype.is_image():
        return images_to_arrow(values, dtype.image_mode)
    return pa.array(values, type=dtype.to_arrow())


def evaluate_multimodal(node: ir.Function, table: pa.Table, ctx: Any, values: Values,
                        arrow: Callable[[ir.Node], Any]) -> pa.Array:
    """A declared ``url.*`` or ``image.*`` call over ``table``; ``values`` gives a node's
    Python values and ``arrow`` its Arrow array (the evaluator's own)."""
    dtype = infer(node, Schema.from_arrow(table.schema))
    if node.name in _SIZES and not is_multimodal(node.args[0]):
        # a stored image column: its width or height is a field of the struct, no row work
        arr = arrow(node.args[0])
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
        field = storage.field(node.name.split(".")[1]).cast(pa.int64())
        return pc.if_else(storage.is_valid(), field, pa.scalar(None, pa.int64()))
    return _to_arrow(_run(node, values, ctx), dtype)
