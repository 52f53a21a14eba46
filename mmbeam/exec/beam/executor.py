"""Run an optimized plan as a Beam pipeline on any runner; inputs and results go through the
run's channel (:mod:`mmbeam.exec.beam.channel`), never through the driver's disk.

A write (``write_parquet``/``write_csv``) names its files after the run, and keeps only those in
the written-path table that came back from committed attempts: files of a failed or retried task
attempt are removed after the run (on failure, all of the run's files are).
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

from mmbeam.errors import MmbeamError, UnsupportedError
from mmbeam.exec.arrow import empty_batch
from mmbeam.exec.base import Executor, Outcome, Sink, WriteFiles, log_counts, result_schema
from mmbeam.exec.beam.channel import EngineChannel, channel_for, describe_channel
from mmbeam.exec.beam.compile import Compiler, WriteFilesFn
from mmbeam.exec.beam.engine_stream import EngineStream
from mmbeam.exec.failures import FailureCapture, concat_failures, is_failure_key
from mmbeam.exec.kernels import StageTotals
from mmbeam.exec.metrics import from_beam_result
from mmbeam.exec.options import ExecOptions
from mmbeam.exec.stages import describe_stages
from mmbeam.io.filesystems import filesystem_for, split_protocol
from mmbeam.ops.registry import registered
from mmbeam.plan import nodes as P
from mmbeam.transforms.coders import KeyedBatch

__all__ = ["BeamExecutor"]

_log = logging.getLogger("mmbeam.frame")


class BeamExecutor(Executor):
    """Plans as Beam pipelines on ``runner_factory()`` with ``pipeline_flags`` as options;
    ``io_config`` reaches ``--temp_location`` when the run goes through it."""

    def __init__(self, runner_factory: Callable[[], Any], runner_name: str,
                 pipeline_flags: dict[str, Any], options: ExecOptions, io_config: Any = None,
                 why: str = ""):
        self.runner_factory = runner_factory
        self.runner_name = runner_name
        self.pipeline_flags = dict(pipeline_flags)
        self.options = options
        self.io_config = io_config
        self.why = why

    def _pipeline(self, plan: P.Plan) -> beam.Pipeline:
        user = _pipeline_of(plan)
        if user is not None:
            return user
        return beam.Pipeline(runner=self.runner_factory(),
                             options=PipelineOptions([], **self.pipeline_flags))

    def run(self, plan: P.Plan, sink: Sink, capture: FailureCapture | None = None) -> Outcome:
        """Run an optimized plan into ``sink`` as a Beam pipeline; its outcome."""
        pipeline = self._pipeline(plan)
        channel = channel_for(pipeline.runner, pipeline._options, self.io_config)
        written: WriteFiles | None = None
        committed: set[str] = set()
        try:
            compiler = Compiler(pipeline, self.options, channel, capture)
            out = compiler.expand(plan)
            if isinstance(sink, WriteFiles):
                written = WriteFiles(dataclasses.replace(sink.spec,
                                                         name_prefix=f"{channel.token}-"))
                out = out | "Write" >> beam.ParDo(WriteFilesFn(written.spec)).with_output_types(
                    KeyedBatch)
            channel.attach(_with_failures(out, compiler))
            result = _run(pipeline)
            parts, failures = _split_failures(channel.read(result), capture)
            batches = [b for _, b in parts if b.num_rows]
            table = pa.Table.from_batches(batches or [empty_batch(result_schema(plan, sink))])
            if written is not None:
                committed = set(table.column("path").to_pylist())
            return _outcome(table, result, compiler, failures)
        finally:
            channel.close()
            if written is not None:
                _remove_uncommitted(written.spec, committed)

    def stream(self, plan: P.Plan, done: Callable[[Outcome], None] | None = None,
               capture: FailureCapture | None = None) -> Iterator[pa.Table]:
        """The rows as a stream of tables. On mmbeam's Dask and Ray runners they come while
        the run goes on, each task's as it finishes (completion order, not key order; see
        :mod:`mmbeam.exec.beam.engine_stream`), and ``done`` gets the outcome when the run has
        ended (not when the stream was closed early). Otherwise (other runners; a plan that
        sorts, limits, reads a PCollection or captures failures, see :func:`_streams_live`)
        the rows come after the run, in key order, read from the channel one part at a time
        and released as they are yielded (capturing failures, which come last, all parts are
        read first)."""
        pipeline = self._pipeline(plan)
        channel = channel_for(pipeline.runner, pipeline._options, self.io_config)
        try:
            compiler = Compiler(pipeline, self.options, channel, capture)
            out = _with_failures(compiler.expand(plan), compiler)
            if isinstance(channel, EngineChannel) and _streams_live(plan, capture):
                live = EngineStream(lambda: _run(pipeline))
                channel.attach(out, live)
                batches = live.batches()
                try:
                    yield from _tables(batches)
                finally:
                    batches.close()  # an early stop stops the run
                if done is not None:
                    done(_outcome(plan.schema.to_arrow().empty_table(), live.result, compiler))
                return
            channel.attach(out)
            result = _run(pipeline)
            parts, failures = (channel.iter_read(result), None) if capture is None else \
                _split_failures(channel.read(result), capture)
            if done is not None:
                done(_outcome(plan.schema.to_arrow().empty_table(), result, compiler,
                              failures))
            yield from _tables(parts)
        finally:
            channel.close()

    def explain(self, plan: P.Plan, show_all: bool = False) -> str:
        """How the plan runs as a Beam pipeline (and its stages with ``show_all``)."""
        user = _pipeline_of(plan)
        if user is not None:
            runner, options = user.runner, user._options
        else:  # no runner is made to explain a plan
            runner = _runner_class(self.runner_factory)
            options = PipelineOptions([], **self.pipeline_flags)
        how = "" if runner is None else f"; {describe_channel(runner, options)}"
        text = (f"== Execution ==\nBeam pipeline on the {self.runner_name!r} runner"
                + (f" ({self.why})" if self.why else "") + how)
        if show_all:
            text += "\n\n== Physical stages ==\n" + describe_stages(plan, self.options)
            pools = last_run_pools()
            if pools:
                text += "\n\n== Pools (last run on the Dask/Ray runner) ==\n" + pools
        return text


def _tables(keyed_batches: Iterator[tuple[tuple, pa.RecordBatch]]) -> Iterator[pa.Table]:
    """The non-empty batches of a channel's keyed batches, as tables."""
    for _, batch in keyed_batches:
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def last_run_pools() -> str:
    """The pools of the last run on mmbeam's Dask or Ray runner in this process, one stage a
    line: what ran it, its size over time, its model batches, the bytes queued on its input."""
    from mmbeam.runners.pools import last_run

    return "\n".join(f"* {report.describe()}" for report in last_run())


def _streams_live(plan: P.Plan, capture: FailureCapture | None) -> bool:
    """Whether an engine run of ``plan`` may hand its rows over as its tasks finish: not when
    their order is the point (a sort, a limit's first rows), nor when a recovered run could
    not recognize a batch it gave already (a PCollection's rows get random keys; failure
    batches are keyed by task), where the rows come after the run."""
    return capture is None and not any(isinstance(n, (P.Sort, P.Limit, P.FromPCollection))
                                       for n in P.walk(plan))


def _with_failures(out: beam.PCollection, compiler: Compiler) -> beam.PCollection:
    """``out`` and the stages' failed-rows outputs in one PCollection (failure batches keyed
    under FAILURE_KEY), or ``out`` alone when nothing captures failures."""
    if not compiler.failures:
        return out
    return ((out, *compiler.failures) | compiler.label("WithFailures") >> beam.Flatten()
            | compiler.label("Result") >> beam.Map(lambda kb: kb).with_output_types(KeyedBatch))


def _split_failures(parts: list, capture: FailureCapture | None) \
        -> tuple[list, pa.Table | None]:
    """(the result's keyed batches, the failures table) of a run's channel parts."""
    if capture is None:
        return parts, None
    rows = [kb for kb in parts if not is_failure_key(kb[0])]
    failed = [b for k, b in parts if is_failure_key(k)]
    return rows, concat_failures(failed, capture.columns)


def _runner_class(factory: Any) -> type | None:
    """The runner class a factory makes, when that is known without calling it."""
    target = getattr(factory, "func", factory)  # functools.partial(DaskRunner, address)
    if isinstance(target, type):
        return target
    from mmbeam.runners.direct import local_runner

    if target is local_runner:
        from mmbeam.runners.direct import LocalRunner

        return LocalRunner
    return None


def _pipeline_of(plan: P.Plan) -> beam.Pipeline | None:
    """The user's pipeline a plan reads PCollections of (its sink is added there)."""
    found = {id(n.pcoll.pipeline): n.pcoll.pipeline for n in P.walk(plan)
             if isinstance(n, P.FromPCollection)}
    if len(found) > 1:
        raise UnsupportedError("a frame can only read PCollections of one pipeline")
    return next(iter(found.values()), None)


def _unwrap(exc: BaseException) -> BaseException:
    """The mmbeam error a runner wrapped (Beam re-raises worker errors in its own types)."""
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, MmbeamError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return exc


def _run(pipeline: beam.Pipeline) -> Any:
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:  # noqa: BLE001 - re-raised as the mmbeam error inside
        inner = _unwrap(exc)
        if inner is exc:
            raise
        raise inner from exc
    return result


def _outcome(table: pa.Table, result: Any, compiler: Compiler,
             failures: pa.Table | None = None) -> Outcome:
    """The run's table with its counts: each URL/image stage's counters (namespace: the
    stage, as the transforms report them), the UDFs' nulled rows, the per-operator metrics
    (namespace: the operator) and ``failures``."""
    stages, udfs = StageTotals(), {}
    names = {f.stage for f in registered()}
    try:
        for m in result.metrics().query()["counters"]:
            value = int(m.committed or m.attempted or 0)
            space, name = m.key.metric.namespace, m.key.metric.name
            if space in names:
                stages.add({space: {name: value}})
            elif space == "mmbeam" and name.endswith(".nulled"):
                op = name[: -len(".nulled")]
                udfs[op] = udfs.get(op, 0) + value
    except Exception:  # noqa: BLE001 - metrics are best effort on some runners
        pass
    return Outcome(table, {**stages.nulled(), **udfs}, log_counts(stages, udfs),
                   from_beam_result(result, compiler.operators), failures)


def _remove_uncommitted(spec: Any, committed: set[str]) -> None:
    """Remove the files this run wrote under ``spec.root`` that are not in ``committed`` (a
    failed or retried task attempt's, or all of them when the run failed)."""
    protocol, root = split_protocol(spec.root)
    keep = {split_protocol(p)[1] for p in committed}
    try:
        fs = filesystem_for(protocol, spec.io_config)
        fs.invalidate_cache()
        found = fs.find(root) if fs.exists(root) else []
        stale = [p for p in found if posixpath.basename(p).startswith(spec.name_prefix)
                 and p.rstrip("/") not in keep]
        for path in stale:
            fs.rm(path)
        if stale:
            _log.info("removed %d file(s) of uncommitted attempts under %s", len(stale),
                      spec.root)
    except Exception:  # noqa: BLE001 - cleanup must not hide the run's own error
        _log.warning("could not check %s for files of uncommitted attempts", spec.root,
                     exc_info=True)
