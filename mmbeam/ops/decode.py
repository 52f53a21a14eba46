"""Decode image bytes into numpy arrays, safely and at the smallest useful size.

Pillow reads JPEG, PNG, WEBP, GIF (first frame), BMP and TIFF and releases the GIL while it
decodes. The EXIF orientation is applied, so a phone photo comes out upright. A decompression-bomb
limit is checked from the header, before any pixel is decoded. When a resize follows, ``min_size``
lets a JPEG decode at a reduced DCT scale (1/2, 1/4, 1/8) that is still at least that large, which
cuts decode time and memory by up to 64x without changing the resized result visibly.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmbeam.errors import ConfigError, DecodeError, ImageTooLargeError

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_MODES", "decode_image", "check_mode"]

DEFAULT_MAX_PIXELS = 100_000_000  # 10,000 x 10,000: larger than any camera, far below a bomb
IMAGE_MODES = ("L", "LA", "RGB", "RGBA")
_ORIENTATION_TAG = 0x0112


def check_mode(mode: str | None) -> str | None:
    """Validate an image mode argument when the pipeline is built."""
    if mode is not None and mode not in IMAGE_MODES:
        raise ConfigError(f"image mode must be one of {IMAGE_MODES} or None, got {mode!r}")
    return mode


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
    if not data:
        raise DecodeError("empty input: zero bytes is not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,} "
                "(a decompression bomb?); raise max_pixels if the image is genuine"
            )
        orientation = img.getexif().get(_ORIENTATION_TAG, 1) if img.format == "JPEG" else 1
        if min_size is not None and img.format == "JPEG":
            _draft(img, min_size, swapped=orientation in (5, 6, 7, 8))
        img.load()
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        img = img.convert(mode or _natural_mode(img))
        return np.asarray(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(f"not an image (first bytes {bytes(data[:12])!r})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"corrupt or truncated image ({len(data)} bytes): {exc}") from exc


def _draft(img: Image.Image, min_size: tuple[int, int], swapped: bool) -> None:
    """Ask the JPEG decoder for the smallest DCT scale that is still >= min_size."""
    width, height = min_size
    if swapped:  # the image is stored rotated by 90 degrees
        width, height = height, width
    if width > 0 and height > 0:
        img.draft(img.mode, (width, height))


def _natural_mode(img: Image.Image) -> str:
    """The closest of IMAGE_MODES to the image's own mode, keeping transparency if it has any."""
    if img.mode in IMAGE_MODES:
        return img.mode
    if img.mode in ("1", "I;16", "I", "F"):
        return "L"
    has_alpha = "A" in img.mode or "a" in img.mode or "transparency" in img.info
    return "RGBA" if has_alpha else "RGB"
