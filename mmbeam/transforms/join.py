"""``Join``: SQL-style joins of two PCollections of dict rows.

``(left, right) | Join(on="id", how="left")`` keys each side by a tuple of its key values, groups
both with ``CoGroupByKey`` and emits one dict per matched (or kept unmatched) pair. The semantics
are SQL's, with Daft's column layout:

- A row whose key has any ``None`` never matches anything: inner and semi joins drop it, anti
  keeps it, left/right/outer keep it unmatched on its own side. Such rows skip the shuffle.
- Duplicate keys give the cross product of the matching rows.
- Output columns: the key columns (once, coalesced from whichever side matched, with ``on=``;
  left's then right's with ``left_on=``/``right_on=``), then left's other columns, then right's.
  A right column whose name is already taken gets ``right_prefix`` ("right.", as in Daft).
- Rows carry no schema, so each side's columns are the union of the keys of its rows, computed
  from the data (a ``CombineGlobally`` used as a side input). Every output row has every column;
  the side that did not match is ``None``. An empty side contributes no columns (other than its
  key columns named by ``right_on``/``left_on``).
- semi/anti return left rows unchanged, each at most once.

Keys match by value as Beam encodes them, so ``1``, ``1.0`` and ``True`` are different keys.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from mmbeam.errors import ConfigError, SchemaError, describe_element

__all__ = ["Join"]

JOIN_TYPES = ("inner", "left", "right", "outer", "semi", "anti")
_NULL_KEY = "null_key"  # tag of the rows whose key has a None: they can never match


@dataclass(frozen=True)
class _KeySpec:
    """Which columns key each side, and how the output names its columns."""

    left: tuple[str, ...]
    right: tuple[str, ...]
    coalesce: bool  # on=: one key column per pair, value from whichever side is present
    right_prefix: str = "right."


# An output column: (output name, column read from the left row, column read from the right row).
_Entry = tuple[str, "str | None", "str | None"]


# --------------------------------------------------------------------------- pure functions


def _key_of(row: Any, columns: Sequence[str], side: str) -> tuple | None:
    """The hashable join key of ``row``, or ``None`` if any key value is ``None`` (SQL null).

    Raises ``SchemaError`` naming the side, the column and the row when a key column is
    missing, a value cannot be a key (unhashable), or the row is not a dict.
    """
    if not isinstance(row, Mapping):
        raise SchemaError(
            f"Join expects dict rows, but the {side} side has {describe_element(row)} "
            f"({type(row).__name__}); map each element to a dict of columns first"
        )
    values = []
    for column in columns:
        try:
            value = row[column]
        except KeyError:
            raise SchemaError(
                f"Join key column {column!r} is missing from a {side} row "
                f"{describe_element(row)} (its columns: {list(row)}); every {side} row must "
                f"have the key columns {list(columns)}"
            ) from None
        if value is None:
            return None
        try:
            hash(value)
        except TypeError:
            raise SchemaError(
                f"Join key column {column!r} holds an unhashable {type(value).__name__} "
                f"{describe_element(value)} in a {side} row {describe_element(row)}; join keys "
                f"must be hashable values such as str, int, float, bytes or tuple"
            ) from None
        values.append(value)
    return tuple(values)


@functools.lru_cache(maxsize=64)
def _output_layout(
    spec: _KeySpec, left_columns: tuple[str, ...], right_columns: tuple[str, ...]
) -> tuple[_Entry, ...]:
    """The output columns, in order, for sides having ``left_columns`` and ``right_columns``.

    Right columns keep their names unless taken (by a key column, a left column or another
    right column), in which case they get ``right_prefix``, repeated until the name is free.
    """
    if spec.coalesce:
        keys = [(k, k, k) for k in spec.left]
        right_items = [c for c in right_columns if c not in spec.right]
    else:
        keys = [(k, k, None) for k in spec.left]
        right_items = list(spec.right) + [c for c in right_columns if c not in spec.right]
    left_others = [(c, c, None) for c in left_columns if c not in spec.left]
    taken = {name for name, _, _ in keys + left_others}
    names = {}
    for column in right_items:  # first the right columns that keep their name
        if column not in taken:
            names[column] = column
            taken.add(column)
    for column in right_items:  # then the colliding ones, prefixed until free
        if column not in names:
            name = spec.right_prefix + column
            while name in taken:
                name = spec.right_prefix + name
            names[column] = name
            taken.add(name)
    right_entries = [(names[c], None, c) for c in right_items]
    if spec.coalesce:
        return tuple(keys + left_others + right_entries)
    n = len(spec.right)
    return tuple(keys + right_entries[:n] + left_others + right_entries[n:])


def _merge_rows(
    left: Mapping | None, right: Mapping | None, layout: Iterable[_Entry]
) -> dict[str, Any]:
    """One output row from a left and a right row; a missing side (``None``) gives ``None``s.

    A coalesced key column reads the left row when there is one, else the right row.
    """
    out = {}
    for name, left_column, right_column in layout:
        if left is not None and left_column is not None:
            out[name] = left.get(left_column)
        elif right is not None and right_column is not None:
            out[name] = right.get(right_column)
        else:
            out[name] = None
    return out


# --------------------------------------------------------------------------- DoFns


class _ColumnUnionFn(beam.CombineFn):
    """The union of the column names of all rows, in order of first appearance."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, accumulator: dict, row: Any) -> dict:
        if isinstance(row, Mapping):  # non-dict rows are reported by _KeyRowsFn
            for column in row:
                accumulator.setdefault(column, None)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged: dict = {}
        for accumulator in accumulators:
            merged.update(accumulator)
        return merged

    def extract_output(self, accumulator: dict) -> list[str]:
        return list(accumulator)


class _KeyRowsFn(beam.DoFn):
    """Emits ``(key, row)``; rows with a null key go to the ``null_key`` output untouched."""

    def __init__(self, columns: tuple[str, ...], side: str, keep_row: bool = True):
        self._columns = columns
        self._side = side
        self._keep_row = keep_row

    def process(self, row):
        key = _key_of(row, self._columns, self._side)
        if key is None:
            yield pvalue.TaggedOutput(_NULL_KEY, row)
        else:
            yield key, (row if self._keep_row else None)


class _JoinGroupFn(beam.DoFn):
    """Emits the joined rows of one co-grouped key for an inner/left/right/outer join."""

    def __init__(self, spec: _KeySpec, how: str):
        self._spec = spec
        self._keep_left = how in ("left", "outer")
        self._keep_right = how in ("right", "outer")

    def process(self, element, left_columns, right_columns):
        _, grouped = element
        layout = _output_layout(self._spec, tuple(left_columns), tuple(right_columns))
        lefts, rights = list(grouped["left"]), list(grouped["right"])
        if lefts and rights:
            for left in lefts:
                for right in rights:
                    yield _merge_rows(left, right, layout)
        elif lefts and self._keep_left:
            for left in lefts:
                yield _merge_rows(left, None, layout)
        elif rights and self._keep_right:
            for right in rights:
                yield _merge_rows(None, right, layout)


class _UnmatchedFn(beam.DoFn):
    """Pads a row that matched nothing (a null-key row) with ``None`` for the other side."""

    def __init__(self, spec: _KeySpec, side: str):
        self._spec = spec
        self._side = side

    def process(self, row, left_columns, right_columns):
        layout = _output_layout(self._spec, tuple(left_columns), tuple(right_columns))
        if self._side == "left":
            yield _merge_rows(row, None, layout)
        else:
            yield _merge_rows(None, row, layout)


class _SemiAntiFn(beam.DoFn):
    """Emits the left rows of a group if it has right rows (semi) or has none (anti)."""

    def __init__(self, how: str):
        self._want_match = how == "semi"

    def process(self, element):
        _, grouped = element
        matched = any(True for _ in grouped["right"])
        if matched == self._want_match:
            yield from grouped["left"]


# --------------------------------------------------------------------------- the transform


def _names(value: str | Sequence[str] | None, argument: str) -> tuple[str, ...] | None:
    """``"a"`` or ``["a", "b"]`` as a tuple of column names, checked."""
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(
            f"Join({argument}={value!r}) is not a column name or a non-empty list of names"
        )
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"Join({argument}=...) has {name!r}, which is not a column name")
    if len(set(names)) != len(names):
        raise ConfigError(f"Join({argument}={list(names)!r}) names a column twice")
    return tuple(names)


class Join(beam.PTransform):
    """Joins a pair ``(left, right)`` of PCollections of dict rows, with SQL null semantics.

    ``(owners, dogs) | Join(on="full_name")``; ``Join(on=["a", "b"], how="left")``;
    ``Join(left_on="x", right_on="y", how="anti")``. ``how`` is one of inner, left, right,
    outer, semi, anti. See the module docstring for the output columns.
    """

    def __init__(
        self,
        on: str | Sequence[str] | None = None,
        *,
        left_on: str | Sequence[str] | None = None,
        right_on: str | Sequence[str] | None = None,
        how: str = "inner",
        right_prefix: str = "right.",
    ):
        super().__init__()
        if how not in JOIN_TYPES:
            close = difflib.get_close_matches(str(how), JOIN_TYPES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Join(how={how!r}) is not a join type; use one of "
                f"{', '.join(map(repr, JOIN_TYPES))}{hint}"
            )
        on_names = _names(on, "on")
        left_names, right_names = _names(left_on, "left_on"), _names(right_on, "right_on")
        if on_names is not None and (left_names or right_names):
            raise ConfigError(
                f"Join got both on={on!r} and left_on={left_on!r}/right_on={right_on!r}; "
                "use on= when both sides name the key columns alike, else left_on= and right_on="
            )
        if on_names is None and (left_names is None or right_names is None):
            raise ConfigError(
                f"Join needs key columns: on=..., or both left_on= and right_on= "
                f"(got left_on={left_on!r}, right_on={right_on!r})"
            )
        if on_names is None and len(left_names) != len(right_names):
            raise ConfigError(
                f"Join(left_on={list(left_names)!r}, right_on={list(right_names)!r}) pairs "
                f"{len(left_names)} left key columns with {len(right_names)} right ones; "
                "give the same number on both sides"
            )
        if not isinstance(right_prefix, str) or not right_prefix:
            raise ConfigError(f"Join(right_prefix={right_prefix!r}) must be a non-empty string")
        self._how = how
        if on_names is not None:
            self._spec = _KeySpec(on_names, on_names, True, right_prefix)
        else:
            self._spec = _KeySpec(left_names, right_names, False, right_prefix)

    def expand(self, pcolls):
        """Apply this transform (see the class docstring)."""
        if not isinstance(pcolls, (tuple, list)) or len(pcolls) != 2:
            raise ConfigError(
                f"Join is applied to a pair of PCollections, (left, right) | Join(...); "
                f"got {describe_element(pcolls)}"
            )
        left, right = pcolls
        semi = self._how in ("semi", "anti")
        lk = left | "KeyLeft" >> _key_rows(_KeyRowsFn(self._spec.left, "left"))
        rk = right | "KeyRight" >> _key_rows(_KeyRowsFn(self._spec.right, "right", not semi))
        grouped = {"left": lk.keyed, "right": rk.keyed} | "CoGroup" >> beam.CoGroupByKey()
        if semi:  # a null-key left row matches nothing: anti keeps it, semi drops it
            parts = [grouped | "Emit" >> beam.ParDo(_SemiAntiFn(self._how))]
            parts += [lk[_NULL_KEY]] if self._how == "anti" else []
        else:
            cols = (_columns_of(left, "LeftColumns"), _columns_of(right, "RightColumns"))
            parts = [grouped | "Emit" >> beam.ParDo(_JoinGroupFn(self._spec, self._how), *cols)]
            for side, keyed in (("left", lk), ("right", rk)):
                if self._how in (side, "outer"):
                    pad = beam.ParDo(_UnmatchedFn(self._spec, side), *cols)
                    parts.append(keyed[_NULL_KEY] | f"Pad{side.title()}" >> pad)
        return parts[0] if len(parts) == 1 else tuple(parts) | "Flatten" >> beam.Flatten()


def _key_rows(fn: _KeyRowsFn) -> beam.PTransform:
    """``fn`` as a ParDo with a main output ``keyed`` and a ``null_key`` output."""
    return beam.ParDo(fn).with_outputs(_NULL_KEY, main="keyed")


def _columns_of(rows: beam.PCollection, label: str) -> pvalue.AsSingleton:
    """The union of the rows' column names, as a side input (an empty list if no rows)."""
    return pvalue.AsSingleton(rows | label >> beam.CombineGlobally(_ColumnUnionFn()))
