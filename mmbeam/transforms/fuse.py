"""``Fuse``: run a chain of per-element transforms as one fused per-row kernel.

``Fuse(Download(32), DecodeImage(), ResizeImage(256, 256), EncodeImage("JPEG"), Upload(out))``
is one DoFn: each element downloads, decodes (at the reduced JPEG scale the resize allows),
resizes, encodes and uploads as one unit of work, so at most one row's full-size data lives per
worker thread, and rows overlap (downloads and uploads on the I/O loop while the CPU pool
works). Each part keeps its own ``on_error`` ("null" turns that step's failure into a None that
later steps pass through); a failure that is not nulled raises, or with
``.with_exception_handling()`` becomes a FailedRecord naming the part's stage.
"""

from __future__ import annotations

from mmbeam.autotune import default_memory_budget
from mmbeam.errors import ConfigError
from mmbeam.ops.engine import chain_steps
from mmbeam.ops.rowchain import RowChain, Step
from mmbeam.transforms.element import ElementFn, ElementTransform, FunctionTransform

__all__ = ["Fuse"]


class Fuse(ElementTransform):
    """The given per-element transforms, fused into one per-row kernel (see module doc)."""

    stage = "Fuse"

    def __init__(self, *parts: FunctionTransform, label: str | None = None):
        if not parts:
            raise ConfigError("Fuse needs at least one transform, e.g. Fuse(Download(), ...)")
        for part in parts:
            if not isinstance(part, FunctionTransform):
                raise ConfigError(
                    f"Fuse takes per-element transforms (Download, DecodeImage, ResizeImage, "
                    f"EncodeImage, CropImage, ConvertImage, Upload), got {type(part).__name__}")
            if part.handles_failures:
                raise ConfigError("call .with_exception_handling() on the Fuse, not on its parts")
        keyed = {p.keyed for p in parts}
        if len(keyed) != 1:
            raise ConfigError("all parts of a Fuse must agree on keyed=True or keyed=False")
        super().__init__(keyed=keyed.pop(), label=label)
        self.parts = parts
        self.stage = "+".join(p.stage for p in parts)
        self.value_type = parts[-1].value_type

    def steps(self) -> list[Step]:
        """One step per part; a decode followed by a resize decodes at the resize's box."""
        return chain_steps([p.call() for p in self.parts],
                           nullable=[p.on_error == "null" for p in self.parts])

    def make_fn(self, memory_budget: int | None = None) -> ElementFn:
        """This transform's DoFn."""
        return ElementFn(RowChain(self.steps()), keyed=self.keyed, failures=self._failures,
                         memory_budget=memory_budget or default_memory_budget())
