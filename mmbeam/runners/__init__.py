"""Beam runners for mmbeam pipelines; locally, Beam's in-process FnApiRunner."""

from mmbeam.runners.direct import local_pipeline, local_runner

__all__ = ["local_pipeline", "local_runner"]
