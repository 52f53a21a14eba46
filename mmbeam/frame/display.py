"""Show a frame's rows: the Daft box table in text, and an HTML table with image thumbnails."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import pyarrow as pa

from mmbeam.types import DataType, Schema, arrow_to_images

__all__ = ["Preview", "format_cell", "render_html", "render_text"]

MAX_CELL = 30
THUMBNAIL = 128


def _cut(text: str, width: int = MAX_CELL) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _bytes(value: bytes) -> str:
    out = []
    for b in value:
        ch = chr(b)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{b:02x}")
    return 'b"' + "".join(out) + '"'


def format_cell(value: Any, dtype: DataType) -> str:
    """The text of one cell, before cutting to the column width."""
    if value is None:
        return "None"
    if dtype.is_image():
        return "<Image>"
    if dtype.is_tensor():
        return "<Tensor>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return _bytes(bytes(value))
    if isinstance(value, str):
        return value.replace("\n", "\\n")
    if isinstance(value, (list, tuple, np.ndarray)):
        inner = dtype.inner if dtype.is_list() else DataType.python()
        return "[" + ", ".join(format_cell(v, inner) for v in value) + "]"
    if isinstance(value, dict):
        fields = dict(dtype.params) if dtype.kind == "struct" else {}
        return "{" + ", ".join(f"{k}: {format_cell(v, fields.get(k, DataType.python()))}"
                               for k, v in value.items()) + "}"
    return str(value)


def _cells(table: pa.Table, schema: Schema) -> list[list[str]]:
    columns = []
    for name in table.column_names:
        dtype = schema[name]
        column = table.column(name)
        values = [None if not v else 1 for v in column.is_valid().to_pylist()] \
            if dtype.is_image() or dtype.is_tensor() else column.to_pylist()
        columns.append([_cut(format_cell(v, dtype)) for v in values])
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def render_text(table: pa.Table, schema: Schema, total: int | None) -> str:
    """The Daft-style box table of ``table`` followed by "(Showing first N of M rows)"."""
    names = [_cut(n) for n in table.column_names]
    types = [_cut(repr(schema[n])) for n in table.column_names]
    rows = _cells(table, schema)
    widths = [max(len(names[i]), len(types[i]), 3, *(len(r[i]) for r in rows))
              for i in range(len(names))]

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def cells(values: list[str]) -> str:
        return "│ " + " ┆ ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " │"

    out = [line("╭", "─", "┬", "╮"), cells(names), cells(["---"] * len(names)), cells(types)]
    if rows:
        out.append(line("╞", "═", "╪", "╡"))
        for i, row in enumerate(rows):
            if i:
                out.append(line("├", "╌", "┼", "┤"))
            out.append(cells(row))
    out.append(line("╰", "─", "┴", "╯"))
    return "\n".join(out) + "\n\n" + _footer(table.num_rows, total)


def _footer(shown: int, total: int | None) -> str:
    if total is None:
        return f"(Showing first {shown} rows)"
    return f"(Showing first {shown} of {total} rows)"


def _thumbnail(image: np.ndarray) -> str:
    from PIL import Image  # only for notebook thumbnails: keeps the frame's import light

    img = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img style="max-height:{THUMBNAIL}px;max-width:{THUMBNAIL}px" ' \
           f'src="data:image/png;base64,{data}" alt="<Image>"/>'


def render_html(table: pa.Table, schema: Schema, total: int | None) -> str:
    """An HTML table; image cells are small inline PNG thumbnails."""
    head = "".join(f"<th style=\"text-align:left\">{html.escape(n)}<br/>"
                   f"{html.escape(repr(schema[n]))}</th>" for n in table.column_names)
    columns = []
    for name in table.column_names:
        dtype = schema[name]
        column = table.column(name)
        if dtype.is_image():
            columns.append(["None" if img is None else _thumbnail(img)
                            for img in arrow_to_images(column)])
        else:
            columns.append([html.escape(_cut(format_cell(v, dtype))) for v in
                            (column.to_pylist() if not dtype.is_tensor()
                             else [None if not ok else 1 for ok in
                                   column.is_valid().to_pylist()])])
    body = "".join("<tr>" + "".join(f"<td style=\"text-align:left\">{c}</td>" for c in row)
                   + "</tr>" for row in zip(*columns, strict=True)) if columns else ""
    return (f'<div><table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{body}'
            f"</tbody></table><small>{_footer(table.num_rows, total)}</small></div>")


class Preview:
    """Rows to show: prints as the box table, renders as HTML in notebooks."""

    def __init__(self, table: pa.Table, schema: Schema, total: int | None):
        self.table = table
        self.schema = schema
        self.total = total

    def __repr__(self) -> str:
        return render_text(self.table, self.schema, self.total)

    def _repr_html_(self) -> str:
        return render_html(self.table, self.schema, self.total)
