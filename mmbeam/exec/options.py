"""Execution sizes, shared by every executor."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ExecOptions"]


@dataclass(frozen=True)
class ExecOptions:
    """Sizes the compiled pipeline uses: rows per tabular batch, per multimodal batch, and the
    number of hash partitions for joins, group-bys and distinct."""

    batch_rows: int = 131_072
    #: rows per batch of URL/image work; None: chosen by an autotune controller at run time
    multimodal_batch_rows: int | None = None
    num_partitions: int = 4
    #: on a Beam runner in this process, shuffle hash partitions by reference (they stay in this
    #: process's memory; only a key goes through GroupByKey). None: whenever the runner is in this
    #: process; elsewhere partitions always travel by value
    shuffle_files: bool | None = None
    #: run purely tabular plans in this process with the same Arrow operators, without a Beam
    #: pipeline (None: whenever the runner is the local default; False: always Beam)
    in_process: bool | None = None
    #: a join whose right side is known to be at most this many bytes (in memory, or files
    #: of up to an eighth of it) sends it to every worker instead of shuffling both sides
    broadcast_bytes: int = 64 << 20

    def shuffle_by_reference(self, in_process: bool) -> bool:
        """Whether a Beam run whose workers are (or are not) in this process shuffles by
        reference."""
        return in_process and self.shuffle_files is not False
