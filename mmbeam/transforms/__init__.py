"""Beam PTransforms for multimodal data: download, decode, resize, encode, crop, convert,
upload, join, and RunModel (a model loaded once per worker process, run on autotuned batches).

Each is a verb usable in any Beam pipeline; each per-element transform takes ``on_error``
(``"raise"`` or ``"null"``), ``keyed=True`` for ``(key, value)`` pairs, and
``.with_exception_handling()`` returning ``(good, failed)``. Importing this package registers
mmbeam's Beam coders (``mmbeam.transforms.coders``).
"""

from mmbeam.transforms import coders
from mmbeam.transforms.element import ElementFn, ElementTransform, FailedRecord, FunctionTransform
from mmbeam.transforms.functions import (
    ConvertImage,
    CropImage,
    DecodeImage,
    Download,
    EncodeImage,
    ResizeImage,
    Upload,
)
from mmbeam.transforms.fuse import Fuse
from mmbeam.transforms.join import Join
from mmbeam.transforms.model import RunModel
from mmbeam.transforms.options import MmbeamOptions

__all__ = [
    "ConvertImage",
    "CropImage",
    "DecodeImage",
    "Download",
    "ElementFn",
    "ElementTransform",
    "EncodeImage",
    "FailedRecord",
    "FunctionTransform",
    "Fuse",
    "Join",
    "MmbeamOptions",
    "ResizeImage",
    "RunModel",
    "Upload",
    "coders",
]
