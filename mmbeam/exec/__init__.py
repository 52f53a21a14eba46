"""Executors: what runs a frame's optimized plan (see :mod:`mmbeam.exec.base`).

- :mod:`mmbeam.exec.local`: in this process, as streams of Arrow batches;
- :mod:`mmbeam.exec.beam`: as a Beam pipeline on any runner, inputs and results travelling
  through the engine on mmbeam's Dask and Ray runners, through ``--temp_location`` elsewhere.

The Arrow operators both share live here too (:mod:`~mmbeam.exec.operators`,
:mod:`~mmbeam.exec.physical`, :mod:`~mmbeam.exec.evaluate`, :mod:`~mmbeam.exec.kernels`).
Importing this package does not import Beam.
"""

from mmbeam.exec.base import Collect, Executor, Outcome, Sink, WriteFiles
from mmbeam.exec.options import ExecOptions

__all__ = ["Collect", "ExecOptions", "Executor", "Outcome", "Sink", "WriteFiles"]
