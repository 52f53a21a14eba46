"""How an optimized plan splits into physical stages, as ``explain(show_all=True)`` prints it."""

from __future__ import annotations

from typing import Any

from mmbeam.autotune import chosen_sizes
from mmbeam.exec.kernels import chain_names
from mmbeam.exec.operators import broadcast_right, has_multimodal
from mmbeam.plan import nodes as P

__all__ = ["describe_stages"]


def describe_stages(plan: P.Plan, options: Any, depth: int = 0) -> str:
    """The physical stages of an optimized plan, one line each, for ``explain(show_all=True)``."""
    pad = "  " * depth
    if isinstance(plan, (P.Project, P.Filter, P.Explode)):
        ops = []
        node = plan
        while isinstance(node, (P.Project, P.Filter, P.Explode)):
            ops.append(node.describe())
            node = node.inputs()[0]
        mm = any(has_multimodal(n.exprs) for n in P.walk(plan) if isinstance(n, P.Project)
                 and n in _chain_nodes(plan))
        size = options.multimodal_batch_rows if mm else options.batch_rows
        what = f"batches of {size} rows" if size else "autotuned batches, fused per-row kernel"
        head = f"{pad}* RowStage (one DoFn, {what}): " + " -> ".join(reversed(ops))
        if mm and not size:
            windows = set().union(*(chain_names(n.exprs) for n in P.walk(plan)
                                    if isinstance(n, P.Project) and n in _chain_nodes(plan)))
            chosen = [v for k, v in chosen_sizes().items()
                      if k.startswith("frame:") or k in windows]
            head += "".join(f"\n{pad}    autotune (last run) {line}" for line in chosen)
        head += "".join(f"\n{pad}    {line}" for line in _udf_pools(_chain_nodes(plan)))
        return head + "\n" + describe_stages(node, options, depth + 1)
    if isinstance(plan, P.Join) and broadcast_right(plan, options):
        head = f"{pad}* {plan.describe()} [broadcast: the small right side is a side input]"
    elif isinstance(plan, (P.Join, P.Aggregate, P.Distinct)):
        first = "partial aggregates per bundle, then " if isinstance(plan, P.Aggregate) else ""
        head = f"{pad}* {plan.describe()} [{first}hash-partitioned x{options.num_partitions}, " \
               f"{'CoGroupByKey' if isinstance(plan, P.Join) else 'GroupByKey'}]"
    elif isinstance(plan, (P.Limit, P.Sort)):
        head = f"{pad}* {plan.describe()} [gathered with GroupByKey]"
    else:
        head = f"{pad}* {plan.describe()} [source, batches of {options.batch_rows} rows]"
    return "\n".join([head] + [describe_stages(c, options, depth + 1) for c in plan.inputs()])


def _udf_pools(nodes: list[P.Plan]) -> list[str]:
    """Where each UDF of a chain runs: its own batched stage, on its own pool on the Dask and
    Ray runners when it asks for resources."""
    from mmbeam.expr import ir
    from mmbeam.expr.udf import UdfCall

    exprs = [e for n in nodes for e in (n.exprs if isinstance(n, P.Project) else
                                         (n.predicate,) if isinstance(n, P.Filter) else ())]
    udfs = {id(c.udf): c.udf for e in exprs for c in ir.walk(e) if isinstance(c, UdfCall)}
    lines = []
    for udf in udfs.values():
        asks = [f"{k}={v}" for k, v in (("concurrency", udf.concurrency),
                                         ("num_cpus", udf.num_cpus), ("num_gpus", udf.num_gpus))
                if v is not None]
        lines.append(f"udf {udf.name}: its own batched stage" + (
            f", on its own pool on Dask/Ray ({', '.join(asks)}), streamed from the stage "
            "before" if asks else ", on the workers of the stages around it"))
    return lines


def _chain_nodes(plan: P.Plan) -> list[P.Plan]:
    out = []
    while isinstance(plan, (P.Project, P.Filter, P.Explode)):
        out.append(plan)
        plan = plan.inputs()[0]
    return out
