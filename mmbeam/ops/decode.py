"""Decode image bytes into numpy arrays, safely and at the smallest useful size.

Pillow reads the header of every format (JPEG, PNG, WEBP, GIF's first frame, BMP, TIFF): the size
is checked against a decompression-bomb limit before any pixel is decoded, and the EXIF
orientation is applied, so a phone photo comes out upright. When a resize follows, ``min_size``
lets a JPEG decode at the smallest libjpeg-turbo DCT scale M/8 (1/8, 1/4, 3/8, ... 7/8) that is
still at least that large: a 1024x768 photo for a 256x256 thumbnail decodes at 3/8 (384x288),
which cuts both the decode and the resize after it. RGB and grey JPEGs decode with simplejpeg
(libjpeg-turbo, GIL released, straight into RGB or grey: no colour conversion afterwards; OpenCV's
``IMREAD_REDUCED_*`` with scales 1/2, 1/4, 1/8 when simplejpeg is missing); everything else
(CMYK, PNG, ...) goes to Pillow. A JPEG whose pixel data is truncated or damaged raises
DecodeError instead of coming out partly grey; stray bytes between markers are harmless and such
files decode (with Pillow).

``max_pixels`` is the only pixel limit, in both directions: Pillow's own process-wide
decompression-bomb check (``Image.MAX_IMAGE_PIXELS``: a warning above 89.5 MP, an error above
179 MP) is replaced, for mmbeam's calls only, by the per-call limit, kept in a context variable
so concurrent decodes with different limits never see each other's. Outside mmbeam's calls
Pillow behaves as configured.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
from collections.abc import Iterator
from fractions import Fraction
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmbeam.errors import ConfigError, DecodeError, ImageTooLargeError

try:
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency; OpenCV decodes JPEGs without it
    simplejpeg = None

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_MODES",
    "ImageHeader",
    "check_mode",
    "decode_image",
    "jpeg_scale",
    "probe_image",
]

DEFAULT_MAX_PIXELS = 100_000_000  # 10,000 x 10,000: larger than any camera, far below a bomb
IMAGE_MODES = ("L", "LA", "RGB", "RGBA")
_ORIENTATION_TAG = 0x0112
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a phone's JPEG with more pictures after the first
_DAMAGED = ("Premature end of JPEG file", "Corrupt JPEG data")  # libjpeg's warnings about pixels
_HARMLESS = ("extraneous bytes", "ICC")  # "Corrupt JPEG data" that leaves the pixels intact
_CV2_FLAGS = {  # (mode, divisor) -> imdecode flags, for the fallback without simplejpeg
    ("RGB", 1): cv2.IMREAD_COLOR, ("RGB", 2): cv2.IMREAD_REDUCED_COLOR_2,
    ("RGB", 4): cv2.IMREAD_REDUCED_COLOR_4, ("RGB", 8): cv2.IMREAD_REDUCED_COLOR_8,
    ("L", 1): cv2.IMREAD_GRAYSCALE, ("L", 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    ("L", 4): cv2.IMREAD_REDUCED_GRAYSCALE_4, ("L", 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


class ImageHeader(NamedTuple):
    """What the header says: format, stored size, EXIF orientation (1 = upright), Pillow mode."""

    format: str
    width: int
    height: int
    orientation: int
    mode: str


def check_mode(mode: str | None) -> str | None:
    """Validate an image mode argument when the pipeline is built."""
    if mode is not None and mode not in IMAGE_MODES:
        raise ConfigError(f"image mode must be one of {IMAGE_MODES} or None, got {mode!r}")
    return mode


_max_pixels: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "mmbeam_max_pixels", default=None)
_pillow_bomb_check = Image._decompression_bomb_check


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,} "
            "(a decompression bomb?); raise max_pixels if the image is genuine"
        )


def _bomb_check(size: tuple[int, int]) -> None:
    """Pillow's check of every size it opens, loads or crops (open, GIF frames, TIFF tiles):
    inside :func:`_pixel_limit` the per-call ``max_pixels``, elsewhere Pillow's own."""
    limit = _max_pixels.get()
    if limit is None:
        _pillow_bomb_check(size)
    else:
        _check_pixels(size, limit)


Image._decompression_bomb_check = _bomb_check  # Pillow looks it up at each call


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    token = _max_pixels.set(max_pixels)
    try:
        yield
    finally:
        _max_pixels.reset(token)


def _open(data: bytes, max_pixels: int) -> tuple[Image.Image, ImageHeader]:
    """Open ``data`` lazily (header only) and refuse it when it is larger than ``max_pixels``
    (call inside :func:`_pixel_limit`, which also governs Pillow's own checks)."""
    if not data:
        raise DecodeError("empty input: zero bytes is not an image")
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    _check_pixels(img.size, max_pixels)
    orientation = img.getexif().get(_ORIENTATION_TAG, 1) if img.format in _JPEG_FORMATS else 1
    if orientation not in range(1, 9):
        orientation = 1
    return img, ImageHeader(img.format or "", width, height, orientation, img.mode)


def probe_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Read and check only the header of ``data`` (DecodeError / ImageTooLargeError)."""
    try:
        with _pixel_limit(max_pixels):
            return _open(data, max_pixels)[1]
    except Exception as exc:  # noqa: BLE001 - classified by _classify
        raise _classify(exc, data) from exc


def jpeg_scale(header: ImageHeader, min_size: tuple[int, int] | None) -> Fraction:
    """The smallest DCT scale M/8 whose decoded size (``ceil(side * M / 8)``) stays >=
    ``min_size``; 1 for other formats, without ``min_size``, or when no smaller scale fits.

    ``min_size`` is the target as displayed, so it is swapped for images stored rotated by 90°.
    """
    if min_size is None or header.format not in _JPEG_FORMATS:
        return Fraction(1)
    width, height = _stored_box(header, min_size)
    for eighths in range(1, 8):
        if -(-header.width * eighths // 8) >= width and -(-header.height * eighths // 8) >= height:
            return Fraction(eighths, 8)
    return Fraction(1)


def _stored_box(header: ImageHeader, min_size: tuple[int, int]) -> tuple[int, int]:
    """``min_size`` (as displayed) in the orientation the pixels are stored in."""
    width, height = min_size
    return (height, width) if header.orientation in (5, 6, 7, 8) else (width, height)


def decode_image(
    data: bytes,
    mode: str | None = "RGB",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode ``data`` to an H×W×C uint8 array (H×W for mode ``L``).

    ``mode=None`` keeps the image's own mode when it is one of IMAGE_MODES (else RGB/RGBA).
    Raises DecodeError for bytes that are not a readable image and ImageTooLargeError above
    ``max_pixels``.
    """
    try:
        with _pixel_limit(max_pixels):
            return _decode(data, mode, max_pixels, min_size)
    except Exception as exc:  # noqa: BLE001 - classified by _classify
        raise _classify(exc, data) from exc


def _decode(data: bytes, mode: str | None, max_pixels: int,
            min_size: tuple[int, int] | None) -> np.ndarray:
    """:func:`decode_image` inside its pixel limit; errors are classified by the caller."""
    img, header = _open(data, max_pixels)
    target = mode or _natural_mode(img)
    if header.format in _JPEG_FORMATS and {header.mode, target} <= {"RGB", "L"}:
        pixels = _decode_jpeg(data, target, header, min_size)
        if pixels is not None:
            return np.ascontiguousarray(_orient(pixels, header.orientation))
    if min_size is not None and header.format in _JPEG_FORMATS:
        img.draft(img.mode, _stored_box(header, min_size))  # Pillow: 1/2, 1/4 or 1/8
    img.load()
    if header.orientation != 1:
        img = ImageOps.exif_transpose(img)
    return np.asarray(img.convert(target))


def _decode_jpeg(
    data: bytes, mode: str, header: ImageHeader, min_size: tuple[int, int] | None
) -> np.ndarray | None:
    """An RGB or grey JPEG at :func:`jpeg_scale`, in stored orientation. DecodeError when its
    pixel data is truncated or damaged; None for anything else libjpeg-turbo warns about or
    cannot read (stray bytes between markers, 12-bit, ...): Pillow decodes or reports those."""
    if simplejpeg is None:
        return _decode_cv2(data, mode, jpeg_scale(header, min_size))
    width, height = (0, 0) if min_size is None else _stored_box(header, min_size)
    try:  # strict (the default): raises on every libjpeg warning instead of grey-filling
        pixels = simplejpeg.decode_jpeg(
            data, colorspace=mode if mode == "RGB" else "GRAY", min_width=width, min_height=height
        )
    except ValueError as exc:
        message = str(exc)
        if message.startswith(_DAMAGED) and not any(word in message for word in _HARMLESS):
            raise DecodeError(f"corrupt or truncated JPEG ({len(data)} bytes): {message}") from exc
        return None
    return pixels if mode == "RGB" else pixels[:, :, 0]


def _decode_cv2(data: bytes, mode: str, scale: Fraction) -> np.ndarray | None:
    """The OpenCV fallback: the largest of 1/8, 1/4, 1/2, 1 that is at least ``scale``."""
    divisor = next(d for d in (8, 4, 2, 1) if d * scale <= 1)
    if not _ends_with_eoi(data):  # OpenCV would grey-fill a truncated file silently
        return None
    flags = _CV2_FLAGS[(mode, divisor)] | cv2.IMREAD_IGNORE_ORIENTATION  # we apply it, as Pillow
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    return pixels if pixels is None or mode == "L" else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def _ends_with_eoi(data: bytes) -> bool:
    """A complete JPEG ends with its EOI marker (maybe padded); OpenCV would grey-fill a
    truncated one silently, so those go to Pillow, which reports them."""
    return b"\xff\xd9" in bytes(data[-64:])


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2-8) to an H×W(×C) array, as ``ImageOps.exif_transpose``."""
    if orientation in (5, 6, 7, 8):
        a = a.swapaxes(0, 1)  # transpose first; then each case is a flip
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        a = a[:, ::-1]
    if orientation in (3, 4):
        a = a[::-1]
    return a


def _classify(exc: BaseException, data: bytes) -> Exception:
    if isinstance(exc, (DecodeError, ImageTooLargeError)):
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageTooLargeError(f"decompression bomb: {exc}")
    if isinstance(exc, UnidentifiedImageError):
        return DecodeError(f"not an image (first bytes {bytes(data[:12])!r})")
    if isinstance(exc, (OSError, SyntaxError, ValueError, cv2.error)):
        return DecodeError(f"corrupt or truncated image ({len(data)} bytes): {exc}")
    return DecodeError(f"{type(exc).__name__}: {exc}")


def _natural_mode(img: Image.Image) -> str:
    """The closest of IMAGE_MODES to the image's own mode, keeping transparency if it has any."""
    if img.mode in IMAGE_MODES:
        return img.mode
    if img.mode in ("1", "I;16", "I", "F"):
        return "L"
    has_alpha = "A" in img.mode or "a" in img.mode or "transparency" in img.info
    return "RGBA" if has_alpha else "RGB"
