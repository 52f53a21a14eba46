"""Beam PTransforms for multimodal data: download, decode, resize, encode, upload, join, and
RunModel (a model loaded once per worker process, run on autotuned batches).

Each is a verb usable in any Beam pipeline; each per-element transform takes ``on_error``
(``"raise"`` or ``"null"``), ``keyed=True`` for ``(key, value)`` pairs, and
``.with_exception_handling()`` returning ``(good, failed)``. Importing this package registers
mmbeam's Beam coders (``mmbeam.transforms.coders``).
"""

from mmbeam.transforms import coders
from mmbeam.transforms._base import FailedRecord
from mmbeam.transforms.download import Download
from mmbeam.transforms.fuse import Fuse
from mmbeam.transforms.image import DecodeImage, EncodeImage, ResizeImage
from mmbeam.transforms.join import Join
from mmbeam.transforms.model import RunModel
from mmbeam.transforms.options import MmbeamOptions
from mmbeam.transforms.upload import Upload

__all__ = [
    "DecodeImage",
    "Download",
    "EncodeImage",
    "FailedRecord",
    "Fuse",
    "Join",
    "MmbeamOptions",
    "ResizeImage",
    "RunModel",
    "Upload",
    "coders",
]
