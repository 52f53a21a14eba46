"""The executor interface: what a frame asks of whatever runs its plans.

A frame hands its optimized plan and a sink to the context's :class:`Executor`: ``run`` gives
back an :class:`Outcome` (the rows, or the table of written paths, and the rows nulled per
operation); ``explain`` says how the plan would run. The frame knows no runner: in-process
streams (:mod:`mmbeam.exec.local`) and Beam pipelines (:mod:`mmbeam.exec.beam`) sit behind this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmbeam.plan import nodes as P

__all__ = ["Collect", "Executor", "Outcome", "Sink", "WriteFiles", "log_counts"]

_log = logging.getLogger("mmbeam.frame")


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
    """What a run gives back: the result table, the rows nulled per operation (URL/image
    stage or UDF), what each URL/image stage did (``{stage: {"succeeded", "failed", "nulls",
    "bytes"}}``, the counters the Beam transforms report), the per-operator metrics
    (:mod:`mmbeam.exec.metrics`; None where the executor has none) and, capturing failures,
    the failures table (:mod:`mmbeam.exec.failures`; else None)."""

    table: pa.Table
    nulled: dict[str, int] = field(default_factory=dict)
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    metrics: pa.Table | None = None
    failures: pa.Table | None = None


def log_counts(stages: dict[str, Any], udfs: dict[str, int] | None = None) \
        -> dict[str, dict[str, int]]:
    """Log the rows each stage (and UDF) set to null, as warnings; ``stages`` as plain dicts."""
    nulled = {stage: counts.get("nulls", 0) for stage, counts in stages.items()}
    for op, n in {**nulled, **(udfs or {})}.items():
        if n:
            _log.warning("%s: %d row(s) set to null by on_error='null'", op, n)
    return {stage: dict(counts) for stage, counts in stages.items()}


class Executor:
    """Runs optimized plans into sinks; subclasses implement both methods."""

    def run(self, plan: P.Plan, sink: Sink, capture: Any = None) -> Outcome:
        """Run an optimized plan into ``sink``; with ``capture`` (a
        :class:`~mmbeam.exec.failures.FailureCapture`) failed rows go to ``Outcome.failures``."""
        raise NotImplementedError

    def in_process(self, plan: P.Plan) -> bool:
        """Whether ``plan`` runs in this process (as a stream of Arrow operators)."""
        return False

    def stream(self, plan: P.Plan, done: Callable[[Outcome], None] | None = None,
               capture: Any = None) -> Iterator[pa.Table]:
        """The rows of ``plan`` as a stream of tables, in order (an executor that streams a
        distributed run's tasks as they finish may give them in that order and says so);
        closing the stream early stops the work where the executor can. ``done`` gets the
        run's :class:`Outcome` (its null counts and metrics; no rows) once they are known. This
        default runs the whole plan first."""
        outcome = self.run(plan, Collect(), capture)
        table = outcome.table
        if done is not None:
            done(Outcome(table.schema.empty_table(), outcome.nulled, outcome.stages,
                         outcome.metrics, outcome.failures))
        for batch in table.to_batches():
            yield pa.Table.from_batches([batch])

    def explain(self, plan: P.Plan, show_all: bool = False) -> str:
        """How an optimized plan runs: the ``== Execution ==`` section of ``Frame.explain``, and
        with ``show_all`` a ``== Physical stages ==`` section."""
        raise NotImplementedError


def result_schema(plan: P.Plan, sink: Sink) -> pa.Schema:
    """The Arrow schema of what ``sink`` gives back for ``plan``."""
    return PATHS_SCHEMA if isinstance(sink, WriteFiles) else plan.schema.to_arrow()
