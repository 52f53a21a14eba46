"""A Dask worker's model process: the model stage's tasks run in a child process of the worker.

A Dask worker is one process, and its preparation tasks (decoding, resizing, Beam's own element
coding) hold its GIL much of the time; a model run on a thread of that process waits for the GIL
behind them (measured: 6.8-7.1 ms of wall per 6 ms model image, against 6.3 on Ray, where the
model's actor is a process of its own). So each worker that hosts a model pool starts one child
process, once, and its model tasks run there, one at a time; the model, its autotuned batches and
its cache live in that process for the worker's life, as in a kept Ray actor.

Own code because the standard tools do not fit: ``multiprocessing`` (and so
``ProcessPoolExecutor``) refuses to start children from Dask's daemonic worker processes, and a
task's arguments are megabytes of encoded images that should cross once, as one message. The
child is a plain ``subprocess`` speaking ``multiprocessing.connection`` framing over a socket
pair, with ``cloudpickle`` for the calls (Dask's own serializer of tasks). It dies with its
worker (``PR_SET_PDEATHSIG``, and the end of its socket); when it dies on its own (a model that
crashed or ran out of memory), the worker exits with it, so Dask's recovery of a lost worker
re-runs the work, as it does for a lost Ray actor.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

__all__ = ["ModelProcess"]

_log = logging.getLogger(__name__)

#: prctl option: the signal a process gets when the thread that started it exits
_PR_SET_PDEATHSIG = 1


class ModelProcess:
    """A child Python process that runs calls one at a time (see the module doc). Start it from
    a thread that lives as long as the process and has the process's own CPU priority: the
    child inherits that thread's niceness and dies when that thread ends."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        with parent, child:
            # the worker's path: the user's modules, as the worker finds them
            start = (f"import sys; sys.path[:] = {list(sys.path)!r}; "
                     f"from mmbeam.runners.model_process import serve; "
                     f"serve({child.fileno()}, {os.getpid()})")
            # without Dask's MALLOC_TRIM_THRESHOLD_, which maps every large buffer afresh
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
            self._process = subprocess.Popen(
                [sys.executable, "-c", start], pass_fds=(child.fileno(),), cwd=os.getcwd(),
                env=env, stdin=subprocess.DEVNULL, start_new_session=True)  # no terminal's ^C
            self._conn = Connection(parent.detach())
        self._lock = threading.Lock()

    def call(self, fn, *args: Any) -> Any:
        """``fn(*args)`` in the child; its result, or its exception raised here (with the
        child's traceback as a note). When the child died, this worker process exits."""
        message = cloudpickle.dumps((fn, args), protocol=5)
        with self._lock:
            try:
                self._conn.send_bytes(message)
                del message
                ok, value, trace = cloudpickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                code = self._process.wait()
                _log.error("mmbeam's model process %d exited (code %s) while running %s; "
                           "ending this Dask worker so its work is re-run elsewhere",
                           self._process.pid, code, getattr(fn, "__name__", fn))
                logging.shutdown()
                os._exit(70)
        if ok:
            return value
        value.add_note(f"in mmbeam's model process {self._process.pid}:\n{trace}")
        raise value

    def close(self) -> None:
        """End the child (it exits when its socket closes)."""
        with contextlib.suppress(OSError):
            self._conn.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def serve(fd: int, parent: int) -> None:
    """The child's loop: one call per message, its result or exception sent back, until the
    ``parent`` process closes the socket."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above
        return
    conn = Connection(fd)
    while True:
        try:
            fn, args = cloudpickle.loads(conn.recv_bytes())
        except EOFError:
            return
        try:
            reply = (True, fn(*args), "")
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the task
            reply = (False, e, traceback.format_exc())
        del fn, args
        try:
            message = cloudpickle.dumps(reply, protocol=5)
        except Exception as exc:  # noqa: BLE001 - a result or exception that cannot be pickled
            error = reply[2] or f"the call's result cannot be pickled: {exc!r}"
            message = cloudpickle.dumps((False, RuntimeError(error), reply[2]), protocol=5)
        del reply
        conn.send_bytes(message)
        del message
