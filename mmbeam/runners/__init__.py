"""Beam runners for mmbeam pipelines.

- ``local_runner()`` / ``local_pipeline()``: Beam's in-process FnApiRunner (the default).
- ``DaskRunner``: fused stages as tasks on a ``distributed`` cluster (a LocalCluster by default).
- ``RayRunner``: the same on Ray actors (a local ``ray.init()`` by default).

Both distributed runners share :mod:`mmbeam.runners.core` (Beam's fusion and SDK harness, data
kept on the workers, autotuned task sizes); Dask and Ray are imported only when a run starts.
"""

from mmbeam.runners.core import DistributedResult, DistributedRunner, DistributedRunnerOptions
from mmbeam.runners.dask_runner import DaskOptions, DaskRunner
from mmbeam.runners.direct import local_pipeline, local_runner
from mmbeam.runners.ray_runner import RayOptions, RayRunner

__all__ = [
    "DaskOptions",
    "DaskRunner",
    "DistributedResult",
    "DistributedRunner",
    "DistributedRunnerOptions",
    "RayOptions",
    "RayRunner",
    "local_pipeline",
    "local_runner",
]
