"""What the DaskRunner sets up and runs inside Dask worker processes.

:class:`WorkerSetup` is the worker plugin the runner registers (it runs on every worker, those
that join later too, on the worker's event-loop thread):

* Dask's nanny starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536``. That variable turns off
  glibc's dynamic thresholds, so every buffer above 128 KiB (a decoded image, a resized one) is
  mapped fresh from the kernel, faulted in page by page and unmapped when freed: about 7% more
  CPU per camera image than the same work in process or on Ray. :func:`reuse_large_buffers`
  sets the thresholds glibc's own rule reaches once large buffers have been freed.
* The process's model thread is started there: a thread inherits its creator's niceness, and
  the worker threads that run preparation tasks are niced
  (:func:`mmbeam.runners.worker.yield_cpu`), so a model thread they started would yield too.
  That thread starts the worker's model process (:mod:`mmbeam.runners.model_process`) when the
  driver makes a model pool there (:func:`start_model_process_soon`), or at the first model
  task (:func:`in_model_process`), so the child has the worker's priority.

Only this module imports ``distributed`` at its top, and only the DaskRunner imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributed import secede
from distributed.diagnostics.plugin import WorkerPlugin

from mmbeam.runners.model_process import ModelProcess

__all__ = ["WorkerSetup", "everywhere", "in_model_process", "model_thread",
           "reuse_large_buffers", "start_model_process_soon"]

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


_model: dict[int, ThreadPoolExecutor] = {}  # pid -> the process's model thread
_model_lock = threading.Lock()
_children: dict[int, ModelProcess] = {}  # pid -> the process's model process


def model_thread() -> ThreadPoolExecutor:
    """This process's model thread (one worker thread), started by the first caller."""
    with _model_lock:
        pool = _model.get(os.getpid())
        if pool is None:
            pool = _model[os.getpid()] = ThreadPoolExecutor(1, thread_name_prefix="mmbeam-model")
            pool.submit(int).result()  # start the thread now, at this thread's niceness
        return pool


def _start_model_process() -> ModelProcess:
    """This process's model process, started if need be; on the model thread only (one caller
    at a time, at the worker's own priority)."""
    if os.getpid() not in _children:
        _children[os.getpid()] = ModelProcess()
    return _children[os.getpid()]


def start_model_process_soon() -> None:
    """Start this worker's model process on its model thread, without waiting: the driver asks
    this of a model pool's workers when it makes the pool, so the child's start (~1.5 s of
    imports) overlaps the preparation instead of delaying the first model task."""
    model_thread().submit(_start_model_process)


def in_model_process(fn, *args):
    """Run ``fn(*args)`` in this worker's model process (started by the first call), after
    leaving the worker's thread pool (``distributed.secede``): a model task holds no slot the
    preparation tasks queued on its worker need, and shares no GIL with them."""
    secede()
    child = _children.get(os.getpid()) or model_thread().submit(_start_model_process).result()
    return child.call(fn, *args)


async def everywhere(fn, *args):
    """``fn(*args)`` in this worker process and in its model process, if it has one (to end a
    run's DoFns in both); this process's result. Off the worker's event loop (``Client.run``
    awaits a coroutine there): the model process may first finish another run's task."""
    loop = asyncio.get_running_loop()
    child = _children.get(os.getpid())
    if child is not None:
        await loop.run_in_executor(None, child.call, fn, *args)
    return await loop.run_in_executor(None, fn, *args)


class WorkerSetup(WorkerPlugin):
    """Large buffers reused and the model thread started, on every worker (see the module)."""

    name = "mmbeam-worker-setup"
    idempotent = True

    def setup(self, worker: Any) -> None:
        """Called by each worker when the plugin is registered, or when it joins."""
        reuse_large_buffers()
        model_thread()
