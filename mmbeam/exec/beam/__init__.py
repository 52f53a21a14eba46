"""The Beam executor: plans as Beam pipelines on any runner (imports Beam).

:mod:`~mmbeam.exec.beam.compile` turns plan nodes into transforms over Arrow record batches,
:mod:`~mmbeam.exec.beam.channel` carries inputs and results, :mod:`~mmbeam.exec.beam.executor`
runs the pipeline.
"""

from mmbeam.exec.beam.executor import BeamExecutor

__all__ = ["BeamExecutor"]
