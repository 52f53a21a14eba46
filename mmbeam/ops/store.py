"""Write bytes under a destination folder, atomically, with names that cannot escape it.

A name comes from the element's key (``cats/7.jpg``) or, without a key, from a hash of the content
with an extension sniffed from its magic bytes, so a rerun overwrites instead of duplicating.
Local files are written as unnamed files linked into place (:mod:`mmbeam.io.atomic`), so even a
killed writer leaves no partial file, and a symlink cannot lead a write outside the destination.
S3 and GCS objects appear only when their upload completes (a single PUT, or a multipart or
resumable upload that is aborted on failure; after a SIGKILL the unfinished multipart upload is
invisible to readers, and a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` frees it).
Either way no reader ever sees a partial file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import posixpath
import stat

from fsspec.asyn import get_loop

from mmbeam.errors import MmbeamError, UnsafePathError, UnsupportedSchemeError, UploadError
from mmbeam.io.atomic import check_inside, write_atomic
from mmbeam.io.config import IOConfig
from mmbeam.io.filesystems import filesystem_for, is_async, split_protocol

__all__ = ["Store", "content_name", "safe_name", "sniff_extension"]

_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def sniff_extension(data: bytes) -> str:
    """``.jpg``, ``.png``, ``.webp``, ... from the leading bytes; ``.bin`` when unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return ".bin"


def _as_bytes(data: object) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UploadError(f"expected bytes to upload, got {type(data).__name__}")
    return bytes(data)


def content_name(data: bytes) -> str:
    """A deterministic file name for ``data``: its SHA-256 (32 hex digits) and extension."""
    data = _as_bytes(data)
    return hashlib.sha256(data).hexdigest()[:32] + sniff_extension(data)


def safe_name(name: object) -> str:
    """``name`` as a relative POSIX path inside the destination, or UnsafePathError."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    if (
        not text
        or "\x00" in text
        or text.startswith(("/", "\\"))
        or (len(text) > 1 and text[1] == ":")
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise UnsafePathError(
            f"upload name {text!r} is not a plain relative path inside the destination "
            "(no '..', no leading '/', no empty parts); use a name such as 'cats/7.jpg'"
        )
    return "/".join(parts)


class Store:
    """A destination folder (local path, ``file://``, ``s3://``, ``gs://``) that takes bytes."""

    def __init__(self, location: str, io_config: IOConfig | None = None):
        protocol, root = split_protocol(location)
        if protocol in ("http", "https"):
            raise UnsupportedSchemeError(
                f"cannot upload to {location!r}: uploads go to a local folder, s3:// or gs://"
            )
        self.location = location
        self.protocol = protocol
        self.root = root.rstrip("/")
        self.io_config = io_config or IOConfig()

    def url_for(self, name: str) -> str:
        """The full path or URL that ``name`` is written to."""
        path = posixpath.join(self.root, safe_name(name))
        return path if self.protocol == "file" else f"{self.protocol}://{path}"

    def write(self, name: str, data: bytes) -> str:
        """Write ``data`` as ``name`` (blocking) and return where it went."""
        return self.submit(name, data).result()

    def submit(self, name: str, data: bytes) -> concurrent.futures.Future:
        """Start writing on the I/O loop; the future's result is the written path or URL."""
        return asyncio.run_coroutine_threadsafe(self.write_async(name, data), get_loop())

    @property
    def is_local(self) -> bool:
        """True for a local folder: writes are cheap blocking calls (see :meth:`write_local`)."""
        return self.protocol == "file"

    def write_local(self, name: str, data: bytes, *, content_named: bool = False) -> str:
        """Write ``data`` as ``name`` into a local folder on the calling thread (see
        :func:`mmbeam.io.atomic.write_atomic`); raises UploadError (or UnsafePathError, also
        for a folder that a symlink leads outside the destination) on failure.

        ``content_named`` says ``name`` is :func:`content_name` of ``data``: a file already
        there with that name and size holds these very bytes (files only appear whole, by
        rename), so it is kept rather than rewritten. That makes a rerun, or the same image
        twice, cost a ``stat``: renaming over an existing file makes ext4 flush it (~0.4 ms).
        """
        if not self.is_local:
            raise UnsupportedSchemeError(f"write_local needs a local folder, not {self.location!r}")
        target = self.url_for(name)
        data = _as_bytes(data)
        check_inside(self.root, target)
        if content_named and _has_size(target, len(data)):
            return target
        try:
            write_atomic(target, data)
        except Exception as exc:  # noqa: BLE001 - reported with its cause
            raise UploadError(f"writing {target} failed: {type(exc).__name__}: {exc}") from exc
        return target

    async def write_async(self, name: str, data: bytes) -> str:
        """Write ``data`` as ``name``; raises UploadError (or UnsafePathError) on failure."""
        if self.is_local:
            return await asyncio.to_thread(self.write_local, name, data)
        target = self.url_for(name)
        data = _as_bytes(data)
        try:
            fs = filesystem_for(self.protocol, self.io_config)
            path = target.split("://", 1)[1]
            if is_async(fs):
                await fs._pipe_file(path, data)
            else:
                await asyncio.to_thread(fs.pipe_file, path, data)
        except MmbeamError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with its cause
            raise UploadError(f"writing {target} failed: {type(exc).__name__}: {exc}") from exc
        return target


def _has_size(path: str, size: int) -> bool:
    try:
        st = os.lstat(path)  # a symlink under that name is replaced, never written through
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size
