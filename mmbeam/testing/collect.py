"""Run a pipeline and get its outputs back as Python lists, on any runner that shares a disk.

``run_collect(lambda p: p | beam.Create(urls) | Download())`` builds the pipeline on a fresh
``beam.Pipeline``, writes every element of the returned PCollection(s) to pickle files in a
temporary folder (one file per bundle, so it works with worker processes too), runs it, and
reads them back. The builder may return one PCollection, a tuple, or a dict of them; the result
has the same shape. Order is not defined, as in Beam.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["Collected", "run_collect"]


class _SpillFn(beam.DoFn):
    """Appends elements to a per-bundle pickle file named after the output."""

    def __init__(self, folder: str, name: str):
        self.folder = folder
        self.name = name

    def start_bundle(self):
        self._items: list = []

    def process(self, element):
        self._items.append(element)

    def finish_bundle(self):
        if self._items:
            path = os.path.join(self.folder, f"{self.name}-{uuid.uuid4().hex}.pkl")
            with open(path, "wb") as f:
                pickle.dump(self._items, f)
        self._items = []


class Collected:
    """Outputs of :func:`run_collect` plus the finished run's metrics."""

    def __init__(self, outputs: Any, result: beam.runners.runner.PipelineResult):
        self.outputs = outputs
        self.result = result

    def counter(self, namespace: str, name: str) -> int:
        """The committed value of one Beam counter (0 if it was never incremented)."""
        wanted = MetricsFilter().with_namespace(namespace).with_name(name)
        query = self.result.metrics().query(wanted)
        return sum(c.committed or 0 for c in query["counters"])


def run_collect(
    build: Callable[[beam.Pipeline], Any],
    runner: Any = None,
    options: PipelineOptions | None = None,
) -> Collected:
    """Build with ``build(pipeline)``, run on ``runner`` (default: in-process), return outputs."""
    if runner is None:
        from mmbeam.runners.direct import local_runner

        runner = local_runner()
    folder = tempfile.mkdtemp(prefix="mmbeam-collect-")
    try:
        pipeline = beam.Pipeline(runner=runner, options=options or PipelineOptions([]))
        built = build(pipeline)
        names = _attach(built, folder)
        result = pipeline.run()
        result.wait_until_finish()
        read = {name: _read(folder, name) for name in names}
        return Collected(_reshape(built, read), result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _items(built: Any) -> list[tuple[str, Any]]:
    if isinstance(built, dict):
        return [(str(k), v) for k, v in built.items()]
    if isinstance(built, (tuple, list)):
        return [(f"out{i}", v) for i, v in enumerate(built)]
    return [("out", built)]


def _attach(built: Any, folder: str) -> list[str]:
    names = []
    for name, pcoll in _items(built):
        pcoll | f"Collect[{name}]" >> beam.ParDo(_SpillFn(folder, name))
        names.append(name)
    return names


def _read(folder: str, name: str) -> list:
    items: list = []
    for file in sorted(os.listdir(folder)):
        if file.startswith(f"{name}-"):
            with open(os.path.join(folder, file), "rb") as f:
                items.extend(pickle.load(f))
    return items


def _reshape(built: Any, read: dict[str, list]) -> Any:
    if isinstance(built, dict):
        return {k: read[str(k)] for k in built}
    if isinstance(built, (tuple, list)):
        return tuple(read[f"out{i}"] for i in range(len(built)))
    return read["out"]
