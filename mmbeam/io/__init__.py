"""Storage: ``IOConfig`` for credentials and endpoints, fsspec filesystems for URLs."""

from mmbeam.io.config import GCSConfig, HTTPConfig, IOConfig, S3Config

__all__ = ["GCSConfig", "HTTPConfig", "IOConfig", "S3Config"]
