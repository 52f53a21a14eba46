"""The URL and image functions, each declared once (see :mod:`mmbeam.ops.registry`).

Each declaration gives the function's frame name (``image.resize``) and stage name
(``ResizeImage``, also the Beam transform's class name), its options and their checks, the input
it accepts, its output type and its step builder. :mod:`mmbeam.transforms` makes one
``PTransform`` per declaration, :mod:`mmbeam.expr` one namespace method; both run the steps
built here. Adding an image operation means adding one declaration below (plus its tests).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmbeam.errors import ConfigError
from mmbeam.ops.decode import DECODE_MODES, DEFAULT_MAX_PIXELS, check_mode, decode_image
from mmbeam.ops.encode import ENCODE_FORMATS, check_format, encode_image
from mmbeam.ops.fetch import DEFAULT_MAX_BYTES, Fetcher, check_on_error, check_schemes
from mmbeam.ops.image import crop, to_mode
from mmbeam.ops.registry import FRAME, Function, Kernel, Option, register
from mmbeam.ops.resize import RESIZE_MODES, resize_image
from mmbeam.ops.store import Store, content_name
from mmbeam.types import DataType

__all__ = [
    "CONVERT",
    "CROP",
    "DECODE",
    "DOWNLOAD",
    "ENCODE",
    "HEIGHT",
    "RESIZE",
    "UPLOAD",
    "WIDTH",
    "check_positive",
]


# -- option checks ---------------------------------------------------------------------------------
def check_positive(name: str) -> Any:
    """A check that ``name`` is a positive int (not a bool)."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
        return value

    return check


def _size_pair(value: Any) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"min_size must be (width, height), got {value!r}") from None
    if width < 1 or height < 1:
        raise ConfigError(f"min_size must be positive, got {value!r}")
    return width, height


def _bbox(value: Any) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"bbox must be (x, y, width, height), got {value!r}") from None
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or box[0] < 0 or box[1] < 0:
        raise ConfigError(f"bbox must be (x, y, width, height) with x, y >= 0 and a positive "
                          f"size, got {value!r}")
    return box  # type: ignore[return-value]


def _location(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"upload location must be a folder path or URL, got {value!r}")
    return value


def _to_mode(value: Any) -> str:
    if value is None:
        raise ConfigError(f"image mode must be one of {DECODE_MODES}, got None")
    return check_mode(value)


def _native_downloader(value: Any) -> None:
    warnings.warn("url.download(use_native_downloader=...) does nothing in mmbeam: every "
                  "download uses the same client", DeprecationWarning, stacklevel=4)


ON_ERROR = Option("on_error", "raise", check_on_error,
                  "'raise' fails naming the row, stage and cause; 'null' gives a counted null")
IO_CONFIG = Option("io_config", None, None, "credentials and endpoints (mmbeam.io.IOConfig)",
                   shown=False)
CONNECTIONS = Option("max_connections", 32, check_positive("max_connections"),
                     "requests in flight per worker")


# -- kernels: fn(value, key, **per-row options) ----------------------------------------------------
def _flat(image: np.ndarray) -> np.ndarray:
    """An H×W×1 array (a grey image read back from Arrow) as H×W."""
    return image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image


async def _fetch(fetcher: Fetcher, url: str, key: Any) -> bytes:
    return await fetcher.fetch(url)


def _fetch_blocking(fetcher: Fetcher, url: str, key: Any) -> bytes:
    return fetcher.fetch_blocking(url)


def _fetcher(o: Mapping[str, Any]) -> Fetcher:
    return Fetcher(o["io_config"], timeout_s=o["timeout_s"], retries=o["retries"],
                   max_bytes=o["max_bytes"], allowed_schemes=o["allowed_schemes"])


def _build_download(o: Mapping[str, Any]) -> Kernel:
    fetcher = _fetcher(o)
    return Kernel("io", functools.partial(_fetch, fetcher), o["max_connections"],
                  functools.partial(_fetch_blocking, fetcher))


def _payload(data: Any) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _name(data: bytes, key: Any, name: Any) -> tuple[str, bool]:
    """The file name (the row's ``name``, else the element's key, else a content hash) and
    whether it is the content hash."""
    if name is not None:
        return str(name), False
    if key is not None:
        return str(key), False
    return content_name(data), True


async def _store(store: Store, data: Any, key: Any, name: Any = None) -> str:
    data = _payload(data)
    return await store.write_async(_name(data, key, name)[0], data)


def _store_local(store: Store, data: Any, key: Any, name: Any = None) -> str:
    data = _payload(data)
    target, by_content = _name(data, key, name)
    return store.write_local(target, data, content_named=by_content)


def _build_upload(o: Mapping[str, Any]) -> Kernel:
    store = Store(o["location"], o["io_config"])
    if store.is_local:  # a small blocking write: part of the row's CPU task, no hop
        return Kernel("cpu", functools.partial(_store_local, store))
    return Kernel("io", functools.partial(_store, store), o["max_connections"])


def _decode(data: Any, key: Any, mode: str | None, max_pixels: int,
            min_size: tuple[int, int] | None) -> np.ndarray:
    return decode_image(data, mode, max_pixels=max_pixels, min_size=min_size)


def _resize(image: np.ndarray, key: Any, width: int, height: int, mode: str) -> np.ndarray:
    return resize_image(_flat(image), width, height, mode)


def _encode(image: np.ndarray, key: Any, format: str, quality: int | None) -> bytes:  # noqa: A002
    return encode_image(_flat(image), format, quality)


def _crop(image: np.ndarray, key: Any, bbox: Any) -> np.ndarray:
    return crop(image, bbox)


def _convert(image: np.ndarray, key: Any, mode: str) -> np.ndarray:
    return to_mode(_flat(image), mode)


def _width(image: np.ndarray, key: Any) -> int:
    return int(image.shape[1])


def _height(image: np.ndarray, key: Any) -> int:
    return int(image.shape[0])


def _cpu(kernel: Any, *names: str) -> Any:
    """A builder for a CPU kernel taking the options ``names`` (per-row ones excluded)."""

    def build(o: Mapping[str, Any]) -> Kernel:
        return Kernel("cpu", functools.partial(kernel, **{n: o[n] for n in names}))

    return build


def _image(dtype: DataType) -> bool:
    return dtype.is_image()


_AN_IMAGE = "an Image column (decode bytes first with .image.decode())"


def _same_image(dtype: DataType, o: Mapping[str, Any]) -> DataType:
    return DataType.image(dtype.image_mode if dtype.is_image() else None)


# -- the declarations ------------------------------------------------------------------------------
DOWNLOAD = register(Function(
    name="url.download", stage="Download",
    doc="The bytes at each URL (http(s)://, s3://, gs://, file://, a local path), with at "
        "most max_connections requests in flight per worker. timeout_s bounds each attempt as "
        "a whole; transient failures (408, 425, 429, 5xx, reset, truncated body, timeout) are "
        "retried `retries` times with exponential backoff. A body over max_bytes (default 256 "
        "MiB) fails without being read further. Redirects are followed to http(s) only, and "
        "configured headers go to the URL's own origin only. allowed_schemes (e.g. ('http', "
        "'https')) refuses other URLs, local paths included.",
    options=(CONNECTIONS, ON_ERROR, IO_CONFIG,
             Option("timeout_s", 60.0, None, "seconds per attempt"),
             Option("retries", 3, None, "extra attempts after a transient failure"),
             Option("max_bytes", DEFAULT_MAX_BYTES, check_positive("max_bytes"),
                    "the largest body read", keyword=True),
             Option("allowed_schemes", None, check_schemes,
                    "schemes a URL may use (None: all; 'file' covers local paths)",
                    keyword=True),
             Option("use_native_downloader", None, _native_downloader,
                    "accepted for Daft compatibility; does nothing (warns)",
                    surfaces=(FRAME,), keyword=True, keep=False)),
    accepts=DataType.is_string, accepts_doc="a Utf8 column of URLs",
    output=lambda t, o: DataType.binary(), build=_build_download, value_type=bytes,
    validate=_fetcher))

DECODE = register(Function(
    name="image.decode", stage="DecodeImage",
    doc="Bytes to an H×W×C uint8 image (H×W for mode L): JPEG, PNG, WEBP, GIF (first frame), "
        "BMP, TIFF, EXIF orientation applied. Images above max_pixels fail as decompression "
        "bombs. When only resizes read the result, JPEGs decode at the reduced DCT scale that "
        "still covers the box (or min_size=(w, h) when given).",
    options=(Option("mode", "RGB", check_mode, f"one of {DECODE_MODES}; None keeps the "
                    "image's own", frame_default=None),
             ON_ERROR,
             Option("max_pixels", DEFAULT_MAX_PIXELS, check_positive("max_pixels"),
                    "decompression-bomb limit", keyword=True),
             Option("min_size", None, _size_pair, "decode JPEGs at a reduced scale no "
                    "smaller than (width, height)", keyword=True)),
    accepts=DataType.is_binary, accepts_doc="a Binary column (bytes of an encoded image)",
    output=lambda t, o: DataType.image(o["mode"]),
    build=_cpu(_decode, "mode", "max_pixels", "min_size"), value_type=np.ndarray,
    box_option="min_size"))

RESIZE = register(Function(
    name="image.resize", stage="ResizeImage",
    doc="An image resized to the box width×height: stretch (exact), fit (keep the aspect "
        "ratio inside the box) or fill (keep it and centre-crop).",
    options=(Option("width", check=check_positive("width")),
             Option("height", check=check_positive("height")),
             Option("mode", "stretch", lambda m: _choice("resize mode", m, RESIZE_MODES)),
             ON_ERROR),
    accepts=_image, accepts_doc=_AN_IMAGE, output=_same_image,
    build=_cpu(_resize, "width", "height", "mode"), value_type=np.ndarray,
    reads_box=lambda o: (o["width"], o["height"])))

ENCODE = register(Function(
    name="image.encode", stage="EncodeImage",
    doc=f"An image encoded as bytes in one of {ENCODE_FORMATS} at quality (1-100; alpha is "
        "dropped for JPEG and BMP).",
    options=(Option("format", "JPEG", check_format, f"one of {ENCODE_FORMATS}"),
             Option("quality", None, None, "1-100 (None: the format's default)"),
             ON_ERROR),
    accepts=_image, accepts_doc=_AN_IMAGE, output=lambda t, o: DataType.binary(),
    build=_cpu(_encode, "format", "quality"), value_type=bytes,
    validate=lambda o: check_format(o["format"], o["quality"])))

CROP = register(Function(
    name="image.crop", stage="CropImage",
    doc="The box bbox = (x, y, width, height) cut out of an image (clipped to it); on the "
        "frame, bbox may be a column of such lists.",
    options=(Option("bbox", check=_bbox, per_row=True), ON_ERROR),
    accepts=_image, accepts_doc=_AN_IMAGE, output=_same_image,
    build=lambda o: Kernel("cpu", functools.partial(
        _crop, **({} if o["bbox"] is None else {"bbox": o["bbox"]}))),
    value_type=np.ndarray,
    per_row_accepts={"bbox": (lambda t: t.is_list() and t.inner.is_integer(),
                              "a bbox column of integer lists [x, y, width, height]")}))

CONVERT = register(Function(
    name="image.to_mode", stage="ConvertImage",
    doc=f"An image converted to another mode ({', '.join(DECODE_MODES)}).",
    options=(Option("mode", check=_to_mode), ON_ERROR),
    accepts=_image, accepts_doc=_AN_IMAGE, output=lambda t, o: DataType.image(o["mode"]),
    build=_cpu(_convert, "mode"), value_type=np.ndarray))

WIDTH = register(Function(
    name="image.width", stage="ImageWidth", doc="Each image's width in pixels.",
    options=(ON_ERROR,), accepts=_image, accepts_doc=_AN_IMAGE,
    output=lambda t, o: DataType.int64(), build=_cpu(_width), value_type=int, transform=False))

HEIGHT = register(Function(
    name="image.height", stage="ImageHeight", doc="Each image's height in pixels.",
    options=(ON_ERROR,), accepts=_image, accepts_doc=_AN_IMAGE,
    output=lambda t, o: DataType.int64(), build=_cpu(_height), value_type=int, transform=False))

UPLOAD = register(Function(
    name="url.upload", stage="Upload",
    doc="Each row's bytes written under location (a folder, s3://… or gs://…), atomically; "
        "the result is the written path or URL. The file is named by `name` (a column, on the "
        "frame), else by the element's key (the transform's keyed=True), else by a hash of "
        "its content; a name that would escape location fails with UnsafePathError.",
    options=(Option("location", check=_location), ON_ERROR, IO_CONFIG, CONNECTIONS,
             Option("name", None, None, "a column naming each row's file", per_row=True,
                    surfaces=(FRAME,), keyword=True)),
    accepts=lambda t: t.is_binary() or t.is_string(), accepts_doc="a Binary column",
    output=lambda t, o: DataType.string(), build=_build_upload, value_type=str,
    validate=lambda o: Store(o["location"], o["io_config"]),
    per_row_accepts={"name": (lambda t: t.is_string() or t.is_integer(),
                              "a Utf8 or integer column of file names")}))


def _choice(what: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {choices}, got {value!r}")
    return value
