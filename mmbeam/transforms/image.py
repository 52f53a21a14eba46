"""``DecodeImage``, ``ResizeImage``, ``EncodeImage``: per-element image kernels on a thread pool.

A ``DecodeImage`` whose output goes only into ``ResizeImage`` steps decodes JPEGs at the largest
reduced DCT scale that is still at least every resize's box, so the documented chain
``Download | DecodeImage() | ResizeImage(256, 256) | ...`` never holds full-size pixels. The
check runs when the pipeline is serialized to run, when every consumer is known: one other
consumer (a ``beam.Map`` reading the full image) and the decode stays full size.
"""

from __future__ import annotations

import functools

import apache_beam as beam
import numpy as np

from mmbeam.ops.decode import DEFAULT_MAX_PIXELS, check_mode, decode_image
from mmbeam.ops.encode import check_format, encode_image
from mmbeam.ops.resize import check_resize, resize_image
from mmbeam.ops.rowchain import RowChain
from mmbeam.transforms._base import ElementFn, ElementTransform, cpu_step
from mmbeam.transforms.options import memory_budget_of

__all__ = ["DecodeImage", "EncodeImage", "ResizeImage"]


class DecodeImage(ElementTransform):
    """Bytes → H×W×C uint8 array (H×W for mode ``L``); JPEG, PNG, WEBP, GIF, BMP, TIFF.

    EXIF orientation is applied. Images above ``max_pixels`` fail as decompression bombs.
    ``min_size=(w, h)`` lets JPEGs decode at a reduced scale no smaller than that; without it,
    a decode feeding only resizes picks that size itself.
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

    def kernel(self, min_size=None):
        return functools.partial(decode_image, mode=self.mode, max_pixels=self.max_pixels,
                                 min_size=self.min_size or min_size)

    def step(self, nullable, min_size=None):
        return cpu_step(self.stage, self.kernel(min_size), nullable)

    def expand(self, pcoll):
        pardo = beam.ParDo(_DecodeFn(self, memory_budget_of(pcoll.pipeline)))
        out = self.apply_pardo(pcoll, pardo)
        if not self._failures and self.min_size is None:
            pardo.fn.output = out  # ResizeImages register on it; see _DecodeFn.__getstate__
        return out


class _DecodeFn(ElementFn):
    """The decode DoFn, which learns at serialization time whether only resizes consume it."""

    def __init__(self, transform: DecodeImage, memory_budget: int):
        nullable = transform.on_error == "null" and not transform._failures
        super().__init__(RowChain([transform.step(nullable)]), keyed=transform.keyed,
                         failures=transform._failures, memory_budget=memory_budget)
        self.decode_args = (transform.mode, transform.max_pixels, nullable)
        self.output = None
        self.resizes: dict[int, tuple[int, int]] = {}  # id(ParDo) -> box

    def __getstate__(self):
        state = self.__dict__.copy()
        state["output"] = None
        state["resizes"] = {}
        box = self._reduced_box()
        if box is not None:
            mode, max_pixels, nullable = self.decode_args
            kernel = functools.partial(decode_image, mode=mode, max_pixels=max_pixels,
                                       min_size=box)
            state["chain"] = RowChain([cpu_step(self.stage, kernel, nullable)])
        return state

    def _reduced_box(self) -> tuple[int, int] | None:
        """The smallest size every consumer needs, when every consumer is a ResizeImage."""
        if self.output is None or not self.resizes:
            return None
        consumers = _consumers(self.output)
        if not consumers or any(id(c.transform) not in self.resizes for c in consumers):
            return None
        boxes = [self.resizes[id(c.transform)] for c in consumers]
        return max(w for w, _ in boxes), max(h for _, h in boxes)


def _consumers(pcoll) -> list:
    """Leaf applied transforms of ``pcoll``'s pipeline that read ``pcoll`` (main or side)."""
    found = []
    stack = [pcoll.pipeline.transforms_stack[0]]
    while stack:
        node = stack.pop()
        if node.parts:
            stack.extend(node.parts)
            continue
        reads = list(node.inputs) + [getattr(s, "pvalue", None) for s in node.side_inputs]
        if any(r is pcoll for r in reads):
            found.append(node)
    return found


class ResizeImage(ElementTransform):
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

    def step(self, nullable):
        return cpu_step(self.stage, self.kernel(), nullable)

    def expand(self, pcoll):
        pardo = beam.ParDo(self.make_fn(memory_budget_of(pcoll.pipeline)))
        producer = getattr(getattr(pcoll, "producer", None), "transform", None)
        decode = getattr(producer, "fn", None)
        if isinstance(decode, _DecodeFn) and decode.output is pcoll:
            decode.resizes[id(pardo)] = (self.width, self.height)
        return self.apply_pardo(pcoll, pardo)


class EncodeImage(ElementTransform):
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

    def step(self, nullable):
        return cpu_step(self.stage, self.kernel(), nullable)
