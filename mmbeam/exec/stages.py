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


def _chain_nodes(plan: P.Plan) -> list[P.Plan]:
    out = []
    while isinstance(plan, (P.Project, P.Filter, P.Explode)):
        out.append(plan)
        plan = plan.inputs()[0]
    return out
