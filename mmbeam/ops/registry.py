"""How a URL or image function is declared once and read by every surface.

A :class:`Function` (after Ibis's operation classes and Daft's function registry) holds all that
mmbeam knows about one function: its name (``image.resize``: namespace ``image``, method
``resize``), its stage name (``ResizeImage``: the transform's name, used for errors, metrics and
failed records on both surfaces), its options with their checks, the input types it accepts, its
output-type rule, and its step builder. The expression namespaces, type inference, the frame's
evaluator, ``explain`` and the Beam transforms all read the entry, so a function behaves the
same whichever surface calls it, and adding one is one declaration
(:mod:`mmbeam.ops.functions`) plus its tests.

No Beam, no expression classes here: options are plain values, and an option that may be a
column on the frame (``crop(bbox=col("box"))``) is marked ``per_row``; the frame hands the
row's value to the step.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mmbeam.errors import ConfigError
from mmbeam.ops.rowchain import Step
from mmbeam.types import DataType

__all__ = [
    "FRAME",
    "REQUIRED",
    "TRANSFORM",
    "Call",
    "Function",
    "Kernel",
    "Option",
    "get_function",
    "namespace_functions",
    "register",
    "registered",
]

TRANSFORM = "transform"
FRAME = "frame"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of an option the caller must give
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Option:
    """One option: its name, default, check and where it is accepted.

    ``check(value)`` returns the normalised value or raises ConfigError; ``frame_default``
    (when set) replaces ``default`` on the frame (``.image.decode()`` keeps each image's own
    mode, ``DecodeImage()`` gives RGB). ``per_row`` lets the frame take a column for it;
    ``surfaces`` says which surfaces accept it; ``keyword`` makes it keyword-only; ``shown``
    False keeps it out of ``explain`` (credentials). ``keep`` False accepts and checks it but
    drops it (an argument kept for compatibility whose check warns).
    """

    name: str
    default: Any = REQUIRED
    check: Callable[[Any], Any] | None = None
    doc: str = ""
    frame_default: Any = REQUIRED
    per_row: bool = False
    surfaces: tuple[str, ...] = (TRANSFORM, FRAME)
    keyword: bool = False
    shown: bool = True
    keep: bool = True

    def default_for(self, surface: str) -> Any:
        """The default on ``surface``."""
        if surface == FRAME and self.frame_default is not REQUIRED:
            return self.frame_default
        return self.default


class Kernel(NamedTuple):
    """What a step builder returns: ``fn(value, key, **row_options)`` (a coroutine function
    for ``io``), its kind, the connection limit of an I/O step, and an optional blocking form
    of an I/O ``fn`` (run on an I/O thread, see :class:`~mmbeam.ops.rowchain.Step`)."""

    kind: str
    fn: Callable[..., Any]
    limit: int | None = None
    blocking: Callable[..., Any] | None = None


@dataclass(frozen=True, eq=False)
class Function:
    """One declared function; see the module docstring. Pickles by name (a worker has the
    same declarations)."""

    name: str
    stage: str
    doc: str
    options: tuple[Option, ...]
    accepts: Callable[[DataType], bool]
    accepts_doc: str
    output: Callable[[DataType, Mapping[str, Any]], DataType]
    build: Callable[[Mapping[str, Any]], Kernel]
    value_type: type = object
    transform: bool = True
    validate: Callable[[Mapping[str, Any]], None] | None = None
    per_row_accepts: Mapping[str, tuple[Callable[[DataType], bool], str]] = field(
        default_factory=dict)
    #: the option through which readers tell this function the smallest size they need
    #: (decode's ``min_size``); see :func:`mmbeam.ops.engine.reduced_box`
    box_option: str | None = None
    #: the size this function needs of its input image, when that is all it needs (resize)
    reads_box: Callable[[Mapping[str, Any]], tuple[int, int]] | None = None

    def __reduce__(self):
        return (get_function, (self.name,))

    def __repr__(self) -> str:
        return f"Function({self.name!r}, stage={self.stage!r})"

    @property
    def namespace(self) -> str:
        """``image`` for ``image.resize``."""
        return self.name.split(".", 1)[0]

    @property
    def method(self) -> str:
        """``resize`` for ``image.resize``."""
        return self.name.split(".", 1)[1]

    def options_for(self, surface: str) -> tuple[Option, ...]:
        """The options ``surface`` accepts, in signature order."""
        return tuple(o for o in self.options if surface in o.surfaces)

    @functools.cache  # noqa: B019 - one per declaration, declarations live forever
    def signature(self, surface: str) -> inspect.Signature:
        """The Python signature of this function on ``surface`` (options only)."""
        params = []
        for opt in self.options_for(surface):
            default = opt.default_for(surface)
            kind = (inspect.Parameter.KEYWORD_ONLY if opt.keyword
                    else inspect.Parameter.POSITIONAL_OR_KEYWORD)
            params.append(inspect.Parameter(
                opt.name, kind,
                default=inspect.Parameter.empty if default is REQUIRED else default))
        return inspect.Signature(params)

    def bind(self, surface: str, args: Sequence[Any], kwargs: Mapping[str, Any],
             is_column: Callable[[Any], bool] = lambda v: False) -> dict[str, Any]:
        """The checked options of one call on ``surface``; ConfigError names what was wrong.

        A value for which ``is_column`` is true is kept as is (a per-row column, checked by
        type inference instead)."""
        try:
            bound = self.signature(surface).bind(*args, **kwargs)
        except TypeError as exc:
            where = f".{self.name}()" if surface == FRAME else f"{self.stage}()"
            raise ConfigError(f"{where}: {exc}") from None
        bound.apply_defaults()
        values: dict[str, Any] = {}
        for opt in self.options_for(surface):
            value = bound.arguments[opt.name]
            if is_column(value):
                if not opt.per_row:
                    raise ConfigError(f"{self.stage}: {opt.name} must be a constant, not a "
                                      f"column expression")
            elif opt.check is not None and not (value is None
                                                and opt.default_for(surface) is None):
                value = opt.check(value)
            if opt.keep:
                values[opt.name] = value
        for opt in self.options:  # options of the other surface: their defaults
            if opt.name not in values and opt.keep and opt.default is not REQUIRED:
                values[opt.name] = opt.default
        if self.validate is not None:
            self.validate({k: v for k, v in values.items() if not is_column(v)})
        return values

    def shown_options(self, options: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The options worth showing in ``explain``: not secret, not at their default."""
        shown = []
        for opt in self.options:
            if opt.name in options and opt.shown and opt.keep:
                value = options[opt.name]
                defaults = {opt.default, opt.frame_default}
                try:
                    if value in defaults and value is not REQUIRED:
                        continue
                except TypeError:
                    pass
                shown.append((opt.name, value))
        return shown

    def step(self, options: Mapping[str, Any], nullable: bool,
             rows: Mapping[str, Sequence[Any]] | None = None) -> Step:
        """This function's row step with ``options``.

        ``rows`` (the frame) maps each per-row option to its column's values; the step is
        then called with the row's index as its key, and the kernel gets no key (names come
        from options, never from a row index)."""
        kernel = self.build({**options, **dict.fromkeys(rows or ())})
        fn, blocking = kernel.fn, kernel.blocking
        if rows is not None:
            wrap = _per_row_async if kernel.kind == "io" else _per_row
            fn = functools.partial(wrap, kernel.fn, dict(rows))
            if blocking is not None:
                blocking = functools.partial(_per_row, blocking, dict(rows))
        return Step(self.stage, kernel.kind, fn, nullable, kernel.limit, blocking)


class Call(NamedTuple):
    """One use of a function: the declaration and its checked options."""

    function: Function
    options: Mapping[str, Any]

    @property
    def nullable(self) -> bool:
        """True when a failure becomes a null (``on_error="null"``)."""
        return self.options.get("on_error") == "null"


def _per_row(fn: Callable[..., Any], rows: Mapping[str, Sequence[Any]], value: Any,
             index: int) -> Any:
    return fn(value, None, **{name: column[index] for name, column in rows.items()})


async def _per_row_async(fn: Callable[..., Any], rows: Mapping[str, Sequence[Any]], value: Any,
                         index: int) -> Any:
    return await fn(value, None, **{name: column[index] for name, column in rows.items()})


_REGISTRY: dict[str, Function] = {}


def register(function: Function) -> Function:
    """Add ``function`` to the registry (its name must be new)."""
    if function.name in _REGISTRY:
        raise ValueError(f"function {function.name!r} is already registered")
    _REGISTRY[function.name] = function
    return function


def get_function(name: str) -> Function | None:
    """The declaration called ``name`` (``image.resize``), or None."""
    return _REGISTRY.get(name)


def registered() -> tuple[Function, ...]:
    """Every declared function, in declaration order (:mod:`mmbeam.ops.functions` declares
    them when :mod:`mmbeam.ops` is imported)."""
    return tuple(_REGISTRY.values())


def namespace_functions(namespace: str) -> tuple[Function, ...]:
    """The declared functions of one namespace (``url``, ``image``)."""
    return tuple(f for f in registered() if f.namespace == namespace)
