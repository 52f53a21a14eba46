"""``MmbeamOptions``: the pipeline options mmbeam's transforms and runners read
(``--memory_budget``, ``--no_fuse_elements``)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from mmbeam.autotune import default_memory_budget, parse_bytes
from mmbeam.errors import ConfigError

__all__ = ["MmbeamOptions", "memory_budget_of"]


class MmbeamOptions(PipelineOptions):
    """``--memory_budget 512MB``: bytes all in-flight elements of one operator may hold per
    worker process (default: a quarter of the machine's memory, at most 8 GiB).
    ``--no_fuse_elements``: mmbeam's runners keep consecutive per-element transforms as separate
    DoFns (each with its own window and ``window`` metric) instead of fusing them into one."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--memory_budget", default=None,
            help="bytes in flight per operator and worker (e.g. 512MB, 2GB); "
                 "default: a quarter of physical memory, at most 8 GiB")
        parser.add_argument(
            "--no_fuse_elements", dest="fuse_elements", action="store_false", default=True,
            help="keep consecutive per-element transforms (Download, DecodeImage, ...) as "
                 "separate DoFns instead of running them as one fused kernel")


def memory_budget_of(pipeline) -> int:
    """The ``--memory_budget`` of ``pipeline`` in bytes (the machine default when unset)."""
    options = getattr(pipeline, "options", None) or PipelineOptions([])
    value = options.view_as(MmbeamOptions).memory_budget
    if value is None:
        return default_memory_budget()
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise ConfigError(f"--memory_budget: {exc}") from None
