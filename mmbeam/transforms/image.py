"""``DecodeImage``, ``ResizeImage``, ``EncodeImage``: per-element image kernels on a thread pool."""

from __future__ import annotations

import functools

import numpy as np

from mmbeam.ops.decode import DEFAULT_MAX_PIXELS, check_mode, decode_image
from mmbeam.ops.encode import check_format, encode_image
from mmbeam.ops.resize import check_resize, resize_image
from mmbeam.transforms._base import ElementTransform, KernelFn

__all__ = ["DecodeImage", "EncodeImage", "ResizeImage"]


class _KernelTransform(ElementTransform):
    """An ElementTransform whose work is one pure kernel from ``mmbeam.ops``."""

    def kernel(self):
        raise NotImplementedError

    def make_fn(self):
        return KernelFn(self.kernel(), self.stage, self.on_error, self.keyed, self._failures)


class DecodeImage(_KernelTransform):
    """Bytes → H×W×C uint8 array (H×W for mode ``L``); JPEG, PNG, WEBP, GIF, BMP, TIFF.

    EXIF orientation is applied. Images above ``max_pixels`` fail as decompression bombs.
    ``min_size=(w, h)`` lets JPEGs decode at a reduced scale no smaller than that (use it when a
    resize to that size follows).
    """

    stage = "DecodeImage"
    value_type = np.ndarray

    def __init__(
        self,
        mode: str | None = "RGB",
        on_error: str = "raise",
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_size: tuple[int, int] | None = None,
        keyed: bool = False,
        label: str | None = None,
    ):
        super().__init__(on_error=on_error, keyed=keyed, label=label)
        self.mode = check_mode(mode)
        self.max_pixels = max_pixels
        self.min_size = min_size

    def kernel(self):
        return functools.partial(
            decode_image, mode=self.mode, max_pixels=self.max_pixels, min_size=self.min_size
        )


class ResizeImage(_KernelTransform):
    """Array → array of the box ``width``×``height``: ``stretch`` (exact), ``fit``, ``fill``."""

    stage = "ResizeImage"
    value_type = np.ndarray

    def __init__(
        self,
        width: int,
        height: int,
        mode: str = "stretch",
        on_error: str = "raise",
        *,
        keyed: bool = False,
        label: str | None = None,
    ):
        super().__init__(on_error=on_error, keyed=keyed, label=label)
        check_resize(width, height, mode)
        self.width, self.height, self.mode = width, height, mode

    def kernel(self):
        return functools.partial(resize_image, width=self.width, height=self.height, mode=self.mode)


class EncodeImage(_KernelTransform):
    """Array → bytes in ``format`` (JPEG, PNG, WEBP, BMP, TIFF) at ``quality`` (1-100)."""

    stage = "EncodeImage"
    value_type = bytes

    def __init__(
        self,
        format: str = "JPEG",
        quality: int | None = None,
        on_error: str = "raise",
        *,
        keyed: bool = False,
        label: str | None = None,
    ):
        super().__init__(on_error=on_error, keyed=keyed, label=label)
        self.format = check_format(format, quality)
        self.quality = quality

    def kernel(self):
        return functools.partial(encode_image, format=self.format, quality=self.quality)
