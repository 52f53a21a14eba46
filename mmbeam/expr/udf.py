"""``@mmbeam.udf``: user functions and classes run on batches of rows.

::

    @mmbeam.udf(return_dtype=DataType.fixed_size_list(dtype=DataType.string(), size=2))
    class ClassifyImages:
        def __init__(self):            # once per worker process, shared by its threads
            self.model = load_model()
        def __call__(self, urls):      # a Batch of the column's values -> one value per row
            return [...]

    df.with_column("label", ClassifyImages(col("urls")))

Calling a UDF only builds a :class:`UdfCall` node; the frame compiler runs it as its own batched
stage (:mod:`mmbeam.exec.beam.udf_stage`). Expression arguments arrive as a ``Batch`` (a list with
``to_numpy()``/``to_arrow()``); other arguments are passed as they are. A UDF is also a Beam-style
model handler (``load_model``/``run_inference``), so ``mmbeam.transforms.RunModel(ClassifyImages)``
runs it in a raw Beam pipeline.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from mmbeam.errors import ConfigError
from mmbeam.expr import ir
from mmbeam.expr.expr import Expr
from mmbeam.expr.infer import infer
from mmbeam.types import DataType, Schema

__all__ = ["UDF", "UdfCall", "udf"]


def _positive(name: str, value: Any, allow_zero: bool = False) -> Any:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
    return value


def _positive_int(name: str, value: Any) -> int | None:
    if value is not None and not isinstance(value, int):
        raise ConfigError(f"{name} must be a positive int or None, got {value!r}")
    return _positive(name, value)


def _concurrency(value: Any) -> int | tuple[int, int] | None:
    """An int keeps today's meaning; ``(min, max)`` asks cluster runners for an autoscaling
    pool of actors (checked fully by the runner's ``StepResources``)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or _positive_int("concurrency", value[0]) is None or (
                _positive_int("concurrency", value[1]) is None or value[0] > value[1]):
            raise ConfigError(f"concurrency=(min, max) needs 1 <= min <= max, got {value!r}")
        return (value[0], value[1])
    return _positive_int("concurrency", value)


class UDF:
    """A function or class made into a UDF by :func:`udf`. Call it on expressions."""

    def __init__(self, fn: Any, return_dtype: DataType, batch_size: int | None = None,
                 concurrency: int | tuple[int, int] | None = None, num_cpus: float | None = None,
                 num_gpus: float | None = None, on_error: str = "raise",
                 init_args: tuple = (), init_kwargs: dict | None = None):
        if not callable(fn):
            raise ConfigError(f"@mmbeam.udf decorates a function or a class, not {fn!r}")
        if not isinstance(return_dtype, DataType):
            raise ConfigError(f"return_dtype must be a DataType such as DataType.string(), "
                              f"got {return_dtype!r}")
        if on_error not in ("raise", "null"):
            raise ConfigError(f"on_error must be 'raise' or 'null', got {on_error!r}")
        if init_args or init_kwargs:
            if not isinstance(fn, type):
                raise ConfigError(f"{fn.__name__} is a function; with_init_args needs a class")
        self.fn = fn
        self.return_dtype = return_dtype
        self.batch_size = _positive_int("batch_size", batch_size)
        self.concurrency = _concurrency(concurrency)
        self.num_cpus = _positive("num_cpus", num_cpus)
        self.num_gpus = _positive("num_gpus", num_gpus, allow_zero=True)
        self.on_error = on_error
        self.init_args = tuple(init_args)
        self.init_kwargs = dict(init_kwargs or {})
        #: names this UDF's instances in each worker process (one model per process and token)
        self.token = f"{getattr(fn, '__qualname__', 'udf')}-{uuid.uuid4().hex}"
        functools.update_wrapper(self, fn, updated=())

    @property
    def name(self) -> str:
        """The wrapped function's or class's name."""
        return str(getattr(self.fn, "__name__", "udf"))

    @property
    def is_class(self) -> bool:
        """True when the UDF wraps a class (instantiated once per worker)."""
        return isinstance(self.fn, type)

    def _copy(self, **changes: Any) -> UDF:
        spec = dict(fn=self.fn, return_dtype=self.return_dtype, batch_size=self.batch_size,
                    concurrency=self.concurrency, num_cpus=self.num_cpus,
                    num_gpus=self.num_gpus, on_error=self.on_error,
                    init_args=self.init_args, init_kwargs=self.init_kwargs)
        spec.update(changes)
        return UDF(**spec)

    def with_init_args(self, *args: Any, **kwargs: Any) -> UDF:
        """A copy whose class is constructed as ``cls(*args, **kwargs)``."""
        return self._copy(init_args=args, init_kwargs=kwargs)

    def with_concurrency(self, concurrency: int | tuple[int, int]) -> UDF:
        """A copy with at most ``concurrency`` instances per worker process (``(min, max)``: an
        autoscaling pool of actors on the cluster runners)."""
        return self._copy(concurrency=concurrency)

    def override_options(self, **options: Any) -> UDF:
        """A copy with other ``batch_size``, ``num_cpus``, ``num_gpus`` or ``on_error``."""
        known = {"batch_size", "concurrency", "num_cpus", "num_gpus", "on_error"}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown UDF option(s) {sorted(unknown)}; known: {sorted(known)}")
        return self._copy(**options)

    def __call__(self, *args: Any, **kwargs: Any) -> Expr:
        """An expression applying this UDF to the given columns and values."""
        nodes: list[ir.Node] = []
        layout = []
        for key, value in [(None, a) for a in args] + list(kwargs.items()):
            if isinstance(value, Expr):
                layout.append((key, len(nodes), None))
                nodes.append(value._node)
            else:
                layout.append((key, None, value))
        if not nodes:
            raise ConfigError(f"{self.name} needs at least one expression argument, such as "
                              "col('name')")
        return Expr(UdfCall(self, tuple(nodes), tuple(layout)))

    # -- the model handler protocol (used by the runtime and by RunModel) -----------------------
    def load_model(self) -> Any:
        """The object that runs batches: a new instance for a class, the function otherwise."""
        return self.fn(*self.init_args, **self.init_kwargs) if self.is_class else self.fn

    def run_inference(self, batch: Any, model: Any) -> Any:
        """Run ``model`` on one batch."""
        return model(batch)

    def __repr__(self) -> str:
        return f"<mmbeam.udf {self.name} -> {self.return_dtype}>"


@dataclass(frozen=True, eq=False)
class UdfCall(ir.Node):
    """``udf(*args, **kwargs)``: ``args`` are the expression inputs; ``layout`` says, per
    argument, its keyword (None if positional) and either its index in ``args`` or a constant."""

    udf: UDF
    args: tuple[ir.Node, ...]
    layout: tuple[tuple[str | None, int | None, Any], ...]

    def invoke(self, instance: Any, columns: list) -> Any:
        """Call ``instance`` (from ``udf.load_model()``) with ``columns`` for the expressions."""
        pos, kw = [], {}
        for key, index, const in self.layout:
            value = columns[index] if index is not None else const
            if key is None:
                pos.append(value)
            else:
                kw[key] = value
        return instance(*pos, **kw)

    def __repr__(self) -> str:
        parts = []
        for key, index, const in self.layout:
            text = ir.render(self.args[index]) if index is not None else repr(const)
            parts.append(text if key is None else f"{key}={text}")
        return f"{self.udf.name}({', '.join(parts)})"


@infer.register
def _(node: UdfCall, schema: Schema) -> DataType:
    for arg in node.args:
        infer(arg, schema)
    return node.udf.return_dtype


def udf(*, return_dtype: DataType, batch_size: int | None = None,
        concurrency: int | tuple[int, int] | None = None, num_cpus: float | None = None,
        num_gpus: float | None = None, on_error: str = "raise") -> Any:
    """Make a function or class into a UDF that runs on batches of rows.

    ``batch_size=None`` lets mmbeam size batches from measured time and memory per row;
    ``concurrency`` caps the instances per worker process (None: one, shared by all threads)
    and, on the Dask and Ray runners, sizes the UDF's own pool of workers (``(min, max)``: a
    pool that grows while rows wait and shrinks when idle);
    ``num_cpus``/``num_gpus`` are resource hints for cluster runners; ``on_error="null"`` sets a
    failing row to null (counted) instead of failing the pipeline.
    """

    def wrap(fn: Any) -> UDF:
        return UDF(fn, return_dtype, batch_size, concurrency, num_cpus, num_gpus, on_error)

    return wrap
