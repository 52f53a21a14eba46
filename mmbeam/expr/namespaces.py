"""Expression namespaces: ``.str``, ``.url`` and ``.image`` (Polars style).

Each method builds one :class:`~mmbeam.expr.ir.Function` node. The ``.url`` and ``.image``
methods are made from the function declarations (:mod:`mmbeam.ops.functions`): the same options
and checks as the Beam transforms (``.image.resize(256, 256)`` ≡ ``ResizeImage(256, 256)``),
checked when the expression is built; column types are checked by :mod:`mmbeam.expr.infer` when
the expression meets a frame. An option that may be a column (``crop(bbox=col("box"))``) becomes
an extra argument of the node.
"""

from __future__ import annotations

import inspect
from difflib import get_close_matches
from typing import Any

from mmbeam.expr import ir
from mmbeam.ops.registry import FRAME, Function, namespace_functions

__all__ = ["ImageNamespace", "Namespace", "StrNamespace", "UrlNamespace", "suggest_attribute"]


def suggest_attribute(owner: object, name: str, what: str) -> AttributeError:
    """An AttributeError for ``name`` that names the closest public attribute of ``owner``."""
    public = [a for a in dir(type(owner)) if not a.startswith("_")]
    near = get_close_matches(name, public, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return AttributeError(f"{what} has no attribute {name!r}{hint}")


def _is_expression(value: Any) -> bool:
    return isinstance(getattr(value, "node", None), ir.Node)


class Namespace:
    """Base of the namespaces: holds the expression the methods apply to."""

    __slots__ = ("_expr",)
    _label = "namespace"

    def __init__(self, expr: Any):
        self._expr = expr

    def _fn(self, name: str, *args: Any, **options: Any) -> Any:
        nodes = (self._expr.node, *(ir.as_node(a) for a in args))
        return type(self._expr)(ir.Function(name, nodes, tuple(options.items())))

    def _call(self, function: Function, options: dict[str, Any]) -> Any:
        """The node of a declared function: a column option becomes an extra argument."""
        nodes = [self._expr.node]
        items = []
        for key, value in options.items():
            if _is_expression(value):
                items.append((key, ir.Arg(len(nodes))))
                nodes.append(value.node)
            else:
                items.append((key, value))
        return type(self._expr)(ir.Function(function.name, tuple(nodes), tuple(items)))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise suggest_attribute(self, name, f"The {self._label} namespace")


def _method(function: Function) -> Any:
    """The namespace method of a declared function."""

    def method(self: Namespace, *args: Any, **kwargs: Any) -> Any:
        return self._call(function, function.bind(FRAME, args, kwargs, _is_expression))

    signature = function.signature(FRAME)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_param, *signature.parameters.values()])
    method.__name__ = method.__qualname__ = function.method
    method.__doc__ = f"{function.doc}\n\nThe frame form of ``mmbeam.transforms.{function.stage}``" \
        if function.transform else function.doc
    return method


def _declared(namespace: str) -> dict[str, Any]:
    return {f.method: _method(f) for f in namespace_functions(namespace)}


class StrNamespace(Namespace):
    """String functions, vectorised with ``pyarrow.compute``."""

    __slots__ = ()
    _label = ".str"

    def contains(self, pattern: str) -> Any:
        """True where the string contains ``pattern``."""
        return self._fn("str.contains", pattern)

    def startswith(self, prefix: str) -> Any:
        """True where the string starts with ``prefix``."""
        return self._fn("str.startswith", prefix)

    def endswith(self, suffix: str) -> Any:
        """True where the string ends with ``suffix``."""
        return self._fn("str.endswith", suffix)

    def lower(self) -> Any:
        """The string in lower case."""
        return self._fn("str.lower")

    def upper(self) -> Any:
        """The string in upper case."""
        return self._fn("str.upper")

    def length(self) -> Any:
        """The number of characters."""
        return self._fn("str.length")

    def split(self, sep: str) -> Any:
        """The list of parts between ``sep``."""
        return self._fn("str.split", sep)

    def replace(self, pattern: str, replacement: str, regex: bool = False) -> Any:
        """``pattern`` (a regular expression with ``regex=True``) replaced by ``replacement``."""
        return self._fn("str.replace", pattern, replacement, regex=bool(regex))


UrlNamespace = type("UrlNamespace", (Namespace,), {
    "__slots__": (), "_label": ".url", "__module__": __name__,
    "__doc__": "Reading and writing the bytes behind URLs (http, https, s3, gs, file, local "
               "paths); the methods are ``Download``'s and ``Upload``'s.",
    **_declared("url")})

ImageNamespace = type("ImageNamespace", (Namespace,), {
    "__slots__": (), "_label": ".image", "__module__": __name__,
    "__doc__": "Image functions (the image transforms' options); chains of them run fused, "
               "one row at a time.",
    **_declared("image")})
