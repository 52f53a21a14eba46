"""Where frames run: the runner choice and execution sizes, in one process-wide context.

``mmbeam.context.set_runner_local()`` (the default) runs plans in this process, or on Beam's
in-process FnApiRunner when they need Beam; other runners plug in with :func:`set_runner` (a
factory returning a Beam runner), which is what ``set_runner_dask`` / ``set_runner_ray`` build
on. :meth:`Context.executor` is what frames ask to run their plans (:mod:`mmbeam.exec`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from mmbeam.errors import ConfigError
from mmbeam.exec.base import Executor
from mmbeam.exec.local import LocalExecutor
from mmbeam.exec.options import ExecOptions

__all__ = [
    "Context",
    "ExecOptions",
    "get_executor",
    "get_context",
    "get_runner",
    "pipeline_options",
    "set_execution_config",
    "set_runner",
    "set_runner_dask",
    "set_runner_local",
    "set_runner_ray",
]


def _local_runner() -> Any:
    from mmbeam.runners.direct import local_runner  # Beam: loaded only when a frame needs it

    return local_runner()


@dataclass
class Context:
    """The current runner (a factory, so each run gets a fresh runner) and execution options."""

    runner_name: str = "local"
    runner_factory: Callable[[], Any] = _local_runner
    exec_options: ExecOptions = field(default_factory=ExecOptions)
    pipeline_flags: dict[str, Any] = field(default_factory=dict)
    #: credentials for the pipeline's --temp_location (portable runners pass results there)
    io_config: Any = None

    def executor(self) -> Executor:
        """The executor for this context: in this process when the runner is the local default
        and the plan allows, else a Beam pipeline on the runner (Beam imported only then)."""
        def beam_executor(why: str = "") -> Executor:
            from mmbeam.exec.beam import BeamExecutor  # Beam: only for plans run on Beam

            return BeamExecutor(self.runner_factory, self.runner_name, self.pipeline_flags,
                                self.exec_options, self.io_config, why)

        if self.runner_name != "local":
            return beam_executor()
        return LocalExecutor(self.exec_options, beam_executor)


_lock = threading.Lock()
_context = Context()


def get_context() -> Context:
    """The process's frame context (runner, IO config, execution options)."""
    return _context


def get_runner() -> Any:
    """A Beam runner for the next frame execution."""
    return _context.runner_factory()


def get_executor() -> Executor:
    """The executor frames run their plans on now (see :meth:`Context.executor`)."""
    return _context.executor()


def set_runner(factory: Callable[[], Any], name: str, io_config: Any = None,
               **pipeline_flags: Any) -> Context:
    """Run frames on the runner ``factory()`` returns; ``pipeline_flags`` become options.

    On a runner whose workers may not share this machine's disk (portable, Flink, Dataflow),
    frames pass inputs and results through ``temp_location`` (a ``gs://``, ``s3://`` or shared
    folder), reached with ``io_config``'s credentials.
    """
    global _context
    if not callable(factory):
        raise ConfigError(f"set_runner needs a callable returning a Beam runner, got {factory!r}")
    with _lock:
        _context = replace(_context, runner_name=name, runner_factory=factory,
                           pipeline_flags=dict(pipeline_flags), io_config=io_config)
    return _context


def set_runner_local() -> Context:
    """Run frames in this process on Beam's FnApiRunner (the default)."""
    return set_runner(_local_runner, "local")


def set_runner_dask(address: str | None = None, **pipeline_flags: Any) -> Context:
    """Run frames on mmbeam's DaskRunner: the scheduler at ``address`` (``tcp://host:8786``),
    or a LocalCluster started (and closed) for each run when ``address`` is None."""
    from mmbeam.runners.dask_runner import DaskRunner  # Beam and Dask: only when chosen

    return set_runner(partial(DaskRunner, address), "dask", **pipeline_flags)


def set_runner_ray(address: str | None = None, **pipeline_flags: Any) -> Context:
    """Run frames on mmbeam's RayRunner: the cluster at ``address`` (``ray://host:10001``), or a
    local ``ray.init()`` when ``address`` is None (reused if Ray is already initialised)."""
    from mmbeam.runners.ray_runner import RayRunner  # Beam and Ray: only when chosen

    return set_runner(partial(RayRunner, address), "ray", **pipeline_flags)


def set_execution_config(**sizes: Any) -> Context:
    """Change batch sizes or partition counts, e.g. ``set_execution_config(num_partitions=8)``."""
    global _context
    known = set(ExecOptions.__dataclass_fields__)
    for key, value in sizes.items():
        if key not in known:
            raise ConfigError(f"unknown execution option {key!r}; known: "
                              f"{', '.join(sorted(known))}")
        if key == "multimodal_batch_rows" and value is None:
            continue
        if key in ("shuffle_files", "in_process"):
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{key} must be True, False or None, not {value!r}")
            continue
        if not isinstance(value, int) or value < (0 if key == "broadcast_bytes" else 1):
            raise ConfigError(f"{key} must be a positive integer, not {value!r}")
    with _lock:
        _context = replace(_context, exec_options=replace(_context.exec_options, **sizes))
    return _context


def pipeline_options() -> Any:
    """Beam PipelineOptions for the current context."""
    from apache_beam.options.pipeline_options import PipelineOptions  # Beam, on demand

    return PipelineOptions([], **_context.pipeline_flags)  # never the script's sys.argv
