"""mmbeam: multimodal (image and URL) dataflow on Apache Beam.

The Daft-like frame facade is at the top level (``mmbeam.read_parquet(...).with_column("img",
col("url").url.download().image.decode()).show()``). ``mmbeam.transforms`` holds the Beam
PTransforms (Download, DecodeImage, ResizeImage, EncodeImage, Upload, Join); ``mmbeam.io`` the
storage options; ``mmbeam.runners`` the runners; ``mmbeam.errors`` the one exception tree;
``mmbeam.testing`` loopback servers and fixtures; ``mmbeam.udf`` makes a function or class a batched
UDF, loaded once per worker process. Names load on first use, so ``import mmbeam``
stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmbeam import errors, quiet
from mmbeam.io.config import GCSConfig, HTTPConfig, IOConfig, S3Config

__version__ = "0.1.0"

quiet.install()  # before anything imports Beam

_LAZY_MODULES = ("io", "ops", "runners", "testing", "transforms")
_FRAME_NAMES = (
    "DataFrame",
    "DataType",
    "Frame",
    "GroupedFrame",
    "Schema",
    "col",
    "context",
    "from_arrow",
    "from_glob_path",
    "from_pandas",
    "from_pcollection",
    "from_pydict",
    "from_pylist",
    "lit",
    "read_csv",
    "read_images",
    "read_parquet",
)

__all__ = [
    *_FRAME_NAMES,
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
    "udf",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"mmbeam.{name}")
    if name == "udf":
        from mmbeam.expr.udf import udf

        return udf
    if name in _FRAME_NAMES:
        frame = importlib.import_module("mmbeam.frame")
        value = frame.Frame if name == "DataFrame" else getattr(frame, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmbeam' has no attribute {name!r}")
