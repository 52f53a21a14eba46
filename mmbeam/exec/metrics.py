"""Per-operator metrics of one run, as a small Arrow table (Daft's ``df.metrics`` as the anchor).

One row per operator of the executed plan (a source, a stage of per-row work, a join ...):

- ``rows_in`` / ``rows_out``: rows the operator read from its inputs and gave on;
- ``nulls``: values set to null by ``on_error="null"``;
- ``failures``: rows a function failed on (nulled, or sent to the failures table of
  ``with_exception_handling``);
- ``seconds``: time spent in the operator itself (its inputs' time not included);
- ``peak_bytes``: the most Arrow bytes the operator held at once (batches in flight in a
  stage, the materialized input of a join/sort/group-by), as a lower bound of its memory.

The in-process executor fills :class:`RunMetrics` as it streams (and feeds the progress bars);
a Beam run reports the same numbers as Beam counters in one namespace per operator
(:class:`OperatorCounters`), read back from the pipeline result by :func:`from_beam_result`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmbeam.exec import operators
from mmbeam.expr import ir
from mmbeam.plan import nodes as P

__all__ = [
    "METRICS_SCHEMA",
    "OperatorCounters",
    "OperatorMetrics",
    "RunMetrics",
    "from_beam_result",
    "operator_kind",
    "unique_name",
]

METRICS_SCHEMA = pa.schema([
    ("operator", pa.string()),
    ("rows_in", pa.int64()),
    ("rows_out", pa.int64()),
    ("nulls", pa.int64()),
    ("failures", pa.int64()),
    ("seconds", pa.float64()),
    ("peak_bytes", pa.int64()),
])

#: Beam counter names in an operator's namespace (seconds are counted in microseconds)
_COUNTERS = ("rows_in", "rows_out", "nulls", "failures", "micros")


@dataclass
class OperatorMetrics:
    """What one operator did in a run (``seconds`` includes its inputs' until :meth:`table`)."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    nulls: int = 0
    failures: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0
    inputs: list[str] = field(default_factory=list)


class RunMetrics:
    """The operators of one in-process run, in the order they were made; reports each update
    to ``progress`` (a :class:`mmbeam.progress.Progress`, one bar per operator)."""

    def __init__(self, progress: Any = None):
        self.operators: dict[str, OperatorMetrics] = {}
        self.progress = progress
        self._lock = threading.Lock()

    def add(self, kind: str) -> str:
        """A new operator of ``kind``; its unique name (``kind``, then ``kind#2`` ...)."""
        with self._lock:
            name = unique_name(kind, self.operators)
            self.operators[name] = OperatorMetrics(name)
            return name

    def update(self, name: str, *, rows_in: int = 0, rows_out: int = 0, nulls: int = 0,
               failures: int = 0, seconds: float = 0.0, held_bytes: int | None = None) -> None:
        """Add to operator ``name``'s counts (``held_bytes``: its bytes held now, for the
        peak) and report the change to the progress display."""
        with self._lock:
            op = self.operators[name]
            op.rows_in += rows_in
            op.rows_out += rows_out
            op.nulls += nulls
            op.failures += failures
            op.seconds += seconds
            if held_bytes is not None:
                op.peak_bytes = max(op.peak_bytes, held_bytes)
        if self.progress is not None and (rows_out or failures or held_bytes):
            self.progress.update(name, done=rows_out, failed=failures, inflight_bytes=held_bytes)

    def table(self) -> pa.Table:
        """One row per operator (sources first); an operator's rows in are its inputs' rows out,
        its seconds exclude its inputs'."""
        rows = []
        with self._lock:
            for op in reversed(self.operators.values()):  # sources first, as Beam's
                inputs = [self.operators[i] for i in op.inputs]
                rows_in = sum(i.rows_out for i in inputs) if inputs else op.rows_in
                seconds = max(0.0, op.seconds - sum(i.seconds for i in inputs))
                rows.append((op.name, rows_in, op.rows_out, op.nulls, op.failures, seconds,
                             op.peak_bytes))
        return _table(rows)


def operator_kind(plan: P.Plan) -> str:
    """An operator's name in metrics and progress: the node type, and for per-row work the
    URL/image functions it runs (``Project[url.download>image.decode]``)."""
    kind = type(plan).__name__
    calls = getattr(plan, "calls", None)  # a UdfApply: the UDFs it calls
    if calls is not None:
        return "Udf[" + "+".join(call.udf.name for _, call in calls) + "]"
    if isinstance(plan, (P.Project, P.Filter, P.Explode)):
        ops, _, _ = operators.row_ops(plan)
        kind = "+".join(dict.fromkeys(k.capitalize() for k, _ in ops))
        exprs = tuple(e for k, arg in ops if k == "project" for e in arg) + tuple(
            arg for k, arg in ops if k == "filter")
        names = [n.name for e in exprs for n in ir.walk(e)
                 if isinstance(n, ir.Function) and n.name.startswith(("url.", "image."))]
        if names:
            kind += "[" + ">".join(dict.fromkeys(reversed(names))) + "]"
    return kind


def unique_name(kind: str, taken: Any) -> str:
    """``kind``, or ``kind#2``, ``kind#3`` ... whichever is not in ``taken`` yet."""
    name, n = kind, 1
    while name in taken:
        n += 1
        name = f"{kind}#{n}"
    return name


def _table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(METRICS_SCHEMA)
    return pa.Table.from_arrays([pa.array(list(c), f.type) for c, f in zip(
        columns, METRICS_SCHEMA, strict=True)], schema=METRICS_SCHEMA)


class OperatorCounters:
    """An operator's Beam counters (namespace = the operator's name), made in a DoFn's
    ``setup``; :func:`from_beam_result` reads them back."""

    def __init__(self, name: str):
        from apache_beam.metrics import Metrics  # Beam: only on the Beam path

        self.name = name
        self._counters = {c: Metrics.counter(name, c) for c in _COUNTERS}
        self._bytes = Metrics.distribution(name, "held_bytes")

    def update(self, *, rows_in: int = 0, rows_out: int = 0, nulls: int = 0, failures: int = 0,
               seconds: float = 0.0, held_bytes: int | None = None) -> None:
        """Increment the counters (as :meth:`RunMetrics.update`); call on the bundle's thread."""
        for key, value in (("rows_in", rows_in), ("rows_out", rows_out), ("nulls", nulls),
                           ("failures", failures), ("micros", int(seconds * 1e6))):
            if value:
                self._counters[key].inc(value)
        if held_bytes is not None:
            self._bytes.update(held_bytes)


def from_beam_result(result: Any, names: list[str]) -> pa.Table:
    """The metrics table of a Beam run whose operators ``names`` used :class:`OperatorCounters`
    (committed values where the runner has them, else attempted)."""
    values: dict[str, dict[str, float]] = {n: {} for n in names}
    try:
        found = result.metrics().query()
    except Exception:  # noqa: BLE001 - a runner without metrics gives an all-zero table
        found = {"counters": [], "distributions": []}
    for m in found.get("counters", []):
        ns = m.key.metric.namespace
        if ns in values:
            value = m.committed if m.committed is not None else m.attempted
            values[ns][m.key.metric.name] = values[ns].get(m.key.metric.name, 0) + int(value or 0)
    for m in found.get("distributions", []):
        ns = m.key.metric.namespace
        if ns in values and m.key.metric.name == "held_bytes":
            dist = m.committed if m.committed is not None else m.attempted
            values[ns]["peak_bytes"] = max(values[ns].get("peak_bytes", 0),
                                           int(getattr(dist, "max", 0) or 0))
    return _table([(n, int(v.get("rows_in", 0)), int(v.get("rows_out", 0)),
                    int(v.get("nulls", 0)), int(v.get("failures", 0)),
                    v.get("micros", 0) / 1e6, int(v.get("peak_bytes", 0)))
                   for n, v in values.items()])
