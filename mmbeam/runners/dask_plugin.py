"""The Dask worker plugin the DaskRunner registers: image-sized buffers reused, not re-mapped.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting that variable
turns off glibc's dynamic thresholds, so every buffer above 128 KiB (a decoded image, a resized
one) is mapped fresh from the kernel, faulted in page by page and unmapped when freed: about 7%
more CPU per camera image than the same work in process or on Ray. :class:`ReuseLargeBuffers`
sets, on each worker (those that join later too), the thresholds glibc's own dynamic rule
reaches once large buffers have been freed: buffers up to 32 MiB come from the heap, and up to
64 MiB of free heap is kept for the next one. Only this module imports ``distributed``, and only
the DaskRunner imports this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["ReuseLargeBuffers", "reuse_large_buffers"]

#: glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX), and the trim
#: threshold its dynamic rule sets beside it (twice that)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)


def reuse_large_buffers() -> bool:
    """Where ``MALLOC_TRIM_THRESHOLD_`` is set, set glibc's mmap and trim thresholds to
    :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD`. True when they were set; nothing changes
    without the variable or without glibc's ``mallopt``."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    with contextlib.suppress(OSError, AttributeError, TypeError):
        mallopt = ctypes.CDLL(None).mallopt  # the C library this interpreter runs on
        return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return False


class ReuseLargeBuffers(WorkerPlugin):
    """Runs :func:`reuse_large_buffers` on every worker of the cluster, now and later."""

    name = "mmbeam-reuse-large-buffers"
    idempotent = True

    def setup(self, worker: Any) -> None:
        """Called by each worker when the plugin is registered, or when it joins."""
        reuse_large_buffers()
