"""``read_images``: a folder, glob or file of images as a frame (Ray Data's ``read_images``).

It is the frame's own vocabulary put together: ``from_glob_path`` lists the files, the path
column is downloaded and decoded (and resized, which makes JPEGs decode at a reduced DCT scale,
since the full-size image is never kept), so it runs on every runner like any other frame.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

from mmbeam.errors import ConfigError
from mmbeam.expr import col
from mmbeam.frame.frame import Frame
from mmbeam.frame.sources import from_glob_path

__all__ = ["IMAGE_EXTENSIONS", "read_images"]

#: the file extensions ``read_images`` reads by default (case-insensitive)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp")


def read_images(
    path: str | Sequence[str],
    *,
    mode: str | None = "RGB",
    size: tuple[int, int] | None = None,
    include_paths: bool = True,
    file_extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
    on_error: str = "raise",
    io_config: Any = None,
) -> Frame:
    """A frame with an ``image`` column (and ``path`` with ``include_paths``), one row per image
    file under ``path``: a file, a folder (read recursively), a glob, local or ``s3://``/``gs://``.

    ``mode`` converts every image ("RGB", "L", "RGBA"; None keeps each file's own); ``size`` is
    ``(height, width)``, as in Ray Data, and resizes every image to exactly that (JPEGs decode
    at the smallest DCT scale that still covers it); ``file_extensions`` (None: every file)
    picks the files; ``on_error="null"`` gives null images for unreadable files.
    """
    frame = from_glob_path(path, io_config)
    if file_extensions is not None:
        lower = col("path").str.lower()
        wanted = [lower.str.endswith("." + ext.lower().lstrip(".")) for ext in file_extensions]
        if not wanted:
            raise ConfigError("file_extensions is empty; pass None to read every file")
        frame = frame.where(functools.reduce(operator.or_, wanted))
    image = col("path").url.download(io_config=io_config, on_error=on_error)
    image = image.image.decode(mode=mode, on_error=on_error)
    if size is not None:
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise ConfigError(f"size must be (height, width), got {size!r}")
        height, width = size
        image = image.image.resize(width, height)
    frame = frame.with_column("image", image)
    return frame.select("image", "path") if include_paths else frame.select("image")
