"""The process-wide thread pool for CPU kernels (Pillow and OpenCV release the GIL).

One pool per process (rebuilt after a fork) so that every transform, fused row kernel and frame
stage shares the same workers: one thread per core is enough because the kernels run outside
the GIL, and more would only convoy.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

__all__ = ["cpu_pool", "cpu_workers"]

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def cpu_workers() -> int:
    """Threads in :func:`cpu_pool`: the cores this process may use (at least 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(2, cores)


def cpu_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide pool (created on first use, and again in a forked child)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=cpu_workers(), thread_name_prefix="mmbeam-cpu"
            )
            _pool_pid = os.getpid()
        return _pool
