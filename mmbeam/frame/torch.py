"""A frame as a ``torch.utils.data.IterableDataset`` (Daft's ``to_torch_iter_dataset``).

With ``DataLoader(num_workers=N)`` each worker process runs its own share of the frame in
process: the plan gets a :class:`~mmbeam.plan.nodes.Shard` right above its source, so a worker
reads the source, keeps every N-th block of 64 rows and downloads and decodes only those. The
shares hold every row exactly once. A plan that cannot be cut this way (a join, group-by, sort,
distinct, limit or UDF, or a cluster runner) is run once when the dataset is made, and the
workers share its rows. Imported only when used: torch is optional.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmbeam.frame.context import get_context
from mmbeam.frame.iterators import table_to_rows
from mmbeam.plan import nodes as P
from mmbeam.plan.optimizer import optimize

__all__ = ["FrameIterableDataset", "shardable"]

#: rows per block handed round-robin to the DataLoader's workers
SHARD_ROWS = 64


def shardable(plan: P.Plan) -> bool:
    """Whether ``plan`` is per-row work over one in-memory table or file scan (so any cut of its
    source's rows gives the same cut of its own)."""
    node = plan
    while isinstance(node, (P.Project, P.Filter, P.Explode)):
        node = node.inputs()[0]
    return isinstance(node, (P.InMemory, P.Scan)) and not (
        isinstance(node, P.Scan) and node.limit is not None)


def _with_shard(plan: P.Plan, index: int, count: int) -> P.Plan:
    if isinstance(plan, (P.Project, P.Filter, P.Explode)):
        return plan.with_inputs(_with_shard(plan.inputs()[0], index, count))
    return P.Shard(plan, index, count, SHARD_ROWS)


def _tensor(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))  # a writable copy of Arrow's read-only view
    if isinstance(value, (bool, int, float)):
        return torch.tensor(value)
    return value


class FrameIterableDataset(IterableDataset):
    """The rows of a frame as dicts of column → value: images and tensors as torch tensors
    (images uint8 H×W×C), numbers as 0-d tensors, strings and nulls unchanged."""

    def __init__(self, frame: Any):
        super().__init__()
        self.columns = frame.column_names
        plan = optimize(frame._plan)
        if frame.is_materialized():
            plan = P.InMemory(frame.to_arrow())
        elif not (shardable(plan) and get_context().executor().in_process(plan)):
            plan = P.InMemory(frame.to_arrow())  # run once; the workers share its rows
        self.plan = plan

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        plan = self.plan
        if info is not None and info.num_workers > 1:
            plan = _with_shard(plan, info.id, info.num_workers)
        stream = get_context().executor().stream(plan)
        try:
            for table in stream:
                for row in table_to_rows(table.select(self.columns)):
                    yield {k: _tensor(v) for k, v in row.items()}
        finally:
            stream.close()
