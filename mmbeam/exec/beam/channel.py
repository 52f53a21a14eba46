"""How a frame's inputs reach a Beam run and its results come back, never through the driver's
disk.

:func:`channel_for` picks one channel per run from the runner:

- :class:`InProcessChannel`: the workers run in this process (Beam's FnApiRunner, a
  PortableRunner with ``--environment_type=LOOPBACK``). Tables are held by reference, results
  appended to a list in this process, hash partitions shuffled by reference.
- :class:`EngineChannel`: mmbeam's Dask and Ray runners. A big table is put in the engine once
  (``ray.put``, Dask ``scatter``); results stay on the workers as the last stage's output and
  come back through the engine (Ray object refs, Dask futures) as Arrow record batches, from the
  committed attempt of each task only (:meth:`~mmbeam.runners.core.DistributedRunner.retain`);
  or, for an iterator, each task's as it finishes (:mod:`mmbeam.exec.beam.engine_stream`).
- :class:`TempLocationChannel`: any other runner (portable, Flink, Dataflow). A big table is
  staged, and results written, as Arrow IPC files under the pipeline's ``--temp_location``
  (``gs://``, ``s3://`` or a shared path, through fsspec). Each result file is named per task
  attempt; a last step writes a manifest of the files that reached it, which only committed
  bundles' outputs do, and the driver reads only those. The run's folder is removed afterwards,
  on failure too. Without ``--temp_location`` the run fails before it starts (ConfigError).

Small tables (up to :data:`INLINE_BYTES`) always travel inside the pipeline as Arrow IPC.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from mmbeam.errors import ConfigError
from mmbeam.io.filesystems import filesystem_for, split_protocol

__all__ = [
    "INLINE_BYTES",
    "Channel",
    "EngineChannel",
    "InProcessChannel",
    "TempLocationChannel",
    "channel_for",
    "describe_channel",
    "held",
    "held_tables",
    "hold",
    "input_channel_for",
]

_log = logging.getLogger(__name__)

#: tables up to this size travel inside the pipeline (Arrow IPC in the pickled DoFn)
INLINE_BYTES = 1 << 20

# Values the workers in this process read by key (tables, shuffled partitions, results); every
# entry belongs to one run and is dropped when the run's channel closes.
_HELD: dict[str, Any] = {}
_HELD_LOCK = threading.Lock()


def held_tables() -> int:
    """How many values runs in this process hold by reference right now (0 between runs)."""
    return len(_HELD)


def hold(prefix: str, value: Any) -> str:
    """Hold ``value`` in this process under a new key starting with ``prefix`` (a channel's
    token: the channel drops it when it closes)."""
    key = f"{prefix}:{uuid.uuid4().hex}"
    with _HELD_LOCK:
        _HELD[key] = value
    return key


def held(key: str) -> Any:
    """A value :func:`hold` holds."""
    return _HELD[key]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: Any) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


# -- where a worker finds an in-memory table ------------------------------------------------------
class InlineTable:
    """A small table carried inside the pipeline as Arrow IPC bytes."""

    def __init__(self, table: pa.Table):
        self.data = _ipc(table)

    def load(self) -> pa.Table:
        return _from_ipc(self.data)


class HeldTable:
    """A table held by this process (the workers run here)."""

    def __init__(self, key: str):
        self.key = key

    def load(self) -> pa.Table:
        return held(self.key)


class EngineTable:
    """A table the driver put in the engine for this stage (see ``DistributedRunner.provide``)."""

    def __init__(self, token: str):
        self.token = token

    def load(self) -> pa.Table:
        from mmbeam.runners.worker import provided

        return provided(self.token)


class StagedTable:
    """A table staged as an Arrow IPC file under ``--temp_location``."""

    def __init__(self, url: str, io_config: Any):
        self.url = url
        self.io_config = io_config

    def load(self) -> pa.Table:
        protocol, path = split_protocol(self.url)
        with filesystem_for(protocol, self.io_config).open(path, "rb") as f:
            return _from_ipc(f.read())


# -- result DoFns ---------------------------------------------------------------------------------
class _AppendFn(beam.DoFn):
    """Append each keyed batch to the run's result list in this process."""

    def __init__(self, key: str):
        self._key = key

    def process(self, element):
        with _HELD_LOCK:
            _HELD[self._key].append(element)


class _WriteIpcFn(beam.DoFn):
    """Write each keyed batch as an Arrow IPC file named by its key and this attempt; emit the
    file's name."""

    def __init__(self, folder: str, io_config: Any):
        self._folder = folder
        self._io_config = io_config

    def process(self, element):
        key, batch = element
        name = "-".join(f"{k:019d}" for k in key) + f".{uuid.uuid4().hex}.arrow"
        protocol, folder = split_protocol(self._folder)
        fs = filesystem_for(protocol, self._io_config)
        with fs.open(posixpath.join(folder, "parts", name), "wb") as f:
            with pa.ipc.new_file(f, batch.schema) as writer:
                writer.write_batch(batch)
        yield name


class _ManifestFn(beam.DoFn):
    """Write the names of the committed result files (those that reached this step)."""

    def __init__(self, folder: str, io_config: Any):
        self._folder = folder
        self._io_config = io_config

    def process(self, names):
        protocol, folder = split_protocol(self._folder)
        fs = filesystem_for(protocol, self._io_config)
        with fs.open(posixpath.join(folder, "manifest.json"), "w") as f:
            json.dump(sorted(names), f)


def _key_of(name: str) -> tuple[int, ...]:
    return tuple(int(k) for k in name.split(".")[0].split("-"))


# -- channels -------------------------------------------------------------------------------------
class Channel:
    """Inputs to and results from one Beam run (see the module doc)."""

    #: whether the run's workers are in this process (shuffles may go by reference)
    in_process = False

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex

    def table_source(self, table: pa.Table, label: str) -> Any:
        """Where the workers find ``table``, read by the transform labelled ``label``."""
        if table.nbytes <= INLINE_BYTES:
            return InlineTable(table)
        return self._stage(table, label)

    def _stage(self, table: pa.Table, label: str) -> Any:
        return InlineTable(table)

    def attach(self, pcoll: beam.PCollection) -> None:
        """Send ``pcoll``'s keyed batches back to the driver."""
        raise NotImplementedError

    def read(self, result: Any) -> list[tuple[tuple, pa.RecordBatch]]:
        """The keyed batches of the finished run, in key order."""
        raise NotImplementedError

    def iter_read(self, result: Any) -> Iterator[tuple[tuple, pa.RecordBatch]]:
        """:meth:`read` one keyed batch at a time, each dropped by the channel once yielded
        (result files are read one at a time), so a consumer holds one part, not all."""
        parts = self.read(result)
        parts.reverse()
        while parts:
            yield parts.pop()

    def close(self) -> None:
        """Release everything the run held or staged (also after a failed run)."""


class InProcessChannel(Channel):
    """Workers in this process: everything by reference, in this process's memory."""

    in_process = True

    def _stage(self, table: pa.Table, label: str) -> Any:
        return HeldTable(hold(self.token, table))

    def attach(self, pcoll: beam.PCollection) -> None:
        """Send ``pcoll``'s elements into this channel."""
        self._results = hold(self.token, [])
        _ = pcoll | "Collect" >> beam.ParDo(_AppendFn(self._results))

    def read(self, result: Any) -> list:
        """The elements the run sent, in key order."""
        return sorted(held(self._results), key=lambda kb: kb[0])

    def close(self) -> None:
        """Release what the channel holds."""
        with _HELD_LOCK:
            for key in [k for k in _HELD if k.startswith(f"{self.token}:")]:
                del _HELD[key]


class EngineChannel(Channel):
    """mmbeam's Dask and Ray runners: values through the engine."""

    def __init__(self, runner: Any):
        super().__init__()
        self.runner = runner

    def _stage(self, table: pa.Table, label: str) -> Any:
        return EngineTable(self.runner.provide(table, label))

    def attach(self, pcoll: beam.PCollection, stream: Any = None) -> None:
        """Send ``pcoll``'s elements into this channel; or, with ``stream`` (an
        :class:`~mmbeam.exec.beam.engine_stream.EngineStream`), to it while the run goes on."""
        if stream is None:
            self.runner.retain(pcoll, self.token)
        else:
            self.runner.retain(pcoll, self.token, stream.on_part, stream.stop)

    def read(self, result: Any) -> list:
        """The elements the run sent, in key order (handed over: the result keeps none)."""
        parts = result.retained.pop(self.token)  # the caller holds them now, not the result
        parts.sort(key=lambda kb: kb[0])
        return parts


class TempLocationChannel(Channel):
    """Any other runner: Arrow IPC files under ``--temp_location``, read with fsspec."""

    def __init__(self, temp_location: str, io_config: Any):
        super().__init__()
        self.folder = f"{temp_location.rstrip('/')}/mmbeam-{self.token}"
        self.io_config = io_config
        protocol, self._path = split_protocol(self.folder)
        self._fs = filesystem_for(protocol, io_config)

    def _stage(self, table: pa.Table, label: str) -> Any:
        name = f"input-{uuid.uuid4().hex}.arrow"
        with self._fs.open(posixpath.join(self._path, name), "wb") as f:
            f.write(_ipc(table))
        return StagedTable(f"{self.folder}/{name}", self.io_config)

    def attach(self, pcoll: beam.PCollection) -> None:
        """Send ``pcoll``'s elements into this channel."""
        _ = (pcoll | "Collect" >> beam.ParDo(_WriteIpcFn(self.folder, self.io_config))
             | "Committed" >> beam.combiners.ToList()
             | "Manifest" >> beam.ParDo(_ManifestFn(self.folder, self.io_config)))

    def read(self, result: Any) -> list:
        """The elements the run sent, in key order."""
        return list(self.iter_read(result))

    def iter_read(self, result: Any) -> Iterator[tuple[tuple, pa.RecordBatch]]:
        """The elements the run sent, in key order, one part file read at a time."""
        with self._fs.open(posixpath.join(self._path, "manifest.json"), "r") as f:
            names = json.load(f)
        for name in sorted(names, key=_key_of):
            with self._fs.open(posixpath.join(self._path, "parts", name), "rb") as f:
                table = pa.ipc.open_file(pa.BufferReader(f.read())).read_all()
            for batch in table.to_batches():
                yield _key_of(name), batch

    def close(self) -> None:
        """Release what the channel holds."""
        try:
            if self._fs.exists(self._path):
                self._fs.rm(self._path, recursive=True)
        except Exception:  # noqa: BLE001 - cleanup must not hide the run's own error
            _log.warning("could not remove %s", self.folder, exc_info=True)


def _runs_in_process(runner: Any, options: Any) -> bool:
    """Whether ``runner`` (an instance, or its class) runs its workers in this process."""
    from apache_beam.options.pipeline_options import DirectOptions, PortableOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.runners.portability.portable_runner import PortableRunner

    from mmbeam.runners.core import DistributedRunner

    kind = runner if isinstance(runner, type) else type(runner)
    if issubclass(kind, DistributedRunner):
        return False
    if issubclass(kind, FnApiRunner):
        return options.view_as(DirectOptions).direct_running_mode != "multi_processing"
    if issubclass(kind, PortableRunner):
        return (options.view_as(PortableOptions).environment_type or "").upper() == "LOOPBACK"
    return False


def describe_channel(runner: Any, options: Any) -> str:
    """How inputs and results travel for a run on ``runner`` (an instance or its class)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from mmbeam.runners.core import DistributedRunner

    kind = runner if isinstance(runner, type) else type(runner)
    if issubclass(kind, DistributedRunner):
        return "inputs and results through the engine (engine objects, no files)"
    if _runs_in_process(kind, options):
        return "its workers run in this process: inputs and results by reference"
    temp = options.view_as(GoogleCloudOptions).temp_location
    if temp:
        return f"inputs and results as Arrow files under --temp_location={temp}"
    return "needs --temp_location for its inputs and results (not set)"


def channel_for(runner: Any, options: Any, io_config: Any = None) -> Channel:
    """The channel for a frame run on ``runner`` with pipeline ``options``; ConfigError, before
    anything runs, when the runner's workers may not share this disk and no
    ``--temp_location`` is set."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    from mmbeam.runners.core import DistributedRunner

    if isinstance(runner, DistributedRunner):
        return EngineChannel(runner)
    if _runs_in_process(runner, options):
        return InProcessChannel()
    temp = options.view_as(GoogleCloudOptions).temp_location
    if not temp:
        raise ConfigError(
            f"a frame run on {type(runner).__name__} brings its results back through the "
            "pipeline option --temp_location, which is not set: its workers may not share this "
            "machine's disk. Set temp_location to a gs://, s3:// or shared folder every worker "
            "and this process can reach, e.g. mmbeam.context.set_runner(factory, name, "
            "temp_location='s3://bucket/tmp', io_config=...)")
    return TempLocationChannel(temp, io_config)


def input_channel_for(pipeline: beam.Pipeline) -> Channel:
    """For a frame expanded into a user's pipeline (``to_pcollection``): through the engine on
    mmbeam's runners, else inline in the pipeline (nothing to release after a run the frame
    does not see)."""
    from mmbeam.runners.core import DistributedRunner

    if isinstance(pipeline.runner, DistributedRunner):
        return EngineChannel(pipeline.runner)
    return Channel()
