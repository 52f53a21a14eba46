"""Compile an optimized plan to Beam transforms over Arrow record batches, and run it.

Every PCollection here holds ``(key, pyarrow.RecordBatch)`` pairs. ``key`` is a tuple of ints
that orders batches (source file, batch number ...) so collected rows come back in source
order. Per-row work (projections, filters, explodes) runs as one DoFn per stage; joins,
group-bys and distinct hash-partition batches and shuffle them with GroupByKey /
CoGroupByKey, then work inside each partition with Arrow. Every stage emits at least one batch
(possibly empty) when its input had one, so global aggregates see empty inputs too.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from functools import singledispatch
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.errors import MmbeamError, UnsupportedError
from mmbeam.frame import operators, physical, udf_stage
from mmbeam.frame import plan as P
from mmbeam.frame.context import ExecOptions
from mmbeam.frame.evaluate import EvalContext
from mmbeam.transforms.coders import KeyedBatch

__all__ = ["ExecOptions", "Compiler", "run_plan", "to_batch"]

log = logging.getLogger("mmbeam.frame")


def to_batch(table: pa.Table) -> pa.RecordBatch:
    """One record batch holding all of ``table`` (an empty one when it has no rows)."""
    if table.num_rows == 0:
        return _empty_batch(table.schema)
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]  # pragma: no cover


_empty_batch = operators.empty_batch


def _table(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def _concat(batches: list, schema: pa.Schema) -> pa.Table:
    tables = [_table(b) for b in batches if b.num_rows]
    if not tables:
        return pa.Table.from_batches([_empty_batch(schema)])
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


# -- DoFns --------------------------------------------------------------------------------------
# Tables too big to inline that an in-process runner reads by reference (key -> table); entries
# live for one run_plan (released in its ``finally``).
_HELD: dict[str, pa.Table] = {}


class _SliceTableFn(beam.DoFn):
    """Emit slice ``i`` of an in-memory table: held inline when small; else, on a runner in this
    process, looked up by key in this process's ``_HELD`` tables (no copy); else read from a
    staged Arrow IPC file (memory-mapped), so big tables never go through Beam's pickled graph."""

    def __init__(self, table: pa.Table | None, path: str | None, rows: int):
        self._table = table
        self._path = path
        self._rows = rows

    def setup(self):
        if self._table is not None:
            self._loaded = self._table
        elif self._path in _HELD:
            self._loaded = _HELD[self._path]
        else:
            with pa.memory_map(self._path) as src:
                self._loaded = pa.ipc.open_file(src).read_all()

    def process(self, i: int):
        start = i * self._rows  # clamped: a table without columns does not clamp its slices
        yield (i,), to_batch(self._loaded.slice(start, min(self._rows,
                                                           self._loaded.num_rows - start)))


class _ScanFn(beam.DoFn):
    """Read one scan task (a file) as batches, applying the scan's filter, columns and limit."""

    def __init__(self, scan: P.Scan, rows: int):
        self._scan = scan
        self._rows = rows

    def process(self, task: tuple[int, Any]):
        index, spec = task
        for key, table in operators.scan_task(self._scan, index, spec, self._rows):
            yield key, to_batch(table)


class _RowStageFn(beam.DoFn):
    """Projections, filters and explodes of one stage, fused over each batch.

    A stage with URL/image work cuts its input into sub-batches: ``sub_rows`` of them, or with
    ``sub_rows="auto"`` as many as :func:`operators.multimodal_sizer` picks, reported as the
    ``multimodal_batch_rows`` distribution metric and in ``explain()`` after a run.
    """

    def __init__(self, ops: list[tuple[str, Any]], sub_rows: int | str | None,
                 schema: pa.Schema):
        self._ops = ops
        self._sub_rows = sub_rows
        self._schema = schema

    def setup(self):
        self._errors = {}
        self._sizer = None
        if self._sub_rows == "auto":
            self._sizer = operators.multimodal_sizer(None)
            self._size_metric = beam.metrics.Metrics.distribution(
                "mmbeam", "multimodal_batch_rows")

    def _run(self, table: pa.Table, ctx: EvalContext) -> pa.Table:
        return operators.run_row_ops(table, self._ops, ctx)

    def _slices(self, rows: int):
        """(start, length) of each sub-batch; lengths come from the controller when "auto"."""
        start = 0
        while start < rows:
            size = self._sub_rows
            if self._sizer is not None:
                size = self._sizer.next_size()
                self._size_metric.update(size)
            yield start, size
            start += size

    def process(self, element):
        key, batch = element
        table = _table(batch)
        ctx = EvalContext()
        if self._sub_rows is None or (self._sizer is None and table.num_rows <= self._sub_rows):
            yield key, to_batch(self._run(table, ctx))
        else:
            for j, (start, size) in enumerate(self._slices(table.num_rows)):
                part = table.slice(start, size)
                if self._sizer is None:
                    out = self._run(part, ctx)
                else:
                    with self._sizer.measure(part.num_rows) as cost:
                        out = self._run(part, ctx)
                        cost.output_bytes = out.nbytes
                yield key + (j,), to_batch(out)
        for op, count in ctx.errors.items():
            beam.metrics.Metrics.counter("mmbeam", f"{op}.nulled").inc(count)


class _PartitionFn(beam.DoFn):
    """Hash-partition a batch; with a staging folder, emit the path of an Arrow file per part
    (shuffle by reference) instead of the batch itself."""

    def __init__(self, columns: tuple[str, ...], parts: int, staging: str | None = None):
        self._columns = columns
        self._parts = parts
        self._staging = staging
        self.with_output_types(tuple[int, pa.RecordBatch if staging is None else str])

    def process(self, element):
        _, batch = element
        yield from self._emit(_table(batch))

    def _emit(self, table: pa.Table):
        for pid, part in physical.partition_table(table, self._columns, self._parts):
            if self._staging is None:
                yield pid, to_batch(part)
            else:
                path = os.path.join(self._staging, f"shuffle-{pid}-{uuid.uuid4().hex}.arrow")
                with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, part.schema) as w:
                    w.write_table(part)
                yield pid, path


class _PartialAggregateFn(_PartitionFn):
    """Combiner lifting: partial aggregates of every batch of a bundle, merged and
    hash-partitioned once in ``finish_bundle``, so the shuffle moves one row per group and
    bundle instead of every input row."""

    MERGE_EVERY = 16

    def __init__(self, agg: P.Aggregate, parts: int, staging: str | None = None):
        super().__init__(tuple(agg.keys) or (physical.GLOBAL_KEY,), parts, staging)
        self._keys = agg.keys
        self._aggs = agg.aggs

    def start_bundle(self):
        self._partials: list[pa.Table] = []

    def process(self, element):
        _, batch = element
        self._partials.append(physical.partial_aggregate(_table(batch), self._keys, self._aggs))
        if len(self._partials) >= self.MERGE_EVERY:
            self._partials = [self._merged()]

    def _merged(self) -> pa.Table:
        return physical.merge_partials(pa.concat_tables(self._partials), self._keys, self._aggs)

    def finish_bundle(self):
        if not self._partials:
            return
        merged = self._merged()
        self._partials = []
        for pid, part in self._emit(merged):
            yield WindowedValue((pid, part), MIN_TIMESTAMP, [GlobalWindow()])


def _load(item: Any) -> pa.Table | pa.RecordBatch:
    """A shuffled batch, or the table in a shuffle file (memory-mapped, no copy)."""
    if isinstance(item, str):
        with pa.memory_map(item) as src:
            return pa.ipc.open_file(src).read_all()
    return item


class _JoinFn(beam.DoFn):
    """Join the left and right batches of one hash partition (holds no plan, only the spec)."""

    def __init__(self, join: P.Join):
        self._spec = (join.left_on, join.right_on, join.how, join.prefix)
        self._lschema = join.left.schema.to_arrow()
        self._rschema = join.right.schema.to_arrow()
        self._out = join.schema

    def process(self, element):
        pid, groups = element
        left_on, right_on, how, prefix = self._spec
        left = _concat([_load(b) for b in groups["l"]], self._lschema)
        right = _concat([_load(b) for b in groups["r"]], self._rschema)
        out = physical.join_tables(left, right, left_on, right_on, how, self._out, prefix)
        yield (pid,), to_batch(out)


class _BroadcastJoinFn(_JoinFn):
    """Join each left batch with the whole (small) right side, given as a side input: no
    shuffle of the big side. Only for joins that never emit unmatched right rows."""

    def setup(self):
        self._right: pa.Table | None = None

    def process(self, element, right_batches):
        key, batch = element
        left_on, right_on, how, prefix = self._spec
        if self._right is None:  # the side input of the global window is the same every call
            self._right = _concat([b for _, b in right_batches], self._rschema)
        out = physical.join_tables(_table(batch), self._right, left_on, right_on, how,
                                   self._out, prefix)
        yield key, to_batch(out)


class _AggregateFn(beam.DoFn):
    """Merge the partial aggregates of one hash partition into the final rows."""

    def __init__(self, agg: P.Aggregate):
        self._keys = agg.keys
        self._aggs = agg.aggs
        empty = pa.Table.from_batches([_empty_batch(agg.child.schema.to_arrow())])
        self._schema = physical.partial_aggregate(empty, agg.keys, agg.aggs).schema
        self._out = agg.schema

    def process(self, element):
        pid, batches = element
        partials = _concat([_load(b) for b in batches], self._schema)
        out = physical.finish_aggregate(partials, self._keys, self._aggs, self._out)
        yield (pid,), to_batch(out)


class _GatherFn(beam.DoFn):
    """All batches of a gathered stage, in key order: global limit or sort."""

    def __init__(self, node: P.Plan, schema: pa.Schema, rows: int):
        if isinstance(node, P.Limit):
            self._limit, self._sort = node.n, None
        else:
            self._limit, self._sort = None, (node.by, node.descending, node.nulls_first)
        self._schema = schema
        self._rows = rows

    def process(self, element):
        _, keyed = element
        batches = [b for _, b in sorted(keyed, key=lambda kb: kb[0])]
        table = _concat(batches, self._schema)
        if self._limit is not None:
            table = table.slice(0, self._limit)
        else:
            table = physical.sort_table(table, *self._sort)
        if table.num_rows == 0:
            yield (0,), _empty_batch(self._schema)
        for i, start in enumerate(range(0, table.num_rows, self._rows)):
            yield (i,), to_batch(table.slice(start, self._rows))


class _DistinctFn(beam.DoFn):
    def __init__(self, node: P.Distinct, schema: pa.Schema):
        self._on = node.on
        self._schema = schema

    def process(self, element):
        pid, batches = element
        table = _concat([_load(b) for b in batches], self._schema)
        yield (pid,), to_batch(physical.distinct_table(table, self._on))


class _RowsToBatchFn(beam.DoFn):
    """Dict rows (or record batches) from a user's PCollection to batches of ``schema``."""

    def __init__(self, schema: pa.Schema):
        self._schema = schema

    def process(self, rows):
        from mmbeam.types import normalize_table

        tables = []
        dicts = []
        for r in rows:
            if isinstance(r, (pa.RecordBatch, pa.Table)):
                tables.append(normalize_table(r).select(self._schema.names).cast(self._schema))
            else:
                dicts.append(r)
        if dicts:
            tables.append(_from_rows(dicts, self._schema))
        yield (uuid.uuid4().int >> 66,), to_batch(_concat(tables, self._schema))


def _from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    from mmbeam.frame.sources import column_to_arrow
    from mmbeam.types import DataType

    cols = [column_to_arrow([r.get(f.name) for r in rows], DataType.from_arrow(f.type))
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


class _WriteIpcFn(beam.DoFn):
    """Write each batch as an Arrow IPC file named by its key, for the driver to read back."""

    def __init__(self, folder: str):
        self._folder = folder

    def process(self, element):
        import fsspec

        key, batch = element
        name = "-".join(f"{k:019d}" for k in key) + f".{uuid.uuid4().hex}.arrow"
        with fsspec.open(f"{self._folder}/{name}", "wb") as f:
            with pa.ipc.new_file(f, batch.schema) as writer:
                writer.write_batch(batch)
        beam.metrics.Metrics.counter("mmbeam", COLLECTED_FILES).inc()


def _batches_to_rows(element):
    _, batch = element
    yield from batch.to_pylist()


# -- plan -> PCollection ------------------------------------------------------------------------
class Compiler:
    """Expands plan nodes into a pipeline; each node is expanded once."""

    def __init__(self, pipeline: beam.Pipeline, options: ExecOptions,
                 staging: str | None = None, shuffle_files: bool = False,
                 in_process: bool = False):
        self.pipeline = pipeline
        self.options = options
        self.staging = staging
        self.in_process = in_process
        self.held: list[str] = []
        self._shuffle_files = shuffle_files and staging is not None
        self._count = 0
        # several frames may expand into one user pipeline: keep their labels apart
        frames = getattr(pipeline, "_mmbeam_frames", 0) + 1
        pipeline._mmbeam_frames = frames
        self.prefix = "" if frames == 1 else f"Frame{frames}/"
        self._prepared = False

    def shuffle_dir(self) -> str | None:
        """Where partition files go when shuffling by reference (None: shuffle values)."""
        if not self._shuffle_files:
            return None
        os.makedirs(self.staging, exist_ok=True)
        return self.staging

    def stage(self, table: pa.Table) -> str:
        """Write ``table`` as an Arrow IPC file the workers read; returns its path. On a runner
        in this process the table is held by reference instead (writing and re-reading a big
        table cost more than the rest of a short pipeline's start-up); :meth:`release` drops it."""
        if self.in_process:
            key = f"held:{uuid.uuid4().hex}"
            _HELD[key] = table
            self.held.append(key)
            return key
        if self.staging is None:
            self.staging = tempfile.mkdtemp(prefix="mmbeam-stage-")
        os.makedirs(self.staging, exist_ok=True)
        path = os.path.join(self.staging, f"input-{uuid.uuid4().hex}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return path

    def release(self) -> None:
        """Drop the tables :meth:`stage` held by reference."""
        for key in self.held:
            _HELD.pop(key, None)
        self.held.clear()

    def label(self, what: str) -> str:
        self._count += 1
        return f"{self.prefix}{what}{self._count}"

    def expand(self, plan: P.Plan) -> beam.PCollection:
        if not self._prepared:  # once, at the root: UDF calls become their own stages
            self._prepared = True
            plan = udf_stage.split_udfs(plan)
        out = _expand(plan, self)
        out.element_type = KeyedBatch  # what every stage emits; Beam codes it with Arrow IPC
        return out


@singledispatch
def _expand(plan: P.Plan, c: Compiler) -> beam.PCollection:
    raise UnsupportedError(f"the Beam compiler has no rule for {type(plan).__name__}")


INLINE_BYTES = 1 << 20


@_expand.register
def _(plan: P.InMemory, c: Compiler) -> beam.PCollection:
    rows = c.options.batch_rows
    n = max(1, -(-plan.table.num_rows // rows))
    if plan.table.nbytes <= INLINE_BYTES:
        fn = _SliceTableFn(plan.table, None, rows)
    else:
        fn = _SliceTableFn(None, c.stage(plan.table), rows)
    return (c.pipeline | c.label("Create") >> beam.Create(list(range(n)))
            | c.label("Slice") >> beam.ParDo(fn).with_output_types(KeyedBatch))


@_expand.register
def _(plan: P.Scan, c: Compiler) -> beam.PCollection:
    return (c.pipeline | c.label("ScanTasks") >> beam.Create(operators.scan_tasks(plan))
            | c.label("Scan") >> beam.ParDo(_ScanFn(plan, c.options.batch_rows))
            .with_output_types(KeyedBatch))


@_expand.register
def _(plan: P.FromPCollection, c: Compiler) -> beam.PCollection:
    return (plan.pcoll | c.label("Batch") >> beam.BatchElements(min_batch_size=1024,
                                                                 max_batch_size=65536)
            | c.label("ToArrow") >> beam.ParDo(_RowsToBatchFn(plan.schema.to_arrow())))


def _is_row(plan: P.Plan) -> bool:
    return isinstance(plan, (P.Project, P.Filter, P.Explode))


def _row_stage(plan: P.Plan, c: Compiler) -> beam.PCollection:
    ops, node, multimodal = operators.row_ops(plan)
    source = c.expand(node)
    sub = (c.options.multimodal_batch_rows or "auto") if multimodal else None
    fn = _RowStageFn(ops, sub, plan.schema.to_arrow())
    return source | c.label("Stage") >> beam.ParDo(fn).with_output_types(KeyedBatch)


_expand.register(P.Project, _row_stage)
_expand.register(P.Filter, _row_stage)
_expand.register(P.Explode, _row_stage)


def _gather(plan: P.Limit | P.Sort, c: Compiler) -> beam.PCollection:
    child = c.expand(plan.inputs()[0])
    if isinstance(plan, P.Limit):
        n = plan.n
        child = child | c.label("LocalLimit") >> beam.Map(
            lambda kb: (kb[0], kb[1].slice(0, n))).with_output_types(KeyedBatch)
    return (child | c.label("ToOne") >> beam.Map(lambda kb: (0, kb))
            | c.label("Gather") >> beam.GroupByKey()
            | c.label("Global") >> beam.ParDo(_GatherFn(plan, plan.schema.to_arrow(),
                                                        c.options.batch_rows)))


_expand.register(udf_stage.UdfApply, udf_stage.expand_udf_apply)
_expand.register(P.Limit, _gather)
_expand.register(P.Sort, _gather)


@_expand.register
def _(plan: P.Join, c: Compiler) -> beam.PCollection:
    if operators.broadcast_right(plan, c.options):
        right = c.expand(plan.right)
        return c.expand(plan.left) | c.label("BroadcastJoin") >> beam.ParDo(
            _BroadcastJoinFn(plan), right_batches=beam.pvalue.AsList(right))
    parts = c.options.num_partitions
    left = c.expand(plan.left) | c.label("HashLeft") >> beam.ParDo(
        _PartitionFn(plan.left_on, parts, c.shuffle_dir()))
    right = c.expand(plan.right) | c.label("HashRight") >> beam.ParDo(
        _PartitionFn(plan.right_on, parts, c.shuffle_dir()))
    return ({"l": left, "r": right} | c.label("CoGroup") >> beam.CoGroupByKey()
            | c.label("Join") >> beam.ParDo(_JoinFn(plan)))


@_expand.register
def _(plan: P.Aggregate, c: Compiler) -> beam.PCollection:
    child = c.expand(plan.child)
    parts = c.options.num_partitions if plan.keys else 1
    hashed = child | c.label("PartialAgg") >> beam.ParDo(
        _PartialAggregateFn(plan, parts, c.shuffle_dir()))
    return (hashed
            | c.label("GroupAgg") >> beam.GroupByKey()
            | c.label("Aggregate") >> beam.ParDo(_AggregateFn(plan)))


@_expand.register
def _(plan: P.Distinct, c: Compiler) -> beam.PCollection:
    child = c.expand(plan.child)
    cols = plan.on or tuple(plan.child.schema.names())
    return (child | c.label("HashDistinct") >> beam.ParDo(
        _PartitionFn(cols, c.options.num_partitions, c.shuffle_dir()))
            | c.label("GroupDistinct") >> beam.GroupByKey()
            | c.label("Distinct") >> beam.ParDo(_DistinctFn(plan, plan.schema.to_arrow())))


# -- running ------------------------------------------------------------------------------------
def _pipeline_of(plan: P.Plan) -> beam.Pipeline | None:
    found = {id(n.pcoll.pipeline): n.pcoll.pipeline for n in P.walk(plan)
             if isinstance(n, P.FromPCollection)}
    if len(found) > 1:
        raise UnsupportedError("a frame can only read PCollections of one pipeline")
    return next(iter(found.values()), None)


def _unwrap(exc: BaseException) -> BaseException:
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, MmbeamError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return exc


def run_plan(plan: P.Plan, options: ExecOptions | None = None, tail: Any = None,
             schema: pa.Schema | None = None) -> tuple[pa.Table, dict]:
    """Run an (optimized) plan as a Beam pipeline on the context's runner; the result table and
    error counts (:func:`mmbeam.frame.inprocess.run` decides which path a plan takes).

    ``tail`` (PCollection -> PCollection of keyed batches with ``schema``) adds a last stage.
    """
    from mmbeam.frame import context

    options = options or context.get_context().exec_options
    folder = tempfile.mkdtemp(prefix="mmbeam-collect-")
    compiler = None
    try:
        pipeline = _pipeline_of(plan) or beam.Pipeline(runner=context.get_runner(),
                                                       options=context.pipeline_options())
        ctx = context.get_context()
        files = _pipeline_of(plan) is None and options.use_shuffle_files(ctx.runner_name)
        in_process = (_pipeline_of(plan) is None and ctx.runner_name == "local"
                      and ctx.pipeline_flags.get("direct_running_mode") != "multi_processing")
        compiler = Compiler(pipeline, options, staging=folder + "-stage", shuffle_files=files,
                            in_process=in_process)
        out = compiler.expand(plan)
        if tail is not None:
            out = tail(out)
        _ = out | "Collect" >> beam.ParDo(_WriteIpcFn(folder))
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as exc:  # noqa: BLE001 - re-raised as the mmbeam error inside
            inner = _unwrap(exc)
            if inner is exc:
                raise
            raise inner from exc
        counts = _null_counts(result)
        names = sorted(os.listdir(folder), key=lambda n: tuple(
            int(k) for k in n.split(".")[0].split("-")))
        check_collected(result, len(names))
        batches = []
        for name in names:
            with pa.memory_map(os.path.join(folder, name)) as src:
                batches.extend(pa.ipc.open_file(src).read_all().to_batches())
        schema = schema if schema is not None else plan.schema.to_arrow()
        table = pa.Table.from_batches([b for b in batches if b.num_rows] or [_empty_batch(schema)])
        return table, counts
    finally:
        if compiler is not None:
            compiler.release()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(folder + "-stage", ignore_errors=True)


COLLECTED_FILES = "collect.files"


def check_collected(result: Any, found: int) -> None:
    """Fail, rather than return too few rows, when the workers wrote result files that this
    process cannot see (a cluster runner whose workers do not share this machine's disk)."""
    try:
        query = result.metrics().query(MetricsFilter().with_name(COLLECTED_FILES))
        written = sum(int(m.committed or m.attempted or 0) for m in query["counters"])
    except Exception:  # noqa: BLE001 - metrics are best effort on some runners
        return
    if written > found:
        raise UnsupportedError(
            f"the runner's workers wrote {written} result file(s) but only {found} are visible "
            "to this process: collect()/show()/to_*()/write_*() need workers that share this "
            "machine's disk (in-process, PortableRunner with LOOPBACK, local Dask/Ray); on a "
            "cluster use frame.to_pcollection(pipeline) with a sink (see docs/runners.md)")


def _null_counts(result: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        for m in result.metrics().query()["counters"]:
            if m.key.metric.namespace == "mmbeam" and m.key.metric.name.endswith(".nulled"):
                op = m.key.metric.name[: -len(".nulled")]
                counts[op] = counts.get(op, 0) + int(m.committed or m.attempted or 0)
    except Exception:  # noqa: BLE001 - metrics are best effort on some runners
        return counts
    for op, n in counts.items():
        if n:
            log.warning("%s: %d row(s) set to null by on_error='null'", op, n)
    return counts


def expand_rows(plan: P.Plan, pipeline: beam.Pipeline, batches: bool = False,
                options: ExecOptions | None = None) -> beam.PCollection:
    """The plan's rows as a PCollection in ``pipeline`` (dicts, or RecordBatches)."""
    from mmbeam.frame import context

    options = options or context.get_context().exec_options
    compiler = Compiler(pipeline, options)
    out = compiler.expand(plan)
    if batches:
        return out | compiler.label("Batches") >> beam.Map(lambda kb: kb[1])
    return out | compiler.label("Rows") >> beam.FlatMap(_batches_to_rows)


class _WriteFilesFn(beam.DoFn):
    def __init__(self, spec: Any):
        self._spec = spec

    def process(self, element):
        from mmbeam.io.writers import write_table

        key, batch = element
        paths = write_table(_table(batch), self._spec)
        yield key, pa.record_batch({"path": pa.array(paths, pa.large_string())})


def run_write(plan: P.Plan, spec: Any) -> pa.Table:
    """Run an (optimized) ``plan`` as a Beam pipeline writing its batches as files; the table of
    written paths."""
    schema = pa.schema([("path", pa.large_string())])
    table, _ = run_plan(plan, tail=lambda pc: pc | "Write" >> beam.ParDo(
        _WriteFilesFn(spec)).with_output_types(KeyedBatch), schema=schema)
    return table
