"""Which stages of a run may run at the same time, streaming one into the next.

mmbeam's distributed runners keep each stage's output as lists on the workers (buffers). A
buffer that is read element by element as a main input (not a GroupByKey's input, not the
input of a stateful DoFn, not a side input) can be *streamed*: its reader takes the lists its
producer's tasks have finished while the producer still runs. :class:`StageGraph` says which
reads stream, when a stage may start (every earlier stage still running must feed it, directly
or through other streamed stages; anything blocking waits for its whole input) and when a
streamed input is complete. Stages that start together form a *wave*; recovery after lost data
re-runs whole waves (see :mod:`mmbeam.runners.core`).

:class:`QueueBook` counts the bytes queued on each streamed buffer (finished upstream, not yet
consumed downstream), which the producer's scheduler keeps under a limit (backpressure).
"""

from __future__ import annotations

import collections
from collections.abc import Collection, Iterable

from apache_beam.runners.portability.fn_api_runner import translations

__all__ = ["QueueBook", "StageGraph"]


class StageGraph:
    """The data dependencies of a run's stages (in topological order).

    ``main[i]``/``side[i]`` are the buffers stage ``i`` reads as main or side inputs,
    ``writes[i]`` those it writes; ``keyed`` are buffers read by key (a GroupByKey's, a stateful
    DoFn's), which never stream. ``streaming=False`` runs the stages one after another.
    """

    def __init__(self, main: list[set[bytes]], side: list[set[bytes]], writes: list[set[bytes]],
                 keyed: Collection[bytes], streaming: bool = True):
        self.main, self.side, self.writes = main, side, writes
        self.keyed = set(keyed)
        self.streaming = streaming
        self.writers: dict[bytes, set[int]] = collections.defaultdict(set)
        self.readers: dict[bytes, set[int]] = collections.defaultdict(set)
        for i, buffers in enumerate(writes):
            for b in buffers:
                self.writers[b].add(i)
        for i in range(len(main)):
            for b in main[i] | side[i]:
                self.readers[b].add(i)
        self._ancestors: dict[int, set[int]] = {}

    def streams(self, i: int, buffer_id: bytes) -> bool:
        """Whether stage ``i`` reads ``buffer_id`` element-wise, as its producers finish."""
        if not self.streaming or buffer_id == translations.IMPULSE_BUFFER:
            return False
        kind, _ = translations.split_buffer_id(buffer_id)
        return (kind != "group" and buffer_id not in self.keyed and buffer_id in self.main[i]
                and buffer_id not in self.side[i])

    def streamed_inputs(self, i: int) -> set[bytes]:
        """The buffers stage ``i`` reads as streams (element-wise, not waited for)."""
        return {b for b in self.main[i] if self.streams(i, b)}

    def ancestors(self, i: int) -> set[int]:
        """The stages feeding ``i`` through streamed buffers only, transitively."""
        if i not in self._ancestors:
            found: set[int] = set()
            for b in self.streamed_inputs(i):
                for w in self.writers[b]:
                    if w < i:
                        found |= {w, *self.ancestors(w)}
            self._ancestors[i] = found
        return self._ancestors[i]

    def may_start(self, i: int, running: Iterable[int]) -> bool:
        """Stage ``i`` (every stage before it started) may start while ``running`` run: each
        of them feeds it through streamed buffers only, and none writes an input it reads
        whole (a GroupByKey's, a side input)."""
        running = set(running)
        whole = (self.main[i] | self.side[i]) - self.streamed_inputs(i)
        return (running <= self.ancestors(i)
                and not any(self.writers[b] & running for b in whole))

    def complete(self, buffer_id: bytes, running: Collection[int]) -> bool:
        """No running stage writes ``buffer_id`` any more (its writers started in order)."""
        return not (self.writers[buffer_id] & set(running))

    def sole_streamed_reader(self, buffer_id: bytes) -> int | None:
        """The one stage reading ``buffer_id``, if it streams it (so each list can be let go
        once that stage consumed it)."""
        (reader, *others) = self.readers.get(buffer_id) or (None,)
        if reader is None or others or not self.streams(reader, buffer_id):
            return None
        return reader


class QueueBook:
    """Bytes queued per streamed buffer: added when a producer's task finishes, removed when
    the consumer's task that read them finishes."""

    def __init__(self):
        self.queued: dict[bytes, float] = collections.defaultdict(float)

    def produced(self, buffer_id: bytes, nbytes: float) -> None:
        """Count ``nbytes`` more queued in ``buffer_id``."""
        self.queued[buffer_id] += nbytes

    def consumed(self, buffer_id: bytes, nbytes: float) -> None:
        """Count ``nbytes`` of ``buffer_id`` read by its consumer."""
        self.queued[buffer_id] = max(0.0, self.queued[buffer_id] - nbytes)

    def __getitem__(self, buffer_id: bytes) -> int:
        return int(self.queued.get(buffer_id, 0.0))

    def clear(self) -> None:
        """Forget every queue (a new wave or a recovery)."""
        self.queued.clear()
