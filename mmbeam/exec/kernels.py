"""Run URL and image expressions over a batch as one fused, streaming per-row kernel.

``col("url").url.download().image.decode().image.resize(256, 256).image.encode("JPEG")
.url.upload(dir)`` runs as one :class:`~mmbeam.ops.rowchain.RowChain` per row: the download and
upload on the I/O loop (at most ``max_connections`` at once), decode (at a reduced JPEG scale no
smaller than the resize target) → resize → encode on the shared CPU pool, rows overlapping, with
an autotuned window of rows in flight. Only the chain's final value is kept, so full-size pixels
exist for one row at a time per thread and never as a column nobody asked for. The kernels are
:mod:`mmbeam.ops`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmbeam.autotune import (
    ROW_SMOOTHING,
    BatchSizeController,
    Measurement,
    default_memory_budget,
)
from mmbeam.expr import ir
from mmbeam.expr.infer import infer
from mmbeam.ops.pool import cpu_workers
from mmbeam.ops.rowchain import RowChain, RowOutcome, Step
from mmbeam.types import DataType, Schema, arrow_to_images, images_to_arrow

__all__ = ["ROW_OPS", "evaluate_multimodal", "row_window"]

ROW_OPS = ("image.decode", "image.resize", "image.encode", "image.crop", "image.to_mode",
           "image.width", "image.height")


def _squeeze(img: np.ndarray) -> np.ndarray:
    return img[:, :, 0] if img.ndim == 3 and img.shape[2] == 1 else img


def _row_op(fn: ir.Function, following: ir.Function | None,
            extra: list[Any] | None) -> Callable[[Any, int], Any]:
    """A function (value, row index) -> value for one step of a fused chain."""
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
        return lambda img, i: crop(img, fixed if fixed is not None else extra[i])
    if name == "image.to_mode":
        from mmbeam.ops.image import to_mode

        mode = fn.option("mode")
        return lambda img, _: to_mode(_squeeze(img), mode)
    if name == "image.width":
        return lambda img, _: int(img.shape[1])
    if name == "image.height":
        return lambda img, _: int(img.shape[0])
    raise AssertionError(name)  # pragma: no cover


async def _fetch(fetcher: Any, url: str, _: int) -> bytes:
    return await fetcher.fetch(url)


def _fetch_blocking(fetcher: Any, url: str, _: int) -> bytes:
    return fetcher.fetch_blocking(url)


async def _put(store: Any, data: Any, _: int) -> str:
    return await store.write_async(*_named(data))


def _put_local(store: Any, data: Any, _: int) -> str:
    return store.write_local(*_named(data), content_named=True)


def _named(data: Any) -> tuple[str, bytes]:
    from mmbeam.ops.store import content_name

    payload = data.encode() if isinstance(data, str) else bytes(data)
    return content_name(payload), payload


def _nullable(fn: ir.Function) -> bool:
    return fn.option("on_error", "raise") == "null"


def _io_step(fn: ir.Function, nullable: bool) -> Step:
    limit = fn.option("max_connections", 32)
    if fn.name == "url.download":
        from mmbeam.ops.fetch import DEFAULT_MAX_BYTES, Fetcher

        fetcher = Fetcher(fn.option("io_config"), timeout_s=fn.option("timeout_s", 60.0),
                          retries=fn.option("retries", 3),
                          max_bytes=fn.option("max_bytes", DEFAULT_MAX_BYTES),
                          allowed_schemes=fn.option("allowed_schemes"))
        return Step(fn.name, "io", functools.partial(_fetch, fetcher), nullable, limit,
                    functools.partial(_fetch_blocking, fetcher))
    from mmbeam.ops.store import Store

    store = Store(fn.option("location"), fn.option("io_config"))
    if store.is_local:  # a small blocking write: part of the row's CPU task, no hop
        return Step(fn.name, "cpu", functools.partial(_put_local, store), nullable)
    return Step(fn.name, "io", functools.partial(_put, store), nullable, limit)


def _plan_chain(node: ir.Function, table: pa.Table, ctx: Any) \
        -> tuple[RowChain, ir.Node, tuple[bool, ...]]:
    """The fused chain for ``node`` (upload? ∘ row ops ∘ download?), the node it reads and each
    step's ``on_error == "null"``. Capturing failures, no step nulls: every failure comes back
    as the row's error, and the caller nulls or drops the row."""
    capture = getattr(ctx, "capture", None) is not None
    fns: list[ir.Function] = []
    top = node if node.name == "url.upload" else None
    cur: ir.Node = node.args[0] if top is not None else node
    ops: list[ir.Function] = []
    while isinstance(cur, ir.Function) and cur.name in ROW_OPS:
        ops.append(cur)
        cur = cur.args[0]
    ops.reverse()
    steps = []
    if isinstance(cur, ir.Function) and cur.name == "url.download":
        fns.append(cur)
        steps.append(_io_step(cur, _nullable(cur) and not capture))
        cur = cur.args[0]
    for i, fn in enumerate(ops):
        extra = _python(fn.args[1], table, ctx) if len(fn.args) > 1 else None
        following = ops[i + 1] if i + 1 < len(ops) else None
        fns.append(fn)
        steps.append(Step(fn.name, "cpu", _row_op(fn, following, extra),
                          _nullable(fn) and not capture))
    if top is not None:
        fns.append(top)
        steps.append(_io_step(top, _nullable(top) and not capture))
    return RowChain(steps), cur, tuple(_nullable(f) for f in fns)


def _python(node: ir.Node, table: pa.Table, ctx: Any) -> list[Any]:
    from mmbeam.exec.evaluate import _as_array, evaluate

    dtype = infer(node, Schema.from_arrow(table.schema))
    arr = _as_array(evaluate(node, table, ctx), table.num_rows, dtype.to_arrow())
    if dtype.is_image():
        return arrow_to_images(arr)
    return arr.to_pylist()


_controllers: dict[str, BatchSizeController] = {}
_controllers_lock = threading.Lock()


def _controller(chain: RowChain) -> BatchSizeController:
    name = "frame:" + ">".join(chain.stages)
    with _controllers_lock:
        ctl = _controllers.get(name)
        if ctl is None:
            floor = chain.first_window()
            ctl = _controllers[name] = BatchSizeController(
                name=name, memory_budget=default_memory_budget(), min_size=1,
                max_size=max(floor, 512), initial=floor, smoothing=ROW_SMOOTHING).register()
        return ctl


def row_window(chain: RowChain) -> int:
    """Rows to keep in flight for ``chain``, from what its earlier rows cost (autotuned)."""
    ctl = _controller(chain)
    if ctl.seconds_per_element is None:
        return chain.first_window()
    return ctl.inflight(cpu_workers(), floor=chain.min_window())


class _Window:
    """The rows a chain may have in flight: one autotuned window shared by every batch that
    runs the chain, so a batch starting while another drains takes the slots it frees."""

    def __init__(self, chain: RowChain):
        self.chain = chain
        self.size = row_window(chain)
        self._slots = threading.Semaphore(self.size)
        self._lock = threading.Lock()
        self._started = 0

    def acquire(self) -> None:
        self._slots.acquire()
        with self._lock:
            self._started += 1
            if self._started % 8:
                return
            new = row_window(self.chain)  # retune as costs are learned
            delta, self.size = new - self.size, new
        for _ in range(delta):
            self._slots.release()
        for _ in range(-delta):
            self._slots.acquire()

    def release(self) -> None:
        self._slots.release()


def _run_rows(window: _Window, values: list[Any], names: list[Any]) -> list[RowOutcome]:
    """Every row through the window's chain, within the window; the outcomes in row order."""
    ctl = _controller(window.chain)

    def done(future: Any) -> None:
        try:
            outcome = future.result()
            ctl.record(Measurement(1, seconds=outcome.io_seconds + outcome.cpu_seconds,
                                   busy_seconds=outcome.cpu_seconds or outcome.io_seconds,
                                   peak_bytes=outcome.peak_bytes))
        finally:
            window.release()

    futures = []
    for i, value in enumerate(values):
        window.acquire()
        futures.append(window.chain.submit(value, i, names[i]))
        futures[-1].add_done_callback(done)
    concurrent.futures.wait(futures)
    return [f.result() for f in futures]


def _window(node: ir.Function, table: pa.Table, ctx: Any) \
        -> tuple[_Window, ir.Node, tuple[bool, ...]]:
    """The chain for ``node`` with its window, and the node it reads; a chain whose steps read
    no other column (no crop by a bbox column) is built once per context and reused by every
    batch, sharing its connections and its window."""
    chains = getattr(ctx, "chains", None)
    if chains is not None and id(node) in chains:
        return chains[id(node)]
    chain, base, nullable = _plan_chain(node, table, ctx)
    entry = (_Window(chain), base, nullable)
    if chains is not None and not any(len(n.args) > 1 for n in ir.walk(node)
                                      if isinstance(n, ir.Function) and n.name in ROW_OPS):
        entry = chains.setdefault(id(node), entry)
    return entry


def _run_chain(node: ir.Function, table: pa.Table, ctx: Any) -> list[Any]:
    window, base, nullable = _window(node, table, ctx)
    failures = getattr(ctx, "failures", None)  # capturing: rows' failures are recorded there
    values = _python(base, table, ctx)
    if window.chain.steps[0].stage == "url.download":
        names = values
    else:
        names = [f"row {i}" for i in range(len(values))]
    results = []
    for i, outcome in enumerate(_run_rows(window, values, names)):
        if outcome.error is not None:
            if failures is None:
                raise outcome.error
            step = len(outcome.sizes)  # the step that failed
            stage = window.chain.steps[step].stage
            failures.record(i, stage, outcome.error, kept=nullable[step])
            if nullable[step]:
                ctx.errors[stage] += 1
            results.append(None)
            continue
        if outcome.nulled is not None:
            ctx.errors[outcome.nulled] += 1
        results.append(outcome.value)
    return results


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
            from mmbeam.exec.evaluate import evaluate

            arr = evaluate(inner, table, ctx)
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
            field = storage.field(node.name.split(".")[1]).cast(pa.int64())
            return pc.if_else(storage.is_valid(), field, pa.scalar(None, pa.int64()))
    return _to_arrow(_run_chain(node, table, ctx), dtype)
