"""File sources for frames: Parquet, CSV and file listings, on local disk, s3:// and gs://.

A path is a file, a folder (read recursively), or a glob (``**`` recurses). Folders named
``key=value`` (hive partitioning) become columns. Sources are small picklable values: the file
list and the ``IOConfig``; workers open files through :func:`mmbeam.io.filesystems.filesystem_for`.
Each source offers ``schema``, ``tasks(limit)`` (one per file), ``read(task, columns, rows)``
and ``count_rows()``.

Parquet files with different schemas are unified by column name (the footer of every file is
read when the source is made): a column missing from some files is null in their rows; a column
whose types cannot be unified (``int64`` and ``string``) is a SchemaError naming both files, and
so are two names that differ only in case (``url`` in one file, ``URL`` in another), which would
otherwise become two half-null columns. At read time a file lacking a column it had when the read
was planned is a SchemaError, and every other read failure is a ReadError naming the file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import difflib
import json
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from mmbeam.errors import ConfigError, MmbeamError, ReadError, SchemaError
from mmbeam.io.filesystems import filesystem_for, split_protocol
from mmbeam.types import DataType, Schema, normalize_table

__all__ = ["CsvSource", "FileTask", "GlobSource", "ParquetSource", "list_files"]

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class FileTask:
    """One file to read, its hive partition values, and the columns of the source's unified
    schema it lacks (null in its rows)."""

    path: str
    size: int
    partitions: tuple[tuple[str, Any], ...] = ()
    missing: tuple[str, ...] = ()


def _url(protocol: str, path: str) -> str:
    return path if protocol == "file" else f"{protocol}://{path}"


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def list_files(path: str | Sequence[str], io_config: Any = None) -> tuple[str, list[FileTask],
                                                                          list[str]]:
    """(protocol, files, bases): every file ``path`` names, sorted, hidden files skipped.

    ``bases`` are the folders hive partitions are read relative to.
    """
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        raise ConfigError("no path given")
    protocol = None
    files: dict[str, FileTask] = {}
    bases: list[str] = []
    for p in paths:
        proto, inner = split_protocol(p)
        if protocol is not None and proto != protocol:
            raise ConfigError(f"all paths must use one protocol, got {protocol} and {proto}")
        protocol = proto
        fs = filesystem_for(proto, io_config)
        if _has_magic(inner):
            cut = min(inner.index(ch) for ch in "*?[" if ch in inner)
            base = inner[:cut].rsplit("/", 1)[0]
            found = fs.glob(inner, detail=True)
        elif fs.isdir(inner):
            base = inner.rstrip("/")
            found = fs.find(inner, detail=True)
        elif fs.exists(inner):
            base = posixpath.dirname(inner)
            found = {inner: fs.info(inner)}
        else:
            raise ConfigError(f"no file or folder at {p!r}")
        bases.append(base)
        for name, info in found.items():
            if info.get("type") == "directory":
                continue
            rel = name[len(base):].lstrip("/") if name.startswith(base) else name
            if any(part.startswith(("_", ".")) for part in rel.split("/")):
                continue
            files[name] = FileTask(name, int(info.get("size") or 0))
    if not files:
        raise ConfigError(f"no files match {path!r}")
    assert protocol is not None
    return protocol, [files[k] for k in sorted(files)], bases


def _parse_value(text: str) -> Any:
    return None if text == HIVE_NULL else unquote(text)


def _hive(files: list[FileTask], bases: list[str]) -> tuple[list[FileTask], list[tuple[str,
                                                                                     DataType]]]:
    """Files with their partition values, and the partition columns with inferred types."""
    out, raw = [], []
    keys: dict[str, None] = {}
    for f in files:
        base = next((b for b in bases if f.path.startswith(b)), "")
        parts = f.path[len(base):].lstrip("/").split("/")[:-1]
        values = {}
        for part in parts:
            if "=" in part:
                k, v = part.split("=", 1)
                values[k] = _parse_value(v)
                keys[k] = None
        raw.append(values)
    columns = []
    for k in keys:
        texts = [r.get(k) for r in raw]
        dtype = _infer_partition_type([t for t in texts if t is not None])
        columns.append((k, dtype))
    for f, values in zip(files, raw, strict=True):
        typed = tuple((k, _convert(values.get(k), t)) for k, t in columns)
        out.append(FileTask(f.path, f.size, typed))
    return out, columns


def _infer_partition_type(values: list[str]) -> DataType:
    def all_parse(fn: Any) -> bool:
        try:
            for v in values:
                fn(v)
        except ValueError:
            return False
        return bool(values)

    if all_parse(int):
        return DataType.int64()
    if all_parse(float):
        return DataType.float64()
    if values and all(v.lower() in ("true", "false") for v in values):
        return DataType.bool()
    return DataType.string()


def _convert(value: str | None, dtype: DataType) -> Any:
    if value is None:
        return None
    if dtype.is_integer():
        return int(value)
    if dtype.is_floating():
        return float(value)
    if dtype.is_boolean():
        return value.lower() == "true"
    return value


def _with_partitions(table: pa.Table, task: FileTask, columns: Sequence[str],
                     schema: Schema) -> pa.Table:
    n = table.num_rows
    values = dict(task.partitions)
    arrays = []
    for name in columns:
        if name in table.column_names:
            arr = table.column(name)
            target = schema[name].to_arrow()
            arrays.append(arr if arr.type == target else arr.cast(target))
        elif name in values:
            arrays.append(pa.array([values[name]] * n, schema[name].to_arrow()))
        else:
            arrays.append(pa.nulls(n, schema[name].to_arrow()))
    return pa.Table.from_arrays(arrays, names=list(columns))


@dataclass(frozen=True)
class _FileSource:
    protocol: str
    files: tuple[FileTask, ...]
    schema: Schema
    partition_columns: tuple[str, ...]
    io_config: Any = None
    label: str = ""

    def tasks(self, limit: int | None = None) -> list[FileTask]:
        return list(self.files)

    def _fs(self) -> Any:
        return filesystem_for(self.protocol, self.io_config)

    def describe(self) -> str:
        parts = f", partitions={list(self.partition_columns)}" if self.partition_columns else ""
        return f"{type(self).__name__}({self.label}, {len(self.files)} files{parts})"

    def count_rows(self) -> int | None:
        return None


@dataclass(frozen=True)
class ParquetSource(_FileSource):
    """Parquet files; the schema unified from every file's footer, plus hive partition columns."""

    _counts: dict = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def create(path: str | Sequence[str], io_config: Any = None,
               hive_partitioning: bool = True) -> ParquetSource:
        protocol, files, bases = list_files(path, io_config)
        parts: list[tuple[str, DataType]] = []
        if hive_partitioning:
            files, parts = _hive(files, bases)
        fs = filesystem_for(protocol, io_config)
        footers = _footers(fs, protocol, files)
        arrow_schema = _unify(protocol, files, [schema for schema, _ in footers])
        files = [replace(f, missing=tuple(n for n in arrow_schema.names if n not in schema.names))
                 for f, (schema, _) in zip(files, footers, strict=True)]
        file_schema = Schema.from_arrow(arrow_schema)
        cols = list(file_schema.items()) + [(k, t) for k, t in parts if k not in file_schema]
        return ParquetSource(protocol, tuple(files), Schema(cols),
                             tuple(k for k, _ in parts if k not in file_schema), io_config,
                             label=str(path),
                             _counts={f.path: rows for f, (_, rows) in zip(files, footers,
                                                                           strict=True)})

    def _file_rows(self, task: FileTask) -> int:
        import pyarrow.parquet as pq

        if task.path not in self._counts:
            with self._fs().open(task.path, "rb") as f:
                self._counts[task.path] = pq.ParquetFile(f).metadata.num_rows
        return self._counts[task.path]

    def tasks(self, limit: int | None = None) -> list[FileTask]:
        if limit is None:
            return list(self.files)
        out, total = [], 0
        for task in self.files:
            out.append(task)
            total += self._file_rows(task)
            if total >= limit:
                break
        return out

    def count_rows(self) -> int | None:
        return sum(self._file_rows(t) for t in self.files)

    def read(self, task: FileTask, columns: Sequence[str], rows: int) -> Iterator[pa.Table]:
        """Batches of ``task`` with ``columns`` (partition columns filled in, columns the file
        lacks by schema unification null); errors name the file."""
        with _naming(self.protocol, task.path):
            yield from self._read(task, columns, rows)

    def _read(self, task: FileTask, columns: Sequence[str], rows: int) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        file_cols = [c for c in columns if c not in self.partition_columns]
        with self._fs().open(task.path, "rb") as f:
            pf = pq.ParquetFile(f)
            available = pf.schema_arrow.names
            for c in file_cols:
                if c not in available and c not in task.missing:
                    raise SchemaError(f"{_url(self.protocol, task.path)} has no column {c!r} "
                                      f"(it had when the read was planned){_close(c, available)}")
            read_cols = [c for c in file_cols if c in available]
            if not read_cols:
                total = pf.metadata.num_rows
                for start in range(0, total, rows):
                    empty = pa.table({"__n": pa.nulls(min(rows, total - start))})
                    yield _with_partitions(empty, task, columns, self.schema)
                return
            restored = _restore_fixed_size_lists(pf.schema_arrow)
            for batch in pf.iter_batches(batch_size=rows, columns=read_cols):
                table = pa.Table.from_batches([batch])
                if restored is not pf.schema_arrow:
                    table = table.cast(pa.schema([restored.field(c) for c in read_cols]))
                table = normalize_table(table)
                yield _with_partitions(table, task, columns, self.schema)


@contextlib.contextmanager
def _naming(protocol: str, path: str) -> Iterator[None]:
    """Re-raise any failure but mmbeam's own as a ReadError that names the file."""
    try:
        yield
    except MmbeamError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported with the file name
        raise ReadError(f"reading {_url(protocol, path)} failed: {type(exc).__name__}: "
                        f"{exc}") from exc


def _close(name: str, names: Sequence[str]) -> str:
    """`` (did you mean 'URL'?)`` when a name in ``names`` is close to ``name``."""
    same_case = [n for n in names if n.casefold() == name.casefold()]
    close = same_case or difflib.get_close_matches(name, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _footers(fs: Any, protocol: str, files: list[FileTask]) -> list[tuple[pa.Schema, int]]:
    """(schema, rows) from the footer of every Parquet file; object stores read in parallel."""
    import pyarrow.parquet as pq

    def footer(task: FileTask) -> tuple[pa.Schema, int]:
        try:
            with fs.open(task.path, "rb") as f:
                pf = pq.ParquetFile(f)
                return _restore_fixed_size_lists(pf.schema_arrow), pf.metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - reported with the file name
            raise ConfigError(f"{_url(protocol, task.path)} is not a Parquet file: "
                              f"{exc}") from exc

    if protocol == "file" or len(files) == 1:
        return [footer(t) for t in files]
    with concurrent.futures.ThreadPoolExecutor(min(16, len(files))) as pool:
        return list(pool.map(footer, files))


def _unify(protocol: str, files: list[FileTask], schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for all files, by column name in order of first appearance (see the module
    docstring); SchemaError names the two files that disagree."""
    fields: dict[str, tuple[pa.Field, str]] = {}  # name -> (field, the first file that has it)
    for task, schema in zip(files, schemas, strict=True):
        for f in schema:
            seen = fields.get(f.name)
            if seen is None:
                fields[f.name] = (f, task.path)
                continue
            if seen[0].type == f.type:
                continue
            try:
                merged = pa.unify_schemas([pa.schema([seen[0]]), pa.schema([f])],
                                          promote_options="permissive").field(0)
            except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                raise SchemaError(
                    f"column {f.name!r} is {seen[0].type} in {_url(protocol, seen[1])} but "
                    f"{f.type} in {_url(protocol, task.path)}; cast one of them, or read the "
                    "files separately") from exc
            fields[f.name] = (merged, seen[1])
    folded: dict[str, str] = {}
    for name in fields:
        other = folded.setdefault(name.casefold(), name)
        if other != name and not any(name in s.names and other in s.names for s in schemas):
            raise SchemaError(
                f"column {name!r} in {_url(protocol, fields[name][1])} and {other!r} in "
                f"{_url(protocol, fields[other][1])} differ only in case; names are "
                "case-sensitive, so rename one to make the files agree")
    metadata = schemas[0].metadata if schemas else None
    return pa.schema([f for f, _ in fields.values()], metadata=metadata)


def _restore_fixed_size_lists(schema: pa.Schema) -> pa.Schema:
    """The schema with the fixed-size lists :func:`mmbeam.io.writers.parquet_safe` stored as
    lists given back their type (the same schema object when there are none)."""
    from mmbeam.io.writers import FIXED_SIZE_LISTS

    raw = (schema.metadata or {}).get(FIXED_SIZE_LISTS)
    if raw is None:
        return schema
    sizes = json.loads(raw)
    for name, size in sizes.items():
        i = schema.get_field_index(name)
        if i >= 0:
            value = schema.field(i).type.value_type
            schema = schema.set(i, pa.field(name, pa.list_(value, int(size))))
    return schema


@dataclass(frozen=True)
class CsvSource(_FileSource):
    """CSV files, streamed in blocks; types inferred from the first file."""

    delimiter: str = ","
    has_headers: bool = True

    @staticmethod
    def create(path: str | Sequence[str], io_config: Any = None, hive_partitioning: bool = True,
               delimiter: str = ",", has_headers: bool = True) -> CsvSource:
        protocol, files, bases = list_files(path, io_config)
        parts: list[tuple[str, DataType]] = []
        if hive_partitioning:
            files, parts = _hive(files, bases)
        probe = CsvSource(protocol, tuple(files), Schema([]), (), io_config, str(path),
                          delimiter=delimiter, has_headers=has_headers)
        with probe._fs().open(files[0].path, "rb") as f:
            reader = probe._reader(f, None)
            file_schema = Schema.from_arrow(reader.schema)
        cols = list(file_schema.items()) + [(k, t) for k, t in parts if k not in file_schema]
        return CsvSource(protocol, tuple(files), Schema(cols),
                         tuple(k for k, _ in parts if k not in file_schema), io_config,
                         str(path), delimiter=delimiter, has_headers=has_headers)

    def _reader(self, f: Any, names: list[str] | None) -> Any:
        import pyarrow.csv as pcsv

        read = pcsv.ReadOptions(block_size=1 << 22, autogenerate_column_names=not
                                self.has_headers)
        parse = pcsv.ParseOptions(delimiter=self.delimiter)
        types = None
        if names is not None:
            types = {n: self.schema[n].to_arrow() for n in names}
        convert = pcsv.ConvertOptions(column_types=types)
        try:
            return pcsv.open_csv(f, read_options=read, parse_options=parse,
                                 convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise SchemaError(f"cannot read CSV {self.label!r}: {exc}") from exc

    def read(self, task: FileTask, columns: Sequence[str], rows: int) -> Iterator[pa.Table]:
        with _naming(self.protocol, task.path):
            yield from self._read(task, columns, rows)

    def _read(self, task: FileTask, columns: Sequence[str], rows: int) -> Iterator[pa.Table]:
        file_names = [n for n in self.schema.names() if n not in self.partition_columns]
        with self._fs().open(task.path, "rb") as f:
            reader = self._reader(f, file_names)
            for batch in reader:
                table = normalize_table(pa.Table.from_batches([batch]))
                for start in range(0, max(table.num_rows, 1), rows):
                    yield _with_partitions(table.slice(start, rows), task, columns, self.schema)


@dataclass(frozen=True)
class GlobSource(_FileSource):
    """One row per matching file: ``path`` and ``size``."""

    @staticmethod
    def create(pattern: str, io_config: Any = None) -> GlobSource:
        protocol, files, _ = list_files(pattern, io_config)
        schema = Schema([("path", DataType.string()), ("size", DataType.int64())])
        return GlobSource(protocol, tuple(files), schema, (), io_config, label=pattern)

    def tasks(self, limit: int | None = None) -> list[Any]:
        return [None]

    def count_rows(self) -> int | None:
        return len(self.files)

    def read(self, task: Any, columns: Sequence[str], rows: int) -> Iterator[pa.Table]:
        paths = [_url(self.protocol, f.path) for f in self.files]
        sizes = [f.size for f in self.files]
        table = pa.table({"path": pa.array(paths, pa.large_string()),
                          "size": pa.array(sizes, pa.int64())})
        for start in range(0, table.num_rows, rows):
            yield table.slice(start, rows).select(list(columns))
