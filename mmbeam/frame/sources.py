"""Frames from Python, Arrow, pandas, files and PCollections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from mmbeam.errors import ConfigError, SchemaError
from mmbeam.exec.arrow import column_to_arrow, is_image
from mmbeam.frame.frame import Frame
from mmbeam.io.readers import CsvSource, GlobSource, ParquetSource
from mmbeam.plan import nodes as P
from mmbeam.types import DataType, Schema, normalize_table

__all__ = [
    "column_to_arrow",
    "from_arrow",
    "from_glob_path",
    "from_pandas",
    "from_pcollection",
    "from_pydict",
    "from_pylist",
    "read_csv",
    "read_parquet",
]


def from_pydict(data: Mapping[str, Any]) -> Frame:
    """A frame from ``{"column": [values...]}`` (numpy image arrays become an Image column)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"from_pydict takes a dict of column -> values, got {type(data)}")
    cols = {str(k): column_to_arrow(v) for k, v in data.items()}
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise SchemaError(f"columns have different lengths: {lengths}")
    return Frame(P.InMemory(pa.table(cols) if cols else pa.table({})))


def from_pylist(rows: Sequence[Mapping[str, Any]]) -> Frame:
    """A frame from a list of row dicts; a key missing from a row is null there."""
    names: dict[str, None] = {}
    for r in rows:
        if not isinstance(r, Mapping):
            raise ConfigError(f"from_pylist takes a list of dicts, got an element {r!r}")
        names.update(dict.fromkeys(r))
    return from_pydict({n: [r.get(n) for r in rows] for n in names})


def from_arrow(data: pa.Table | pa.RecordBatch | Iterable[pa.Table | pa.RecordBatch]) -> Frame:
    """A frame from an Arrow table, record batch, or a list of them with one schema."""
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        table = normalize_table(data)
    else:
        parts = [normalize_table(t) for t in data]
        if not parts:
            raise ConfigError("from_arrow needs at least one table or record batch")
        table = pa.concat_tables(parts)
    return Frame(P.InMemory(table))


def from_pandas(df: Any) -> Frame:
    """A frame from a pandas DataFrame (the index is dropped)."""
    import pandas as pd  # optional: only for from_pandas

    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"from_pandas takes a pandas DataFrame, got {type(df)}")
    data = {}
    for name in df.columns:
        series = df[name]
        if series.dtype == object and any(is_image(v) for v in series):
            data[str(name)] = column_to_arrow(list(series))
        else:
            data[str(name)] = column_to_arrow(pa.Array.from_pandas(series))
    return from_pydict(data)


def from_pcollection(pcoll: Any, schema: Schema | Mapping[str, DataType]) -> Frame:
    """A frame over a Beam PCollection of dict rows (or Arrow record batches) with ``schema``."""
    if not isinstance(schema, Schema):
        schema = Schema.from_pydict(schema)
    return Frame(P.FromPCollection(pcoll, schema))


def read_parquet(path: str | Sequence[str], io_config: Any = None,
                 hive_partitioning: bool = True) -> Frame:
    """A frame over Parquet files: a file, a folder, a glob (``**`` recurses), hive folders."""
    return Frame(P.Scan(ParquetSource.create(path, io_config, hive_partitioning)))


def read_csv(path: str | Sequence[str], io_config: Any = None, delimiter: str = ",",
             has_headers: bool = True, hive_partitioning: bool = True) -> Frame:
    """A frame over CSV files (same path forms as :func:`read_parquet`)."""
    return Frame(P.Scan(CsvSource.create(path, io_config, hive_partitioning,
                                         delimiter=delimiter, has_headers=has_headers)))


def from_glob_path(pattern: str, io_config: Any = None) -> Frame:
    """One row per file matching ``pattern``: its ``path`` and ``size`` in bytes."""
    return Frame(P.Scan(GlobSource.create(pattern, io_config)))
