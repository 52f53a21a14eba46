"""Resize images held as numpy arrays with OpenCV (which releases the GIL).

Three modes: ``stretch`` gives exactly width×height (Daft's behaviour), ``fit`` keeps the aspect
ratio inside the box, ``fill`` keeps the aspect ratio and centre-crops to fill the box. Shrinking
by 2x or more uses area interpolation (no aliasing); smaller ratios and enlarging use bilinear.
"""

from __future__ import annotations

import cv2
import numpy as np

from mmbeam.errors import ConfigError, ResizeError

__all__ = ["RESIZE_MODES", "check_resize", "fitted_size", "resize_image"]

RESIZE_MODES = ("stretch", "fit", "fill")


def check_resize(width: int, height: int, mode: str) -> None:
    """Validate resize arguments when the pipeline is built."""
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"resize {name} must be a positive int, got {value!r}")


def fitted_size(src_w: int, src_h: int, width: int, height: int, mode: str) -> tuple[int, int]:
    """The size the source is scaled to before any crop: the box itself for ``stretch``."""
    if mode == "stretch":
        return width, height
    scale = (min if mode == "fit" else max)(width / src_w, height / src_h)
    return max(1, round(src_w * scale)), max(1, round(src_h * scale))


def _interpolation(src_w: int, src_h: int, new_w: int, new_h: int) -> int:
    """Area averaging when either side shrinks by 2x or more (bilinear would skip source
    pixels and alias); otherwise bilinear, whose 2-pixel footprint still covers every source
    pixel, at a quarter of area averaging's cost for fractional ratios (a reduced JPEG decode
    always leaves a ratio under 2)."""
    if src_w >= 2 * new_w or src_h >= 2 * new_h:
        return cv2.INTER_AREA
    return cv2.INTER_LINEAR


def resize_image(image: np.ndarray, width: int, height: int, mode: str = "stretch") -> np.ndarray:
    """Resize an H×W(×C) uint8 array to the box (width, height) by ``mode``."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        shape = getattr(image, "shape", type(image).__name__)
        raise ResizeError(f"expected an H×W or H×W×C image array, got {shape}")
    src_h, src_w = image.shape[:2]
    new_w, new_h = fitted_size(src_w, src_h, width, height, mode)
    if (new_w, new_h) != (src_w, src_h):
        interpolation = _interpolation(src_w, src_h, new_w, new_h)
        try:
            image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        except cv2.error as exc:
            raise ResizeError(f"OpenCV cannot resize {image.shape} {image.dtype}: {exc}") from exc
    if mode == "fill":
        top, left = (new_h - height) // 2, (new_w - width) // 2
        image = np.ascontiguousarray(image[top : top + height, left : left + width])
    return image
