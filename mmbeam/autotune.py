"""Batch and window sizes that tune themselves from measured time and memory.

One :class:`BatchSizeController` per operator learns, from the batches it has run, the seconds per
element and the bytes per element (input, peak working set, output), as exponentially weighted
averages. It then proposes the next batch size so that

- a batch takes about ``target_seconds`` (big enough to amortise per-batch overhead, small
  enough to stream), and
- the bytes in flight stay under ``memory_budget`` (so a batch of 12 MP photos is small and a
  batch of thumbnails is large),

growing at most ``growth``× per step from a small start, as Beam's ``_BatchSizeEstimator`` does.
:meth:`window` gives the memory bound for a concurrent window instead of a batch, and
:meth:`inflight` the window a streaming operator needs (Little's law: to keep ``workers`` busy
while each element spends ``seconds`` in flight but only ``busy_seconds`` on a worker, about
``workers * seconds / busy_seconds`` elements must be in flight), capped by memory. The clock is
injected, so tests drive it with a fake one. Controllers register by name so that ``explain()``
and logs can show the sizes chosen in the last run. Nothing here imports the rest of mmbeam.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "ROW_SMOOTHING",
    "BatchSizeController",
    "Measurement",
    "chosen_sizes",
    "default_memory_budget",
    "parse_bytes",
]

_log = logging.getLogger(__name__)


def default_memory_budget(fraction: float = 0.25, cap: int = 8 << 30) -> int:
    """A quarter of this machine's physical memory, at most 8 GiB (256 MiB if unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 256 << 20
    return int(min(cap, total * fraction))


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(value: int | str) -> int:
    """``512MB``, ``2GiB``, ``1.5G`` or a plain number of bytes -> bytes (ValueError if not)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(I?B)?\s*", str(value).upper())
    if not match:
        raise ValueError(f"expected a size such as 512MB or 2GB, got {value!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise ValueError(f"a memory size must be positive, got {value!r}")
    return size


@dataclass
class Measurement:
    """What one batch cost; fill the byte fields inside :meth:`BatchSizeController.measure`.

    ``busy_seconds`` is the time a worker spent on the batch (``seconds`` is wall time from
    submission to completion, including waits on I/O); 0 means it was not measured.
    """

    elements: int
    seconds: float = 0.0
    input_bytes: int = 0
    peak_bytes: int = 0
    output_bytes: int = 0
    busy_seconds: float = 0.0


_registry: dict[str, BatchSizeController] = {}
_registry_lock = threading.Lock()


def chosen_sizes() -> dict[str, str]:
    """``name -> describe()`` of every controller registered in this process (the last run's)."""
    with _registry_lock:
        return {name: ctl.describe() for name, ctl in sorted(_registry.items())}


#: Weight of one row's cost in a controller that tunes a window of rows in flight from every
#: finished row: a single row's times swing several-fold with GIL and scheduling waits, so the
#: window follows the mean of the last few dozen rows instead of the last few.
ROW_SMOOTHING = 1 / 32


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
        self.busy_per_element: float | None = None
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
            if m.busy_seconds > 0:
                self.busy_per_element = self._mix(self.busy_per_element,
                                                  m.busy_seconds / m.elements)
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

    def inflight(self, workers: int, floor: int = 1, headroom: float = 2.0) -> int:
        """Elements to keep in flight so that ``workers`` stay busy, under the memory budget.

        With no measurement yet this is ``floor``; then ``workers * headroom * seconds /
        busy_seconds`` per element (elements wait on I/O most of their time -> a wide window),
        never below ``floor`` nor above what the memory budget holds (nor ``max_size``).
        """
        with self._lock:
            if self.seconds_per_element is None:
                size = floor
            else:
                busy = self.busy_per_element or self.seconds_per_element
                ratio = max(1.0, self.seconds_per_element / max(busy, 1e-9))
                size = max(floor, math.ceil(workers * headroom * ratio))
                if self.peak_bytes_per_element:
                    fits = int(self.memory_budget // self.peak_bytes_per_element)
                    size = min(size, max(self.min_size, fits))
            self._last = max(self.min_size, min(self.max_size, size))
            return self._last

    def register(self) -> BatchSizeController:
        """Make this controller's ``describe()`` visible in :func:`chosen_sizes`; returns self."""
        with _registry_lock:
            _registry[self.name] = self
        return self

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
            if self.busy_per_element:
                per += f", busy {self.busy_per_element * 1e3:.2f} ms/elem"
        return f"{self.name}: batch {self._last} ({per}; budget {self.memory_budget / 1e6:.0f} MB)"
