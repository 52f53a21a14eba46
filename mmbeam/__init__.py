"""mmbeam: multimodal (image and URL) dataflow on Apache Beam.

``mmbeam.transforms`` holds the Beam PTransforms (Download, DecodeImage, ResizeImage, EncodeImage,
Upload, Join); ``mmbeam.io`` the storage options; ``mmbeam.runners`` the runners;
``mmbeam.errors`` the one exception tree; ``mmbeam.testing`` loopback servers and fixtures.
"""

from mmbeam import errors, io, runners, transforms
from mmbeam.io import GCSConfig, HTTPConfig, IOConfig, S3Config

__version__ = "0.1.0"

__all__ = [
    "GCSConfig",
    "HTTPConfig",
    "IOConfig",
    "S3Config",
    "errors",
    "io",
    "runners",
    "transforms",
]
