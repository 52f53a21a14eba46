"""Small per-image operations on numpy arrays: crop, mode conversion, size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from mmbeam.errors import ImageError
from mmbeam.ops.decode import check_mode

__all__ = ["crop", "image_mode", "to_mode"]

_MODE_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def image_mode(image: np.ndarray) -> str:
    """The Pillow mode of an H×W(×C) uint8 array: L, LA, RGB or RGBA."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        shape = getattr(image, "shape", type(image).__name__)
        raise ImageError(f"expected an H×W or H×W×C image array, got {shape}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype != np.uint8 or channels not in _MODE_BY_CHANNELS:
        raise ImageError(
            f"expected a uint8 image with 1-4 channels, got {image.shape} {image.dtype}"
        )
    return _MODE_BY_CHANNELS[channels]


def crop(image: np.ndarray, bbox: Sequence[int]) -> np.ndarray:
    """Cut the box ``(x, y, width, height)`` out of an image (clipped to its bounds)."""
    if len(bbox) != 4:
        raise ImageError(f"bbox must be (x, y, width, height), got {bbox!r}")
    x, y, w, h = (int(v) for v in bbox)
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise ImageError(f"bbox must have x, y >= 0 and width, height > 0, got {bbox!r}")
    out = image[y : y + h, x : x + w]
    if out.size == 0:
        raise ImageError(f"bbox {bbox!r} lies outside the {image.shape[1]}x{image.shape[0]} image")
    return np.ascontiguousarray(out)


def to_mode(image: np.ndarray, mode: str) -> np.ndarray:
    """Convert an image array to another mode (L, LA, RGB, RGBA)."""
    check_mode(mode)
    if image_mode(image) == mode:
        return image
    return np.asarray(Image.fromarray(image).convert(mode))
