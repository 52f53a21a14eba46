"""Every use of Apache Beam's internal (undocumented) APIs in mmbeam, behind one module.

Beam's public API cannot tell which transforms read a PCollection, nor rebuild a runner's
grouping buffer on another worker, nor hand the FnApiRunner's own flags to its stage phases.
mmbeam needs these for the reduced-scale decode (a decode learns whether only resizes read it)
and for its Dask and Ray runners; every private attribute of Beam that mmbeam touches is read
here, so there is one file to check when Beam changes. (The runners import Beam's runner
modules, such as ``fn_api_runner.translations``, directly: those are modules, not private
names.)
"""

from __future__ import annotations

from typing import Any

__all__ = ["consumers", "grouped_keys", "grouping_args", "set_state_sampling_period",
           "stage_flags"]


def consumers(pcoll: Any) -> list[Any]:
    """The leaf applied transforms of ``pcoll``'s pipeline that read ``pcoll`` (as main or side
    input); complete only once the whole pipeline is built (e.g. when it is serialized to run).

    Walks ``Pipeline.transforms_stack`` and ``AppliedPTransform.parts``/``inputs``/
    ``side_inputs``, which Beam does not document."""
    found = []
    stack = [pcoll.pipeline.transforms_stack[0]]
    while stack:
        node = stack.pop()
        if node.parts:
            stack.extend(node.parts)
            continue
        reads = list(node.inputs) + [getattr(s, "pvalue", None) for s in node.side_inputs]
        if any(r is pcoll for r in reads):
            found.append(node)
    return found


def grouping_args(grouping: Any) -> tuple[Any, Any, Any]:
    """What rebuilds a FnApiRunner ``GroupingBuffer`` elsewhere: its pre- and post-grouping
    coders and its windowing (private attributes of the buffer)."""
    return grouping._pre_grouped_coder, grouping._post_grouped_coder, grouping._windowing


def grouped_keys(buffer: Any) -> int:
    """The number of keys a ``GroupingBuffer`` holds (its private table)."""
    return len(buffer._table)


def stage_flags(runner: Any) -> dict[str, bool]:
    """The FnApiRunner's own flags for ``create_and_optimize_stages`` (private attributes)."""
    return {"use_state_iterables": runner._use_state_iterables, "is_drain": runner._is_drain}


def set_state_sampling_period(ms: int) -> None:
    """Make the bundle processors created from now on in this process sample their states
    every ``ms`` at most (Beam's default: 200 ms). Each bundle's end joins the sampler thread,
    which wakes only when its sleep ends, so a worker task ends with an idle wait of up to the
    sampler's current period (~30-100 ms for a 0.3-1 s task). Sets the default argument of
    ``statesampler.StateSampler``, which ``BundleProcessor`` creates without passing one."""
    from apache_beam.runners.worker import statesampler

    defaults = statesampler.StateSampler.__init__.__defaults__
    if defaults != (ms,):
        assert defaults is not None and len(defaults) == 1, defaults  # Beam changed: look again
        statesampler.StateSampler.__init__.__defaults__ = (ms,)
