"""Run URL and image expressions over a batch, fusing per-row chains into one kernel.

``col("url").url.download().image.decode().image.resize(256, 256).image.encode("JPEG")`` runs
as: one concurrent download of the batch's URLs (bounded by ``max_connections``), then per row,
on a thread pool, decode (at a reduced JPEG scale no smaller than the resize target) → resize →
encode. Only the chain's final value is kept, so full-size pixels exist for one row at a time per
thread and never as a column nobody asked for. The kernels are :mod:`mmbeam.ops`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmbeam.errors import StageError
from mmbeam.expr import ir
from mmbeam.expr.infer import infer
from mmbeam.types import DataType, Schema, arrow_to_images, images_to_arrow

__all__ = ["ROW_OPS", "evaluate_multimodal"]

ROW_OPS = ("image.decode", "image.resize", "image.encode", "image.crop", "image.to_mode",
           "image.width", "image.height")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_pool_pid = 0


def _executor() -> ThreadPoolExecutor:
    """One thread pool per process (Pillow releases the GIL while decoding and resizing)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                       thread_name_prefix="mmbeam-image")
            _pool_pid = os.getpid()
        return _pool


def _squeeze(img: np.ndarray) -> np.ndarray:
    return img[:, :, 0] if img.ndim == 3 and img.shape[2] == 1 else img


def _row_op(fn: ir.Function, following: ir.Function | None) -> Callable[[Any, Any], Any]:
    """A function (value, extra) -> value for one step of a fused chain."""
    name = fn.name
    if name == "image.decode":
        from mmbeam.ops.decode import decode_image

        mode = fn.option("mode")
        min_size = None
        if following is not None and following.name == "image.resize":
            min_size = (following.option("width"), following.option("height"))
        return lambda data, _: decode_image(bytes(data), mode, min_size=min_size)
    if name == "image.resize":
        from mmbeam.ops.resize import resize_image

        w, h, m = fn.option("width"), fn.option("height"), fn.option("mode")
        return lambda img, _: resize_image(_squeeze(img), w, h, m)
    if name == "image.encode":
        from mmbeam.ops.encode import encode_image

        fmt, quality = fn.option("format"), fn.option("quality")
        return lambda img, _: encode_image(_squeeze(img), fmt, quality)
    if name == "image.crop":
        from mmbeam.ops.image import crop

        fixed = fn.option("bbox")
        return lambda img, box: crop(img, fixed if fixed is not None else box)
    if name == "image.to_mode":
        from mmbeam.ops.image import to_mode

        mode = fn.option("mode")
        return lambda img, _: to_mode(_squeeze(img), mode)
    if name == "image.width":
        return lambda img, _: int(img.shape[1])
    if name == "image.height":
        return lambda img, _: int(img.shape[0])
    raise AssertionError(name)  # pragma: no cover


def _chain(node: ir.Function) -> tuple[list[ir.Function], ir.Node]:
    """The per-row functions from innermost to outermost, and the node they start from."""
    ops: list[ir.Function] = []
    cur: ir.Node = node
    while isinstance(cur, ir.Function) and cur.name in ROW_OPS:
        ops.append(cur)
        cur = cur.args[0]
    ops.reverse()
    return ops, cur


def _values(node: ir.Node, table: pa.Table, ctx: Any) -> tuple[list[Any], list[Any]]:
    """Python values of ``node`` per row, and what to call each row in error messages."""
    if isinstance(node, ir.Function) and node.name == "url.download":
        urls = _python(node.args[0], table, ctx)
        return _download(node, urls, ctx), urls
    values = _python(node, table, ctx)
    return values, [f"row {i}" for i in range(len(values))]


def _python(node: ir.Node, table: pa.Table, ctx: Any) -> list[Any]:
    from mmbeam.frame.evaluate import _as_array, evaluate

    dtype = infer(node, Schema.from_arrow(table.schema))
    arr = _as_array(evaluate(node, table, ctx), table.num_rows, dtype.to_arrow())
    if dtype.is_image():
        return arrow_to_images(arr)
    return arr.to_pylist()


def _download(node: ir.Function, urls: list[Any], ctx: Any) -> list[Any]:
    from mmbeam.ops.fetch import fetch_all

    on_error = node.option("on_error", "raise")
    out = fetch_all(urls, io_config=node.option("io_config"),
                    max_connections=node.option("max_connections", 32), on_error=on_error)
    failed = sum(1 for u, b in zip(urls, out, strict=True) if u is not None and b is None)
    if failed:
        ctx.errors["url.download"] += failed
    return out


def _upload(node: ir.Function, table: pa.Table, ctx: Any) -> list[Any]:
    from mmbeam.ops.store import Store, content_name

    inner = node.args[0]
    if isinstance(inner, ir.Function) and inner.name in ROW_OPS:
        data = _run_chain(inner, table, ctx)
    else:
        data, _ = _values(inner, table, ctx)
    store = Store(node.option("location"), node.option("io_config"))
    window = node.option("max_connections", 32)
    on_error = node.option("on_error", "raise")
    out: list[Any] = [None] * len(data)
    todo = [i for i, d in enumerate(data) if d is not None]
    for start in range(0, len(todo), window):
        part = todo[start:start + window]
        futures = {}
        for i in part:
            payload = data[i].encode() if isinstance(data[i], str) else bytes(data[i])
            futures[i] = store.submit(content_name(payload), payload)
        for i, fut in futures.items():
            try:
                out[i] = fut.result()
            except StageError as err:
                if on_error != "null":
                    raise err.located("url.upload", f"row {i}") from err
                ctx.errors["url.upload"] += 1
    return out


def _run_chain(node: ir.Function, table: pa.Table, ctx: Any) -> list[Any]:
    ops, base = _chain(node)
    values, names = _values(base, table, ctx)
    steps = [_row_op(fn, ops[i + 1] if i + 1 < len(ops) else None) for i, fn in enumerate(ops)]
    extras = [(_python(fn.args[1], table, ctx) if len(fn.args) > 1 else None) for fn in ops]
    nullable = [fn.option("on_error") == "null" for fn in ops]

    def run(i: int) -> tuple[Any, str | None]:
        value = values[i]
        for k, step in enumerate(steps):
            if value is None:
                return None, None
            try:
                value = step(value, extras[k][i] if extras[k] is not None else None)
            except StageError as err:
                if nullable[k]:
                    return None, ops[k].name
                raise err.located(ops[k].name, names[i]) from err
        return value, None

    n = len(values)
    results = list(_executor().map(run, range(n))) if n > 1 else [run(i) for i in range(n)]
    for _, failed in results:
        if failed is not None:
            ctx.errors[failed] += 1
    return [v for v, _ in results]


def _to_arrow(values: list[Any], dtype: DataType) -> pa.Array:
    if dtype.is_image():
        return images_to_arrow(values, dtype.image_mode)
    return pa.array(values, type=dtype.to_arrow())


def evaluate_multimodal(node: ir.Function, table: pa.Table, ctx: Any) -> pa.Array:
    """Evaluate a ``url.*`` or ``image.*`` function over ``table``."""
    dtype = infer(node, Schema.from_arrow(table.schema))
    if node.name in ("image.width", "image.height"):
        inner = node.args[0]
        if not (isinstance(inner, ir.Function) and inner.name in ROW_OPS):
            from mmbeam.frame.evaluate import evaluate

            arr = evaluate(inner, table, ctx)
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
            field = storage.field(node.name.split(".")[1]).cast(pa.int64())
            return pc.if_else(storage.is_valid(), field, pa.scalar(None, pa.int64()))
    if node.name == "url.upload":
        return _to_arrow(_upload(node, table, ctx), dtype)
    if node.name == "url.download":
        values, _ = _values(node, table, ctx)
        return _to_arrow(values, dtype)
    return _to_arrow(_run_chain(node, table, ctx), dtype)
