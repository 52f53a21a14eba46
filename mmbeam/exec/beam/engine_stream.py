"""A frame's keyed batches streamed out of a run on mmbeam's Dask or Ray runner while it runs.

The run goes on a thread of its own; its driver loop hands each finished task's batches over
(:meth:`~mmbeam.runners.core.DistributedRunner.retain` with ``on_part``) through a bounded queue
of :data:`QUEUED_PARTS` task outputs. A slow consumer makes the driver loop wait on the queue,
so no further task is collected or submitted: memory holds the queue, the batch being consumed
and the tasks in flight, whatever the frame's size. Batches come in the order their tasks
finish (Ray Data's default), not in key order.

After lost data the runner re-runs stages and a batch may be handed over again: the frame's
batches carry deterministic keys (source, batch, piece numbers), and a key already given in an
earlier attempt is skipped, so no row comes twice or goes missing. Closing the stream early
stops the run (the ``stop`` event given to ``retain``) and waits for its thread to release the
engine. Hand-written: the thread, the queue and the stop hand-off belong to mmbeam's own driver
loop, which no library runs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from mmbeam.errors import RunCancelledError

__all__ = ["QUEUED_PARTS", "EngineStream"]

_log = logging.getLogger(__name__)

#: finished tasks' outputs waiting for the consumer before the run's driver loop waits
QUEUED_PARTS = 2
#: how long closing a stream waits for the cancelled run to release the engine
_JOIN_SECONDS = 120.0


class EngineStream:
    """Runs ``run()`` on a thread: a pipeline retaining its output with :meth:`on_part` and
    :attr:`stop` (``DistributedRunner.retain``); :meth:`batches` yields its keyed batches as
    they come, then ``result`` is the run's result."""

    def __init__(self, run: Callable[[], Any]):
        self._run = run
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUED_PARTS)
        #: set when the consumer is gone: the run stops
        self.stop = threading.Event()
        self.result: Any = None

    def on_part(self, values: list, attempt: int) -> None:
        """One finished task's keyed batches (called on the run's thread; waits while the queue
        is full, raises RunCancelledError once the consumer is gone)."""
        self._put(("part", values, attempt))

    def _put(self, item: tuple) -> None:
        while not self.stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise RunCancelledError("the frame's iterator was closed")

    def _drive(self) -> None:
        try:
            item = ("end", self._run(), 0)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            item = ("error", exc, 0)
        try:
            self._put(item)
        except RunCancelledError:
            pass  # nobody reads any more

    def batches(self) -> Iterator[tuple[tuple, pa.RecordBatch]]:
        """The run's keyed batches as its tasks finish, each key once; the run's error, if it
        fails; closing early stops the run."""
        thread = threading.Thread(target=self._drive, name="mmbeam-engine-run", daemon=True)
        thread.start()
        given: dict[tuple, int] = {}  # key -> the attempt it was first given in
        try:
            while True:
                kind, value, attempt = self._queue.get()
                if kind == "error":
                    raise value
                if kind == "end":
                    self.result = value
                    return
                for key, batch in value:
                    if given.setdefault(key, attempt) < attempt:
                        continue  # given in an earlier attempt of a recovered run
                    yield key, batch
        finally:
            self.stop.set()  # left early: the run ends (else it has already)
            thread.join(_JOIN_SECONDS)
            if thread.is_alive():
                _log.warning("the stopped run did not end within %.0f s; its thread is left "
                             "to finish", _JOIN_SECONDS)
            while not self._queue.empty():  # batches nobody will read
                self._queue.get_nowait()
