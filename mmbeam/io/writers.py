"""Write Arrow tables as Parquet or CSV files under a folder (local, s3://, gs://).

Each call writes one file per hive partition value (``key=value/`` folders when
``partition_cols`` are given) with a unique name, so parallel workers never collide. A file
appears whole or not at all, even if the writer is killed, so readers never see a partial file.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from mmbeam.errors import ConfigError, UnsupportedError
from mmbeam.io.atomic import check_inside, write_atomic
from mmbeam.io.filesystems import filesystem_for, split_protocol

__all__ = ["FIXED_SIZE_LISTS", "WriteSpec", "parquet_safe", "write_table"]

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class WriteSpec:
    """Where and how to write: format (``parquet``/``csv``), root folder, partition columns;
    ``name_prefix`` starts every file name (a run's token, so the run can find its own files)."""

    format: str
    root: str
    partition_cols: tuple[str, ...] = ()
    io_config: Any = None
    name_prefix: str = ""

    def __post_init__(self) -> None:
        if self.format not in ("parquet", "csv"):
            raise ConfigError(f"unknown file format {self.format!r}; use 'parquet' or 'csv'")


def _value_text(value: Any) -> str:
    return HIVE_NULL if value is None else quote(str(value), safe="")


def _encode(table: pa.Table, fmt: str) -> bytes:
    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(parquet_safe(table), sink)
    else:
        import pyarrow.csv as pcsv

        for field in table.schema:
            t = field.type
            if isinstance(t, pa.ExtensionType) or pa.types.is_nested(t) or \
                    pa.types.is_binary(t) or pa.types.is_large_binary(t):
                raise UnsupportedError(f"CSV cannot hold column {field.name!r} of type "
                                       f"{t}; use write_parquet")
        pcsv.write_csv(table, sink)
    return sink.getvalue().to_pybytes()


def _write_one(fs: Any, protocol: str, root: str, path: str, table: pa.Table, fmt: str) -> None:
    """Encode in memory, then write in one atomic step: a local file linked into place
    (:func:`mmbeam.io.atomic.write_atomic`), or one object upload (a single PUT, or a multipart
    upload that only becomes visible when complete)."""
    data = _encode(table, fmt)
    if protocol == "file":
        check_inside(root, path)
        write_atomic(path, data)
    else:
        fs.pipe_file(path, data)


#: schema metadata naming the fixed-size-list columns stored as lists, with their sizes
FIXED_SIZE_LISTS = b"mmbeam.fixed_size_lists"


def parquet_safe(table: pa.Table) -> pa.Table:
    """``table`` with fixed-size-list columns stored as lists (sizes kept in the metadata).

    pyarrow 25 writes a fixed-size list column holding nulls to Parquet but cannot read it back
    ("Expected all lists to be of size=N"); :mod:`mmbeam.io.readers` restores the type.
    """
    sizes = {f.name: f.type.list_size for f in table.schema
             if pa.types.is_fixed_size_list(f.type)}
    if not sizes:
        return table
    for name in sizes:
        i = table.schema.get_field_index(name)
        value = table.schema.field(i).type.value_type
        table = table.set_column(i, name, table.column(i).cast(pa.large_list(value)))
    meta = dict(table.schema.metadata or {})
    meta[FIXED_SIZE_LISTS] = json.dumps(sizes).encode()
    return table.replace_schema_metadata(meta)


def write_table(table: pa.Table, spec: WriteSpec) -> list[str]:
    """Write ``table`` under ``spec.root``; the written paths (URLs for remote stores)."""
    protocol, root = split_protocol(spec.root)
    fs = filesystem_for(protocol, spec.io_config)
    ext = "parquet" if spec.format == "parquet" else "csv"
    name = f"{spec.name_prefix}{uuid.uuid4().hex}-0.{ext}"
    groups: list[tuple[str, pa.Table]] = []
    if spec.partition_cols:
        keys = table.select(list(spec.partition_cols))
        uniq = keys.group_by(list(spec.partition_cols), use_threads=False).aggregate([])
        data_cols = [c for c in table.column_names if c not in spec.partition_cols]
        for row in uniq.to_pylist():
            mask = None
            for k, v in row.items():
                cond = pc.is_null(table.column(k)) if v is None else pc.equal(table.column(k), v)
                mask = cond if mask is None else pc.and_(mask, cond)
            part = table.filter(mask).select(data_cols)
            folder = "/".join(f"{k}={_value_text(v)}" for k, v in row.items())
            groups.append((folder, part))
    else:
        groups.append(("", table))
    written = []
    for folder, part in groups:
        path = posixpath.join(root, folder, name) if folder else posixpath.join(root, name)
        _write_one(fs, protocol, root, path, part, spec.format)
        written.append(path if protocol == "file" else f"{protocol}://{path}")
    return written
