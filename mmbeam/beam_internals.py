"""Every use of Apache Beam's internal (undocumented) APIs in mmbeam, behind one module.

Beam's public API cannot tell which transforms read a PCollection, nor run its FnApiRunner's
fusion phases, nor pickle a DoFn as the SDK does. mmbeam needs these for the reduced-scale decode
(a decode learns whether only resizes read it) and for its runners; keeping them here means one
file to check when Beam changes. The runners' Fn API plumbing (``runners/core.py``,
``runners/worker.py``, ``runners/fusion.py``) imports Beam's runner modules, which are public
modules, directly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["consumers"]


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
