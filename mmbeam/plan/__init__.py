"""Logical plans: immutable nodes (:mod:`~mmbeam.plan.nodes`), the optimizer, the UDF split.

Pure: nothing here imports Beam or an engine. Frames build plans; executors run them.
"""

from mmbeam.plan import nodes
from mmbeam.plan.optimizer import optimize
from mmbeam.plan.udfs import UdfApply, split_udfs

__all__ = ["UdfApply", "nodes", "optimize", "split_udfs"]
