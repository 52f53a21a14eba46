"""Batch and window sizes that tune themselves from measured time and memory.

One :class:`BatchSizeController` per operator learns, from the batches it has run, the seconds per
element and the bytes per element (input, peak working set, output), as exponentially weighted
averages. It then proposes the next batch size so that

- a batch takes about ``target_seconds`` (big enough to amortise per-batch overhead, small
  enough to stream), and
- the bytes in flight stay under ``memory_budget`` (so a batch of 12 MP photos is small and a
  batch of thumbnails is large),

growing at most ``growth``× per step from a small start, as Beam's ``_BatchSizeEstimator`` does.
:meth:`window` gives the same answer for a concurrent window instead of a batch. The clock is
injected, so tests drive it with a fake one. Nothing here imports the rest of mmbeam.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["BatchSizeController", "Measurement", "default_memory_budget"]

_log = logging.getLogger(__name__)


def default_memory_budget(fraction: float = 0.25, cap: int = 8 << 30) -> int:
    """A quarter of this machine's physical memory, at most 8 GiB (256 MiB if unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 256 << 20
    return int(min(cap, total * fraction))


@dataclass
class Measurement:
    """What one batch cost; fill the byte fields inside :meth:`BatchSizeController.measure`."""

    elements: int
    seconds: float = 0.0
    input_bytes: int = 0
    peak_bytes: int = 0
    output_bytes: int = 0


class BatchSizeController:
    """Proposes batch sizes (and in-flight windows) from measured seconds and bytes per element.

    ``min_size``/``max_size`` bound every proposal; ``initial`` is the first one. ``smoothing``
    is the weight of the newest measurement in the running averages. Thread-safe.
    """

    def __init__(
        self,
        *,
        name: str = "operator",
        target_seconds: float = 0.5,
        memory_budget: int | None = None,
        min_size: int = 1,
        max_size: int = 4096,
        initial: int = 1,
        growth: float = 2.0,
        smoothing: float = 0.3,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if not (0 < min_size <= initial <= max_size):
            raise ValueError(
                f"need 0 < min_size <= initial <= max_size, got {min_size}, {initial}, {max_size}"
            )
        if target_seconds <= 0 or growth <= 1 or not 0 < smoothing <= 1:
            raise ValueError("need target_seconds > 0, growth > 1 and 0 < smoothing <= 1")
        self.name = name
        self.target_seconds = target_seconds
        self.memory_budget = memory_budget if memory_budget is not None else default_memory_budget()
        self.min_size, self.max_size = min_size, max_size
        self.growth = growth
        self.smoothing = smoothing
        self.clock = clock
        self.seconds_per_element: float | None = None
        self.peak_bytes_per_element: float | None = None
        self.output_bytes_per_element: float | None = None
        self.batches = 0
        self._last = initial
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable (Beam ships DoFns holding one); the lock is rebuilt
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def measure(self, elements: int) -> Iterator[Measurement]:
        """Time a batch of ``elements`` with the injected clock and record it on exit."""
        m = Measurement(elements)
        start = self.clock()
        yield m
        m.seconds = self.clock() - start
        self.record(m)

    def record(self, m: Measurement) -> None:
        """Fold one batch's cost into the running averages."""
        if m.elements <= 0:
            return
        with self._lock:
            self.batches += 1
            self.seconds_per_element = self._mix(self.seconds_per_element, m.seconds / m.elements)
            peak = max(m.peak_bytes, m.input_bytes + m.output_bytes) / m.elements
            self.peak_bytes_per_element = self._mix(self.peak_bytes_per_element, peak)
            self.output_bytes_per_element = self._mix(
                self.output_bytes_per_element, m.output_bytes / m.elements
            )

    def next_size(self) -> int:
        """The next batch size: near the time target, under the memory budget, bounded growth."""
        with self._lock:
            ideal = self._ideal()
            size = min(ideal, max(self.min_size, int(self._last * self.growth)))
            self._last = max(self.min_size, min(self.max_size, size))
            _log.debug("%s: next batch %d (ideal %d)", self.name, self._last, ideal)
            return self._last

    def window(self, floor: int = 1) -> int:
        """Elements that may be in flight at once under the memory budget (at least ``floor``)."""
        with self._lock:
            if not self.peak_bytes_per_element:
                return max(floor, self.min_size)
            fits = int(self.memory_budget // max(1.0, self.peak_bytes_per_element))
            return max(floor, min(self.max_size, fits))

    def _ideal(self) -> int:
        if self.seconds_per_element is None:
            return self.max_size
        by_time = self.target_seconds / max(self.seconds_per_element, 1e-9)
        by_memory = self.memory_budget / max(1.0, self.peak_bytes_per_element or 1.0)
        return max(self.min_size, min(self.max_size, int(min(by_time, by_memory))))

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new

    def describe(self) -> str:
        """One line for ``explain()`` and logs: the estimates and the current size."""
        spe = self.seconds_per_element
        bpe = self.peak_bytes_per_element
        if spe is None:
            per = "no batches yet"
        else:
            per = f"{spe * 1e3:.2f} ms/elem, {(bpe or 0) / 1e6:.2f} MB/elem"
        return f"{self.name}: batch {self._last} ({per}; budget {self.memory_budget / 1e6:.0f} MB)"
