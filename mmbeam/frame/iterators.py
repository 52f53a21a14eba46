"""A frame's rows as a stream: Arrow, numpy, pandas or torch batches, and rows.

The iterators pull from the executor's stream (:meth:`~mmbeam.exec.base.Executor.stream`): in
this process the first batch arrives as soon as its rows are computed and stopping early stops
the work; on mmbeam's Dask and Ray runners each task's batches arrive as the task finishes, in
completion order, and stopping early stops the run
(:meth:`~mmbeam.exec.beam.executor.BeamExecutor.stream`); another Beam run (UDF plans on the
local runner, portable runners; on Dask/Ray a frame that sorts, limits or captures failures)
hands its rows back when it ends and they are then read one part at a time. Memory holds the
batch being built plus what the executor has in flight, never the whole frame.

The formats follow Ray Data's ``iter_batches``: ``"arrow"`` gives ``pyarrow.Table`` batches
(image columns keep the ``mmbeam.image`` type), ``"numpy"`` a dict of column → ``ndarray`` (an
image or tensor column whose rows all have one shape is stacked N×H×W×C, else an object array of
arrays), ``"pandas"`` a DataFrame (image cells are arrays in object columns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from difflib import get_close_matches
from typing import Any

import numpy as np
import pyarrow as pa

from mmbeam.errors import ConfigError
from mmbeam.types import DataType, ImageArrowType, arrow_to_images, arrow_to_tensors

__all__ = [
    "BATCH_FORMATS",
    "column_values",
    "iter_batches",
    "iter_rows",
    "iter_torch_batches",
    "rebatch",
    "table_to_numpy",
    "table_to_pandas",
    "table_to_rows",
    "table_to_torch",
]

BATCH_FORMATS = ("arrow", "numpy", "pandas")


def rebatch(tables: Iterator[pa.Table], batch_size: int | None,
            drop_last: bool = False) -> Iterator[pa.Table]:
    """``tables`` cut and joined into tables of exactly ``batch_size`` rows (the last one may be
    shorter unless ``drop_last``); ``None`` passes them through as they come."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive integer or None, not {batch_size!r}")
    try:
        if batch_size is None:
            for table in tables:
                if table.num_rows:
                    yield table
            return
        pending: list[pa.Table] = []
        rows = 0
        for table in tables:
            while table.num_rows:
                take = min(batch_size - rows, table.num_rows)
                pending.append(table.slice(0, take))
                table = table.slice(take)
                rows += take
                if rows == batch_size:
                    yield _joined(pending)
                    pending, rows = [], 0
        if rows and not drop_last:
            yield _joined(pending)
    finally:
        close = getattr(tables, "close", None)
        if close is not None:
            close()  # an early stop stops the executor's stream


def _joined(parts: list[pa.Table]) -> pa.Table:
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def column_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column as Python values; image and tensor cells as numpy arrays."""
    if isinstance(column.type, ImageArrowType):
        return arrow_to_images(column)
    if DataType.from_arrow(column.type).is_tensor():
        return arrow_to_tensors(column)
    return column.to_pylist()


def _is_array_column(column: pa.ChunkedArray) -> bool:
    return isinstance(column.type, ImageArrowType) or \
        DataType.from_arrow(column.type).is_tensor()


def _stacked(cells: list[Any]) -> np.ndarray:
    """One N×… array when every cell is an array of one shape and dtype, else an object array."""
    if cells and all(c is not None for c in cells):
        first = cells[0]
        if all(c.shape == first.shape and c.dtype == first.dtype for c in cells):
            return np.stack(cells)
    out = np.empty(len(cells), dtype=object)
    out[:] = cells
    return out


def table_to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    """``{column: ndarray}`` for one batch (see the module doc for image columns)."""
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name)
        if _is_array_column(column):
            out[name] = _stacked(column_values(column))
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def table_to_pandas(table: pa.Table) -> Any:
    """A pandas DataFrame; image and tensor cells are numpy arrays in object columns."""
    import pandas as pd  # optional: only for pandas batches

    data = {}
    for name in table.column_names:
        column = table.column(name)
        if _is_array_column(column):
            data[name] = pd.Series(column_values(column), dtype=object)
        else:
            data[name] = column.to_pandas()
    return pd.DataFrame(data, columns=table.column_names)


def table_to_rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    """The rows of one batch as dicts (image cells are numpy arrays)."""
    data = {n: column_values(table.column(n)) for n in table.column_names}
    names = list(data)
    for row in zip(*data.values(), strict=True):
        yield dict(zip(names, row, strict=True))


def table_to_torch(table: pa.Table, dtypes: Any = None, device: Any = "cpu") -> dict[str, Any]:
    """``{column: torch.Tensor}`` for one batch: numeric columns and image/tensor columns of one
    shape become tensors (images uint8 N×H×W×C); ``dtypes`` is one torch dtype or a mapping
    column → dtype. A column that cannot be a tensor (strings, images of mixed sizes, nulls in a
    numeric column) stays a list of values."""
    import torch  # optional (the torch extra): only for torch batches

    out: dict[str, Any] = {}
    for name, values in table_to_numpy(table).items():
        dtype = dtypes.get(name) if isinstance(dtypes, Mapping) else dtypes
        if values.dtype == object or values.dtype.kind in "USM":
            out[name] = [v for v in values]
            continue
        if not values.flags.writeable:  # a zero-copy view of Arrow memory
            values = values.copy()
        tensor = torch.from_numpy(values)
        if dtype is not None or str(device) != "cpu":
            tensor = tensor.to(device=device, dtype=dtype)
        out[name] = tensor
    return out


def _converted(tables: Iterator[pa.Table], convert: Callable[[pa.Table], Any]) -> Iterator[Any]:
    try:
        for table in tables:
            yield convert(table)
    finally:
        tables.close()  # type: ignore[attr-defined]


def iter_batches(tables: Iterator[pa.Table], batch_size: int | None, batch_format: str,
                 drop_last: bool) -> Iterator[Any]:
    """``Frame.iter_batches`` over a frame's stream of tables."""
    if batch_format not in BATCH_FORMATS:
        near = get_close_matches(str(batch_format), BATCH_FORMATS, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"batch_format must be one of {BATCH_FORMATS}, not "
                          f"{batch_format!r}.{hint}")
    convert = {"arrow": lambda t: t, "numpy": table_to_numpy,
               "pandas": table_to_pandas}[batch_format]
    return _converted(rebatch(tables, batch_size, drop_last), convert)


def iter_torch_batches(tables: Iterator[pa.Table], batch_size: int | None, dtypes: Any,
                       device: Any, drop_last: bool) -> Iterator[dict[str, Any]]:
    """``Frame.iter_torch_batches`` over a frame's stream of tables."""
    return _converted(rebatch(tables, batch_size, drop_last),
                      lambda t: table_to_torch(t, dtypes, device))


def iter_rows(tables: Iterator[pa.Table]) -> Iterator[dict[str, Any]]:
    """``Frame.iter_rows`` over a frame's stream of tables."""
    try:
        for table in tables:
            yield from table_to_rows(table)
    finally:
        tables.close()  # type: ignore[attr-defined]
