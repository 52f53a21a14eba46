"""The local runner: Beam's in-process FnApiRunner.

Beam 2.77's default ``DirectRunner`` first tries to download the Prism runner binary, which fails on
a machine without internet; the FnApiRunner runs everything in this process and needs nothing.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

__all__ = ["local_pipeline", "local_runner"]


def local_runner() -> FnApiRunner:
    """A fresh in-process runner (no Prism download, no subprocesses)."""
    return FnApiRunner()


def local_pipeline(
    options: PipelineOptions | None = None, argv: list[str] | None = None, **flags
) -> beam.Pipeline:
    """``beam.Pipeline`` on the in-process runner.

    ``argv`` (command-line flags, not read from ``sys.argv`` unless passed) and ``flags`` become
    pipeline options when ``options`` is not given.
    """
    if options is None:
        options = PipelineOptions(argv or [], **flags)
    return beam.Pipeline(runner=local_runner(), options=options)
