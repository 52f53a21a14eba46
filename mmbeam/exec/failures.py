"""Failed rows as data: the failures table of a run in failure-capturing mode.

``Frame.with_exception_handling(columns)`` runs its plan with a :class:`FailureCapture`: every
function whose ``on_error`` is ``"raise"`` (URL/image functions, casts, UDFs) sends a failing row
to the failures table instead of raising (the row leaves the output); a function with
``on_error="null"`` nulls the value and records the failure too, so the table's rows equal the
metrics' ``failures``. One row per failed row:

- the row's identifying columns: ``columns``, or by default every non-image, non-binary column
  of the failing stage's input (columns absent at that stage are null);
- ``stage``: the stage that failed (a URL/image function's stage as the transforms name
  it, ``Download``, ``DecodeImage`` ...; ``cast``; ``udf <name>``), ``error_type`` (the
  mmbeam error class), ``error`` (its message) and ``attempts`` (requests made, for
  downloads; 1 otherwise).

Operators record failures in a :class:`RowFailures` while they evaluate a batch and turn them
into rows with :func:`failure_rows`. On Beam, failure batches travel to the driver beside the
result under keys starting with :data:`FAILURE_KEY`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mmbeam.types import DataType

__all__ = [
    "FAILURE_FIELDS",
    "FAILURE_KEY",
    "FAILURES",
    "FailureCapture",
    "RowFailures",
    "attempts_of",
    "concat_failures",
    "failure_rows",
    "is_failure_key",
]

FAILURE_FIELDS = pa.schema([("stage", pa.string()), ("error_type", pa.string()),
                            ("error", pa.string()), ("attempts", pa.int64())])

#: the first key element of a failure batch in a Beam run's result channel
FAILURE_KEY = 1 << 62
#: the tag of a Beam stage's failed-rows output
FAILURES = "failures"


def is_failure_key(key: tuple) -> bool:
    """Whether a result channel key holds a failure batch (not result rows)."""
    return bool(key) and key[0] == FAILURE_KEY


@dataclass(frozen=True)
class FailureCapture:
    """Failure-capturing mode: ``columns`` name each failed row (None: the default, see the
    module doc)."""

    columns: tuple[str, ...] | None = None


class RowFailures:
    """The failures of the rows of one batch being evaluated: row index → (stage, error,
    attempts); the first failure of a row wins. ``kept`` rows were nulled (on_error="null")
    and stay in the output; the others leave it. Thread-safe."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, BaseException, bool]] = {}
        self._lock = threading.Lock()

    def record(self, row: int, stage: str, error: BaseException, kept: bool) -> None:
        """Row ``row`` failed in ``stage`` with ``error`` (``kept``: nulled, not dropped)."""
        with self._lock:
            self.rows.setdefault(row, (stage, error, kept))

    def dropped(self) -> list[int]:
        """The rows that leave the output, in order."""
        return sorted(i for i, (_, _, kept) in self.rows.items() if not kept)

    def __len__(self) -> int:
        return len(self.rows)


def _identifying(table: pa.Table, columns: tuple[str, ...] | None) -> list[str]:
    if columns is not None:
        return [c for c in columns if c in table.column_names]
    keep = []
    for field in table.schema:
        dtype = DataType.from_arrow(field.type)
        if not (dtype.is_image() or dtype.is_tensor() or dtype.kind == "binary"):
            keep.append(field.name)
    return keep


def attempts_of(error: BaseException) -> int:
    """Requests a failed download made (its ``attempts``), else 1."""
    return int(getattr(error, "attempts", None) or 1)


def failure_rows(table: pa.Table, failures: RowFailures, capture: FailureCapture) -> pa.Table:
    """One failure row per failed row of ``table`` (the batch the failures' indexes refer to)."""
    order = sorted(failures.rows)
    ident = table.select(_identifying(table, capture.columns)).take(pa.array(order, pa.int64()))
    stages, types, messages, attempts = [], [], [], []
    for i in order:
        stage, error, _ = failures.rows[i]
        stages.append(stage)
        types.append(type(error).__name__)
        messages.append(str(error))
        attempts.append(attempts_of(error))
    fixed = [pa.array(stages, pa.string()), pa.array(types, pa.string()),
             pa.array(messages, pa.string()), pa.array(attempts, pa.int64())]
    return pa.Table.from_arrays(list(ident.columns) + fixed,
                                names=ident.column_names + FAILURE_FIELDS.names)


def concat_failures(tables: list[Any], columns: tuple[str, ...] | None = None) -> pa.Table:
    """The failure tables (or record batches) of a run as one table: identifying columns
    unified by name (null where a stage lacked one), then the fixed fields."""
    tables = [pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t
              for t in tables if t.num_rows]
    if not tables:
        names = list(columns or ())
        return pa.Table.from_arrays([pa.array([], pa.null()) for _ in names] + [
            pa.array([], f.type) for f in FAILURE_FIELDS], names=names + FAILURE_FIELDS.names)
    whole = pa.concat_tables(tables, promote_options="default")
    ident = [n for n in whole.column_names if n not in FAILURE_FIELDS.names]
    return whole.select(ident + FAILURE_FIELDS.names)
