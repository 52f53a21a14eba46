"""Small Arrow helpers every executor uses: whole tables as one batch, concatenation with an
empty-table fallback, Python values to a canonical Arrow column."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mmbeam.errors import SchemaError
from mmbeam.exec.operators import empty_batch
from mmbeam.types import DataType, image_mode_of, images_to_arrow, normalize_table

__all__ = ["as_table", "column_to_arrow", "concat_tables", "empty_batch", "is_image", "to_batch"]


def to_batch(table: pa.Table) -> pa.RecordBatch:
    """One record batch holding all of ``table`` (an empty one when it has no rows)."""
    if table.num_rows == 0:
        return empty_batch(table.schema)
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]  # pragma: no cover


def as_table(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """``batch`` as a table (a table is returned as is)."""
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def concat_tables(batches: list, schema: pa.Schema) -> pa.Table:
    """The non-empty ``batches`` (tables or record batches) as one table; an empty table of
    ``schema`` when there are none."""
    tables = [as_table(b) for b in batches if b.num_rows]
    if not tables:
        return pa.Table.from_batches([empty_batch(schema)])
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def is_image(value: Any) -> bool:
    """A numpy array that looks like an image (2 or 3 dimensions of numbers)."""
    return isinstance(value, np.ndarray) and value.ndim in (2, 3) and value.dtype.kind in "uf"


def column_to_arrow(values: Any, dtype: DataType | None = None) -> pa.Array | pa.ChunkedArray:
    """An Arrow column of canonical type from a list, numpy array or Arrow array."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    elif dtype is not None and dtype.is_image():
        arr = images_to_arrow(list(values), dtype.image_mode)
    elif isinstance(values, np.ndarray) and values.ndim == 1:
        arr = pa.array(values)
    else:
        values = list(values)
        if dtype is None and any(is_image(v) for v in values):
            modes = {image_mode_of(np.asarray(v)) for v in values if v is not None}
            arr = images_to_arrow(values, modes.pop() if len(modes) == 1 else None)
        else:
            try:
                arr = pa.array(values, type=None if dtype is None else dtype.to_arrow())
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise SchemaError(f"cannot build a column from these values: {exc}") from exc
    table = normalize_table(pa.table({"c": arr}))
    return table.column("c")
