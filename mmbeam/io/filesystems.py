"""fsspec filesystems for URLs: one cached instance per (protocol, options) in each process.

``http(s)://``, ``s3://``, ``gs://`` map to fsspec's async filesystems (aiohttp, aiobotocore,
gcsfs), ``file://`` and bare paths to the local filesystem. Instances are cached per process so a
worker reuses its connection pools across bundles; they are never pickled (only the
:class:`~mmbeam.io.config.IOConfig` travels).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem

from mmbeam.errors import UnsupportedSchemeError
from mmbeam.io.config import IOConfig

__all__ = ["SCHEME_ALIASES", "SUPPORTED_PROTOCOLS", "filesystem_for", "is_async", "split_protocol"]

SUPPORTED_PROTOCOLS = ("http", "https", "s3", "gs", "file")
SCHEME_ALIASES = {"gcs": "gs", "s3a": "s3", "local": "file"}
_PACKAGES = {"s3": "s3fs (pip install 'mmbeam[s3]')", "gs": "gcsfs (pip install 'mmbeam[gcs]')"}

_cache: dict[tuple, fsspec.AbstractFileSystem] = {}
_cache_lock = threading.Lock()
_cache_pid = os.getpid()


def split_protocol(url: str) -> tuple[str, str]:
    """``("s3", "bucket/key")`` for ``s3://bucket/key``; ``("file", path)`` for local paths.

    Raises UnsupportedSchemeError for any other scheme, naming the URL and what is supported.
    """
    if not isinstance(url, str) or not url:
        raise UnsupportedSchemeError(f"expected a URL string, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "file", os.path.abspath(url)
    protocol = SCHEME_ALIASES.get(scheme.lower(), scheme.lower())
    if protocol not in SUPPORTED_PROTOCOLS:
        raise UnsupportedSchemeError(
            f"unsupported URL scheme {scheme!r} in {url!r}; "
            f"supported: {', '.join(SUPPORTED_PROTOCOLS)} and local paths"
        )
    if protocol in ("http", "https"):
        return protocol, url  # fsspec's HTTP filesystem takes the whole URL
    if protocol == "file":
        return protocol, os.path.abspath(rest)
    return protocol, rest


def filesystem_for(protocol: str, io_config: IOConfig | None = None) -> fsspec.AbstractFileSystem:
    """The process-wide filesystem for a protocol and config (created on first use)."""
    global _cache_pid
    io_config = io_config or IOConfig()
    key = (protocol, io_config)
    with _cache_lock:
        if _cache_pid != os.getpid():  # forked: the parent's sessions and loops are not ours
            _cache.clear()
            _cache_pid = os.getpid()
        fs = _cache.get(key)
        if fs is None:
            fs = _cache[key] = _create(protocol, io_config.storage_options(protocol))
        return fs


def _create(protocol: str, options: dict[str, Any]) -> fsspec.AbstractFileSystem:
    if protocol == "gs":
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    if protocol in ("http", "https"):
        options = {"client_kwargs": {"headers": options.pop("headers", {})}, **options}
    try:
        return fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    except ImportError as exc:
        raise UnsupportedSchemeError(
            f"the {protocol}:// filesystem needs {_PACKAGES.get(protocol, 'its fsspec package')}"
        ) from exc


def is_async(fs: fsspec.AbstractFileSystem) -> bool:
    """True for filesystems whose coroutines (``_cat_file``, ``_pipe_file``) we can await."""
    return isinstance(fs, AsyncFileSystem) and getattr(fs, "async_impl", False)
