"""mmbeam: multimodal (image and URL) dataflow on Apache Beam.

``mmbeam.transforms`` holds the Beam PTransforms (Download, DecodeImage, ResizeImage, EncodeImage,
Upload, Join); ``mmbeam.io`` the storage options; ``mmbeam.runners`` the runners;
``mmbeam.errors`` the one exception tree; ``mmbeam.testing`` loopback servers and fixtures.
Submodules that import Beam load on first use, so ``import mmbeam`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmbeam import errors
from mmbeam.io.config import GCSConfig, HTTPConfig, IOConfig, S3Config

__version__ = "0.1.0"

_LAZY_MODULES = ("io", "ops", "runners", "testing", "transforms")

__all__ = [
    "GCSConfig",
    "HTTPConfig",
    "IOConfig",
    "S3Config",
    "errors",
    "io",
    "ops",
    "runners",
    "testing",
    "transforms",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"mmbeam.{name}")
    raise AttributeError(f"module 'mmbeam' has no attribute {name!r}")
