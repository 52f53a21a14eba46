"""Expression namespaces: ``.str``, ``.url`` and ``.image`` (Polars style).

Each method is one line that builds a :class:`~mmbeam.expr.ir.Function` node; argument values
are checked here (a bad option fails when the expression is built), column types are checked by
:mod:`mmbeam.expr.infer` when the expression meets a frame.
"""

from __future__ import annotations

import warnings
from typing import Any

from mmbeam.errors import ConfigError
from mmbeam.expr import ir
from mmbeam.expr.expr import Expr, _node, suggest_attribute
from mmbeam.types import IMAGE_MODES

__all__ = ["ImageNamespace", "StrNamespace", "UrlNamespace"]

RESIZE_MODES = ("stretch", "fit", "fill")
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")


def _on_error(value: str) -> str:
    if value not in ("raise", "null"):
        raise ConfigError(f"on_error must be 'raise' or 'null', not {value!r}")
    return value


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, not {value!r}")
    return value


class _Namespace:
    __slots__ = ("_expr",)
    _label = "namespace"

    def __init__(self, expr: Expr):
        self._expr = expr

    def _fn(self, name: str, *args: Any, **options: Any) -> Expr:
        nodes = (self._expr._node, *(_node(a) for a in args))
        return Expr(ir.Function(name, nodes, tuple(options.items())))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise suggest_attribute(self, name, f"The {self._label} namespace")


class StrNamespace(_Namespace):
    """String functions, vectorised with ``pyarrow.compute``."""

    __slots__ = ()
    _label = ".str"

    def contains(self, pattern: str) -> Expr:
        return self._fn("str.contains", pattern)

    def startswith(self, prefix: str) -> Expr:
        return self._fn("str.startswith", prefix)

    def endswith(self, suffix: str) -> Expr:
        return self._fn("str.endswith", suffix)

    def lower(self) -> Expr:
        return self._fn("str.lower")

    def upper(self) -> Expr:
        return self._fn("str.upper")

    def length(self) -> Expr:
        return self._fn("str.length")

    def split(self, sep: str) -> Expr:
        return self._fn("str.split", sep)

    def replace(self, pattern: str, replacement: str, regex: bool = False) -> Expr:
        return self._fn("str.replace", pattern, replacement, regex=bool(regex))


class UrlNamespace(_Namespace):
    """Reading and writing the bytes behind URLs (http, https, s3, gs, file, local paths)."""

    __slots__ = ()
    _label = ".url"

    def download(self, max_connections: int = 32, on_error: str = "raise",
                 io_config: Any = None, use_native_downloader: bool | None = None, *,
                 timeout_s: float = 60.0, retries: int = 3, max_bytes: int | None = None,
                 allowed_schemes: tuple[str, ...] | None = None) -> Expr:
        """The bytes at each URL; ``on_error="null"`` gives null for a failed URL. The options
        are ``mmbeam.transforms.Download``'s (``max_bytes`` None: its 256 MiB default);
        ``use_native_downloader`` is accepted for Daft compatibility and does nothing."""
        from mmbeam.ops.fetch import DEFAULT_MAX_BYTES, Fetcher

        if use_native_downloader is not None:
            warnings.warn("url.download(use_native_downloader=...) does nothing in mmbeam: "
                          "every download uses the same client", DeprecationWarning, stacklevel=2)
        max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        checked = Fetcher(io_config, timeout_s=timeout_s, retries=retries, max_bytes=max_bytes,
                          allowed_schemes=allowed_schemes)  # options fail here, not at run time
        return self._fn("url.download", max_connections=_positive("max_connections",
                                                                  max_connections),
                        on_error=_on_error(on_error), io_config=io_config, timeout_s=timeout_s,
                        retries=retries, max_bytes=max_bytes,
                        allowed_schemes=checked.allowed_schemes)

    def upload(self, location: str, max_connections: int = 32, on_error: str = "raise",
               io_config: Any = None) -> Expr:
        """Write each row's bytes under ``location``; the result is the written path."""
        if not isinstance(location, str) or not location:
            raise ConfigError(f"upload location must be a folder path or URL, not {location!r}")
        return self._fn("url.upload", location=location,
                        max_connections=_positive("max_connections", max_connections),
                        on_error=_on_error(on_error), io_config=io_config)


class ImageNamespace(_Namespace):
    """Image functions; chains of them run fused, one row at a time."""

    __slots__ = ()
    _label = ".image"

    def decode(self, mode: str | None = None, on_error: str = "raise") -> Expr:
        return self._fn("image.decode", mode=_mode(mode, allow_none=True),
                        on_error=_on_error(on_error))

    def resize(self, w: int, h: int, mode: str = "stretch") -> Expr:
        if mode not in RESIZE_MODES:
            raise ConfigError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
        return self._fn("image.resize", width=_positive("width", w), height=_positive("height", h),
                        mode=mode)

    def encode(self, format: str, quality: int | None = None) -> Expr:  # noqa: A002
        fmt = str(format).upper().replace("JPG", "JPEG")
        if fmt not in IMAGE_FORMATS:
            raise ConfigError(f"unknown image format {format!r}; use one of {IMAGE_FORMATS}")
        if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 100):
            raise ConfigError(f"quality must be an integer from 1 to 100, not {quality!r}")
        return self._fn("image.encode", format=fmt, quality=quality)

    def crop(self, bbox: Any) -> Expr:
        """Crop to ``bbox = (x, y, width, height)``: a fixed tuple or a list column."""
        if isinstance(bbox, Expr):
            return self._fn("image.crop", bbox)
        try:
            box = tuple(int(v) for v in bbox)
        except TypeError:
            raise ConfigError(f"bbox must be (x, y, width, height), not {bbox!r}") from None
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or box[0] < 0 or box[1] < 0:
            raise ConfigError(f"bbox must be (x, y, width, height) with x, y >= 0 and a "
                              f"positive size, not {bbox!r}")
        return self._fn("image.crop", bbox=box)

    def to_mode(self, mode: str) -> Expr:
        return self._fn("image.to_mode", mode=_mode(mode, allow_none=False))

    def width(self) -> Expr:
        return self._fn("image.width")

    def height(self) -> Expr:
        return self._fn("image.height")


def _mode(mode: str | None, allow_none: bool) -> str | None:
    if mode is None and allow_none:
        return None
    if mode not in IMAGE_MODES:
        raise ConfigError(f"unknown image mode {mode!r}; use one of {', '.join(IMAGE_MODES)}")
    return mode
