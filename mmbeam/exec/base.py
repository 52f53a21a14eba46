"""The executor interface: what a frame asks of whatever runs its plans.

A frame hands its optimized plan and a sink to the context's :class:`Executor`: ``run`` gives
back an :class:`Outcome` (the rows, or the table of written paths, and the rows nulled per
operation); ``explain`` says how the plan would run. The frame knows no runner: in-process
streams (:mod:`mmbeam.exec.local`) and Beam pipelines (:mod:`mmbeam.exec.beam`) sit behind this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmbeam.plan import nodes as P

__all__ = ["Collect", "Executor", "Outcome", "Sink", "WriteFiles"]


@dataclass(frozen=True)
class Collect:
    """Bring every row back to the caller (``collect``, ``show``, ``to_*``, ``count_rows``)."""


@dataclass(frozen=True)
class WriteFiles:
    """Write the rows as files (a :class:`~mmbeam.io.writers.WriteSpec`); bring back the table
    of written paths (one ``path`` column)."""

    spec: Any


Sink = Collect | WriteFiles

PATHS_SCHEMA = pa.schema([("path", pa.large_string())])


@dataclass
class Outcome:
    """What a run gives back: the result table, the rows nulled per operation and the
    per-operator metrics (:mod:`mmbeam.exec.metrics`; None where the executor has none)."""

    table: pa.Table
    nulled: dict[str, int] = field(default_factory=dict)
    metrics: pa.Table | None = None
    #: the failures table of a run capturing failures (mmbeam.exec.failures), else None
    failures: pa.Table | None = None


class Executor:
    """Runs optimized plans into sinks; subclasses implement both methods."""

    def run(self, plan: P.Plan, sink: Sink, capture: Any = None) -> Outcome:
        """Run ``plan`` into ``sink``; with ``capture`` (a
        :class:`~mmbeam.exec.failures.FailureCapture`) failed rows go to ``Outcome.failures``."""
        raise NotImplementedError

    def in_process(self, plan: P.Plan) -> bool:
        """Whether ``plan`` runs in this process (as a stream of Arrow operators)."""
        return False

    def stream(self, plan: P.Plan, done: Callable[[Outcome], None] | None = None,
               capture: Any = None) -> Iterator[pa.Table]:
        """The rows of ``plan`` as a stream of tables, in order; closing the stream early stops
        the work where the executor can. ``done`` gets the run's :class:`Outcome` (its null
        counts and metrics; no rows) once they are known. This default runs the whole plan
        first."""
        outcome = self.run(plan, Collect(), capture)
        table = outcome.table
        if done is not None:
            done(Outcome(table.schema.empty_table(), outcome.nulled, outcome.metrics,
                         outcome.failures))
        for batch in table.to_batches():
            yield pa.Table.from_batches([batch])

    def explain(self, plan: P.Plan, show_all: bool = False) -> str:
        """How an optimized plan runs: the ``== Execution ==`` section of ``Frame.explain``, and
        with ``show_all`` a ``== Physical stages ==`` section."""
        raise NotImplementedError


def result_schema(plan: P.Plan, sink: Sink) -> pa.Schema:
    """The Arrow schema of what ``sink`` gives back for ``plan``."""
    return PATHS_SCHEMA if isinstance(sink, WriteFiles) else plan.schema.to_arrow()
