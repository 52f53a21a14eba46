"""Run a pipeline and get its outputs back as Python lists.

``run_collect(lambda p: p | beam.Create(urls) | Download())`` builds the pipeline on a fresh
``beam.Pipeline``, runs it and returns every element of the returned PCollection(s). The builder
may return one PCollection, a tuple, or a dict of them; the result has the same shape. Order is
not defined, as in Beam.

Each element comes back once, even when a task was retried or a worker lost: on mmbeam's Dask
and Ray runners the outputs come back through the engine from the committed attempts
(``DistributedRunner.retain``); on other runners each bundle writes a pickle file named per
attempt in a temporary folder on this machine's disk (so those runners' workers must share it),
a last step lists the files of committed bundles, and only those are read.
"""

from __future__ import annotations

import json
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
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["Collected", "run_collect"]


class _SpillFn(beam.DoFn):
    """Appends elements to a pickle file per bundle attempt, named after the output; emits the
    file's name when the bundle finishes."""

    def __init__(self, folder: str, name: str):
        self.folder = folder
        self.name = name

    def start_bundle(self):
        self._items: list = []

    def process(self, element):
        self._items.append(element)

    def finish_bundle(self):
        if self._items:
            file = f"{self.name}-{uuid.uuid4().hex}.pkl"
            with open(os.path.join(self.folder, file), "wb") as f:
                pickle.dump(self._items, f)
            yield WindowedValue(file, MIN_TIMESTAMP, [GlobalWindow()])
        self._items = []


class _ManifestFn(beam.DoFn):
    """Writes the names of the committed spill files of one output."""

    def __init__(self, folder: str, name: str):
        self.folder = folder
        self.name = name

    def process(self, files):
        with open(os.path.join(self.folder, f"manifest-{self.name}.json"), "w") as f:
            json.dump(sorted(files), f)


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
    from mmbeam.runners.core import DistributedRunner

    folder = tempfile.mkdtemp(prefix="mmbeam-collect-")
    try:
        pipeline = beam.Pipeline(runner=runner, options=options or PipelineOptions([]))
        built = build(pipeline)
        if isinstance(runner, DistributedRunner):
            for name, pcoll in _items(built):
                runner.retain(pcoll, name)
        else:
            _attach(built, folder)
        result = pipeline.run()
        result.wait_until_finish()
        if isinstance(runner, DistributedRunner):
            read = result.retained
        else:
            read = {name: _read(folder, name) for name, _ in _items(built)}
        return Collected(_reshape(built, read), result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _items(built: Any) -> list[tuple[str, Any]]:
    if isinstance(built, dict):
        return [(str(k), v) for k, v in built.items()]
    if isinstance(built, (tuple, list)):
        return [(f"out{i}", v) for i, v in enumerate(built)]
    return [("out", built)]


def _attach(built: Any, folder: str) -> None:
    for name, pcoll in _items(built):
        _ = (pcoll | f"Unwindowed[{name}]" >> beam.WindowInto(GlobalWindows())
             | f"Collect[{name}]" >> beam.ParDo(_SpillFn(folder, name))
             | f"Committed[{name}]" >> beam.combiners.ToList()
             | f"Manifest[{name}]" >> beam.ParDo(_ManifestFn(folder, name)))


def _read(folder: str, name: str) -> list:
    """The elements in the committed spill files of output ``name``."""
    with open(os.path.join(folder, f"manifest-{name}.json")) as f:
        files = json.load(f)
    items: list = []
    for file in files:
        with open(os.path.join(folder, file), "rb") as f:
            items.extend(pickle.load(f))
    return items


def _reshape(built: Any, read: dict[str, list]) -> Any:
    if isinstance(built, dict):
        return {k: read[str(k)] for k in built}
    if isinstance(built, (tuple, list)):
        return tuple(read[f"out{i}"] for i in range(len(built)))
    return read["out"]
