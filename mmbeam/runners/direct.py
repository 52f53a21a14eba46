"""The local runner: Beam's in-process FnApiRunner, plus mmbeam's element fusion.

Beam 2.77's default ``DirectRunner`` first tries to download the Prism runner binary, which fails on
a machine without internet; the FnApiRunner runs everything in this process and needs nothing.
:class:`LocalRunner` adds one phase before Beam's own: consecutive per-element transforms become
one fused kernel (:mod:`mmbeam.runners.fusion`; ``--no_fuse_elements`` turns it off).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from mmbeam.progress import get_progress
from mmbeam.runners.fusion import create_stages

__all__ = ["LocalRunner", "local_pipeline", "local_runner"]


class LocalRunner(FnApiRunner):
    """FnApiRunner whose first phase fuses consecutive ElementFns (unless the run's options say
    ``--no_fuse_elements``); the other phases are FnApiRunner's own."""

    _options = None

    def run_via_runner_api(self, pipeline_proto, options):
        self._options = options
        try:
            return super().run_via_runner_api(pipeline_proto, options)
        finally:
            get_progress().close()  # this run's bars end here; the next run starts new ones

    def create_stages(self, pipeline_proto):
        return create_stages(self, pipeline_proto, self._options)


def local_runner() -> FnApiRunner:
    """A fresh in-process runner (no Prism download, no subprocesses)."""
    return LocalRunner()


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
