"""Compile an optimized plan to Beam transforms over Arrow record batches.

Every PCollection here holds ``(key, pyarrow.RecordBatch)`` pairs. ``key`` is a tuple of ints
that orders batches (source file, batch number ...) so collected rows come back in source
order. Per-row work (projections, filters, explodes) runs as one DoFn per stage; joins,
group-bys and distinct hash-partition batches and shuffle them with GroupByKey /
CoGroupByKey, then work inside each partition with Arrow. Every stage emits at least one batch
(possibly empty) when its input had one, so global aggregates see empty inputs too.
"""

from __future__ import annotations

import time
import uuid
from functools import singledispatch
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.errors import UnsupportedError
from mmbeam.exec import operators, physical
from mmbeam.exec.arrow import as_table as _table
from mmbeam.exec.arrow import column_to_arrow, empty_batch, to_batch
from mmbeam.exec.arrow import concat_tables as _concat
from mmbeam.exec.beam import udf_stage
from mmbeam.exec.beam.channel import Channel, held, hold
from mmbeam.exec.evaluate import EvalContext
from mmbeam.exec.failures import FAILURE_KEY, FAILURES
from mmbeam.exec.metrics import OperatorCounters, operator_kind, unique_name
from mmbeam.exec.options import ExecOptions
from mmbeam.io.writers import write_table
from mmbeam.plan import nodes as P
from mmbeam.plan.udfs import UdfApply, split_udfs
from mmbeam.transforms.coders import KeyedBatch
from mmbeam.types import DataType, normalize_table

__all__ = ["Compiler", "expand_rows"]


# -- DoFns --------------------------------------------------------------------------------------
class _SliceTableFn(beam.DoFn):
    """Emit slice ``i`` of an in-memory table, found through its channel's source (inline Arrow
    IPC, a table held in this process, an engine object, or a file under --temp_location)."""

    def __init__(self, source: Any, rows: int, name: str = "InMemory"):
        self._source = source
        self._rows = rows
        self._name = name

    def setup(self):
        self._loaded = None
        self._metrics = OperatorCounters(self._name)

    def process(self, i: int):
        started = time.perf_counter()
        if self._loaded is None:  # read when first needed: engine values arrive with the task
            self._loaded = self._source.load()
        start = i * self._rows  # clamped: a table without columns does not clamp its slices
        batch = to_batch(self._loaded.slice(start, min(self._rows, self._loaded.num_rows - start)))
        self._metrics.update(rows_in=batch.num_rows, rows_out=batch.num_rows,
                             seconds=time.perf_counter() - started, held_bytes=batch.nbytes)
        yield (i,), batch


class _ScanFn(beam.DoFn):
    """Read one scan task (a file) as batches, applying the scan's filter, columns and limit."""

    def __init__(self, scan: P.Scan, rows: int, name: str = "Scan"):
        self._scan = scan
        self._rows = rows
        self._name = name

    def setup(self):
        self._metrics = OperatorCounters(self._name)

    def process(self, task: tuple[int, Any]):
        index, spec = task
        started = time.perf_counter()
        for key, table in operators.scan_task(self._scan, index, spec, self._rows):
            self._metrics.update(rows_in=table.num_rows, rows_out=table.num_rows,
                                 seconds=time.perf_counter() - started, held_bytes=table.nbytes)
            yield key, to_batch(table)
            started = time.perf_counter()


class _RowStageFn(beam.DoFn):
    """Projections, filters and explodes of one stage, fused over each batch.

    A stage with URL/image work cuts its input into sub-batches: ``sub_rows`` of them, or with
    ``sub_rows="auto"`` as many as :func:`operators.multimodal_sizer` picks, reported as the
    ``multimodal_batch_rows`` distribution metric and in ``explain()`` after a run.
    """

    def __init__(self, ops: list[tuple[str, Any]], sub_rows: int | str | None,
                 schema: pa.Schema, name: str = "Project", capture: Any = None):
        self._ops = ops
        self._sub_rows = sub_rows
        self._schema = schema
        self._name = name
        self._capture = capture  # failure-capturing mode: failed rows to the FAILURES output

    def setup(self):
        self._chains: dict = {}  # the fused URL/image chains, kept (and learning) across batches
        self._sizer = None
        self._metrics = OperatorCounters(self._name)
        if self._sub_rows == "auto":
            self._sizer = operators.multimodal_sizer(None)
            self._size_metric = beam.metrics.Metrics.distribution(
                "mmbeam", "multimodal_batch_rows")

    def _run(self, table: pa.Table, ctx: EvalContext) -> tuple[pa.Table, dict]:
        """The stage's ops over ``table`` and what they did (for the operator's counters, which
        only count when updated on the bundle's own thread)."""
        started = time.perf_counter()
        before, failed = ctx.stages.total("nulls"), len(ctx.failed)
        out = operators.run_row_ops(table, self._ops, ctx)
        nulled = ctx.stages.total("nulls") - before
        failures = nulled if self._capture is None else sum(
            t.num_rows for t in ctx.failed[failed:])
        return out, {"rows_in": table.num_rows, "rows_out": out.num_rows, "nulls": nulled,
                     "failures": failures, "seconds": time.perf_counter() - started,
                     "held_bytes": table.nbytes + out.nbytes}

    def _run_part(self, item: tuple[pa.Table, EvalContext]) \
            -> tuple[pa.Table, EvalContext, dict]:
        """One sub-batch (measured for the autotuner), the context it counted nulls in and
        what it did."""
        part, sub = item
        if self._sizer is None:
            out, done = self._run(part, sub)
            return out, sub, done
        with self._sizer.measure(part.num_rows) as cost:
            out, done = self._run(part, sub)
            cost.output_bytes = out.nbytes
        return out, sub, done

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
        ctx = EvalContext(self._chains, self._capture)
        if self._sub_rows is None or (self._sizer is None and table.num_rows <= self._sub_rows):
            out, done = self._run(table, ctx)
            self._metrics.update(**done)
            yield key, to_batch(out)
        else:
            # two sub-batches at once: the next one fills the kernel's window while one drains
            parts = ((table.slice(start, size), EvalContext(ctx.chains, self._capture))
                     for start, size in self._slices(table.num_rows))  # chains shared
            for j, (out, sub, done) in enumerate(operators.in_order(self._run_part, parts, 2)):
                self._metrics.update(**done)
                ctx.stages.add(sub.stages)
                ctx.failed.extend(sub.failed)
                yield key + (j,), to_batch(out)
        # the URL/image stages' counters, as the transforms report them (namespace: the stage)
        for stage, counts in ctx.stages.items():
            for name, count in counts.items():
                if count:
                    beam.metrics.Metrics.counter(stage, name).inc(count)
        for j, failed in enumerate(ctx.failed):
            yield beam.pvalue.TaggedOutput(FAILURES, ((FAILURE_KEY,) + key + (j,),
                                                      to_batch(failed)))


#: rows per piece when spreading a batch over a cluster's workers before per-row work: an eighth
#: of the batch, within these bounds (small pieces balance, big ones keep each kernel's window
#: of rows in flight full)
SPREAD_ROWS = (64, 1024)


class _SplitFn(beam.DoFn):
    """Cut each batch into pieces of an eighth of it (within ``bounds`` rows), keyed
    ``key + (piece,)``."""

    def __init__(self, bounds: tuple[int, int]):
        self._bounds = bounds

    def process(self, element):
        key, batch = element
        low, high = self._bounds
        rows = min(high, max(low, -(-batch.num_rows // 8)))
        if batch.num_rows <= rows:
            yield key + (0,), batch
            return
        for j, start in enumerate(range(0, batch.num_rows, rows)):
            yield key + (j,), batch.slice(start, rows)


class _PartitionFn(beam.DoFn):
    """Hash-partition a batch; with ``hold_prefix`` (workers in this process), hold each part in
    this process and emit its key (shuffle by reference) instead of the batch itself."""

    def __init__(self, columns: tuple[str, ...], parts: int, hold_prefix: str | None = None):
        self._columns = columns
        self._parts = parts
        self._hold = hold_prefix
        self.with_output_types(tuple[int, pa.RecordBatch if hold_prefix is None else str])

    def process(self, element):
        _, batch = element
        yield from self._emit(_table(batch))

    def _emit(self, table: pa.Table):
        for pid, part in physical.partition_table(table, self._columns, self._parts):
            if self._hold is None:
                yield pid, to_batch(part)
            else:
                yield pid, hold(self._hold, part)


class _PartialAggregateFn(_PartitionFn):
    """Combiner lifting: partial aggregates of every batch of a bundle, merged and
    hash-partitioned once in ``finish_bundle``, so the shuffle moves one row per group and
    bundle instead of every input row."""

    MERGE_EVERY = 16

    def __init__(self, agg: P.Aggregate, parts: int, hold_prefix: str | None = None,
                 name: str = "Aggregate"):
        super().__init__(tuple(agg.keys) or (physical.GLOBAL_KEY,), parts, hold_prefix)
        self._name = name
        self._keys = agg.keys
        self._aggs = agg.aggs

    def setup(self):
        self._metrics = OperatorCounters(self._name)

    def start_bundle(self):
        self._partials: list[pa.Table] = []

    def process(self, element):
        _, batch = element
        self._metrics.update(rows_in=batch.num_rows)
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


def _measured(fn: beam.DoFn, rows_in: int, out: pa.Table, started: float, held: int) -> None:
    """Count a blocking operator's work in its Beam counters (made on first use)."""
    counters = getattr(fn, "_metrics", None)
    if counters is None:
        counters = fn._metrics = OperatorCounters(fn._name)
    counters.update(rows_in=rows_in, rows_out=out.num_rows,
                    seconds=time.perf_counter() - started, held_bytes=held + out.nbytes)


def _load(item: Any) -> pa.Table | pa.RecordBatch:
    """A shuffled batch, or the part held in this process under that key."""
    return held(item) if isinstance(item, str) else item


class _JoinFn(beam.DoFn):
    """Join the left and right batches of one hash partition (holds no plan, only the spec)."""

    def __init__(self, join: P.Join, name: str = "Join"):
        self._name = name
        self._spec = (join.left_on, join.right_on, join.how, join.prefix)
        self._lschema = join.left.schema.to_arrow()
        self._rschema = join.right.schema.to_arrow()
        self._out = join.schema

    def process(self, element):
        pid, groups = element
        left_on, right_on, how, prefix = self._spec
        started = time.perf_counter()
        left = _concat([_load(b) for b in groups["l"]], self._lschema)
        right = _concat([_load(b) for b in groups["r"]], self._rschema)
        out = physical.join_tables(left, right, left_on, right_on, how, self._out, prefix)
        _measured(self, left.num_rows + right.num_rows, out, started, left.nbytes + right.nbytes)
        yield (pid,), to_batch(out)


class _BroadcastJoinFn(_JoinFn):
    """Join each left batch with the whole (small) right side, given as a side input: no
    shuffle of the big side. Only for joins that never emit unmatched right rows."""

    def setup(self):
        super().setup()
        self._right: pa.Table | None = None

    def process(self, element, right_batches):
        key, batch = element
        left_on, right_on, how, prefix = self._spec
        if self._right is None:  # the side input of the global window is the same every call
            self._right = _concat([b for _, b in right_batches], self._rschema)
        started = time.perf_counter()
        out = physical.join_tables(_table(batch), self._right, left_on, right_on, how,
                                   self._out, prefix)
        _measured(self, batch.num_rows, out, started, batch.nbytes + self._right.nbytes)
        yield key, to_batch(out)


class _AggregateFn(beam.DoFn):
    """Merge the partial aggregates of one hash partition into the final rows."""

    def __init__(self, agg: P.Aggregate, name: str = "Aggregate"):
        self._name = name
        self._keys = agg.keys
        self._aggs = agg.aggs
        empty = pa.Table.from_batches([empty_batch(agg.child.schema.to_arrow())])
        self._schema = physical.partial_aggregate(empty, agg.keys, agg.aggs).schema
        self._out = agg.schema

    def process(self, element):
        pid, batches = element
        started = time.perf_counter()
        partials = _concat([_load(b) for b in batches], self._schema)
        out = physical.finish_aggregate(partials, self._keys, self._aggs, self._out)
        _measured(self, 0, out, started, partials.nbytes)
        yield (pid,), to_batch(out)


class _GatherFn(beam.DoFn):
    """All batches of a gathered stage, in key order: global limit or sort."""

    def __init__(self, node: P.Plan, schema: pa.Schema, rows: int, name: str = "Gather"):
        self._name = name
        if isinstance(node, P.Limit):
            self._limit, self._sort = node.n, None
        else:
            self._limit, self._sort = None, (node.by, node.descending, node.nulls_first)
        self._schema = schema
        self._rows = rows

    def process(self, element):
        _, keyed = element
        started = time.perf_counter()
        batches = [b for _, b in sorted(keyed, key=lambda kb: kb[0])]
        whole = _concat(batches, self._schema)
        if self._limit is not None:
            table = whole.slice(0, self._limit)
        else:
            table = physical.sort_table(whole, *self._sort)
        _measured(self, whole.num_rows, table, started, whole.nbytes)
        if table.num_rows == 0:
            yield (0,), empty_batch(self._schema)
        for i, start in enumerate(range(0, table.num_rows, self._rows)):
            yield (i,), to_batch(table.slice(start, self._rows))


class _DistinctFn(beam.DoFn):
    def __init__(self, node: P.Distinct, schema: pa.Schema, name: str = "Distinct"):
        self._name = name
        self._on = node.on
        self._schema = schema

    def process(self, element):
        pid, batches = element
        started = time.perf_counter()
        table = _concat([_load(b) for b in batches], self._schema)
        out = physical.distinct_table(table, self._on)
        _measured(self, table.num_rows, out, started, table.nbytes)
        yield (pid,), to_batch(out)


class _RowsToBatchFn(beam.DoFn):
    """Dict rows (or record batches) from a user's PCollection to batches of ``schema``."""

    def __init__(self, schema: pa.Schema):
        self._schema = schema

    def process(self, rows):
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
    cols = [column_to_arrow([r.get(f.name) for r in rows], DataType.from_arrow(f.type))
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _batches_to_rows(element):
    _, batch = element
    yield from batch.to_pylist()


# -- plan -> PCollection ------------------------------------------------------------------------
class Compiler:
    """Expands plan nodes into a pipeline; each node is expanded once. In-memory tables reach
    the workers through ``channel`` (see :mod:`mmbeam.exec.beam.channel`)."""

    def __init__(self, pipeline: beam.Pipeline, options: ExecOptions, channel: Channel,
                 capture: Any = None):
        self.pipeline = pipeline
        #: failure-capturing mode (a FailureCapture) and the failed-row outputs of the stages
        self.capture = capture
        self.failures: list[beam.PCollection] = []
        self.options = options
        self.channel = channel
        self._by_reference = options.shuffle_by_reference(channel.in_process)
        self._count = 0
        # several frames may expand into one user pipeline: keep their labels apart
        frames = getattr(pipeline, "_mmbeam_frames", 0) + 1
        pipeline._mmbeam_frames = frames
        self.prefix = "" if frames == 1 else f"Frame{frames}/"
        self._prepared = False
        #: the operators' names, each the namespace of its Beam counters (exec.metrics)
        self.operators: list[str] = []

    def operator(self, plan: P.Plan) -> str:
        """A new operator's unique name (its metrics' namespace)."""
        name = unique_name(operator_kind(plan), self.operators)
        self.operators.append(name)
        return name

    def hold_prefix(self) -> str | None:
        """Where hash partitions are held when shuffled by reference (None: by value)."""
        return self.channel.token if self._by_reference else None

    def spread(self, pcoll: beam.PCollection) -> beam.PCollection:
        """``pcoll``'s batches cut into pieces (see :data:`SPREAD_ROWS`) and redistributed,
        before slow per-row work (URL/image functions, UDFs), so a cluster runs it on all its
        workers even when the source is one file or one table; a no-op when the workers are in
        this process. Keys grow by the piece's index, so row order is kept."""
        if self.channel.in_process:
            return pcoll
        return (pcoll | self.label("Split") >> beam.ParDo(_SplitFn(SPREAD_ROWS))
                .with_output_types(KeyedBatch)
                | self.label("Spread") >> beam.Reshuffle().with_output_types(KeyedBatch))

    def capturing(self, pcoll_or_tuple: Any) -> beam.PCollection:
        """The main output of a stage; its failed rows join :attr:`failures` (when capturing,
        the stage was applied ``with_outputs(FAILURES, main="main")``)."""
        if self.capture is None:
            return pcoll_or_tuple
        main, failed = pcoll_or_tuple.main, pcoll_or_tuple[FAILURES]
        main.element_type = failed.element_type = KeyedBatch
        self.failures.append(failed)
        return main

    def stage(self, fn: beam.DoFn) -> Any:
        """``ParDo(fn)``, with a failed-rows output when capturing."""
        pardo = beam.ParDo(fn)
        if self.capture is not None:
            return pardo.with_outputs(FAILURES, main="main")
        return pardo.with_output_types(KeyedBatch)

    def label(self, what: str) -> str:
        """A unique transform label for ``what``."""
        self._count += 1
        return f"{self.prefix}{what}{self._count}"

    def expand(self, plan: P.Plan) -> beam.PCollection:
        """The plan as Beam transforms; its result PCollection of batches."""
        if not self._prepared:  # once, at the root: UDF calls become their own stages
            self._prepared = True
            plan = split_udfs(plan)
        out = _expand(plan, self)
        out.element_type = KeyedBatch  # what every stage emits; Beam codes it with Arrow IPC
        return out


@singledispatch
def _expand(plan: P.Plan, c: Compiler) -> beam.PCollection:
    raise UnsupportedError(f"the Beam compiler has no rule for {type(plan).__name__}")


@_expand.register
def _(plan: P.InMemory, c: Compiler) -> beam.PCollection:
    rows = c.options.batch_rows
    n = max(1, -(-plan.table.num_rows // rows))
    create, slice_label = c.label("Create"), c.label("Slice")
    fn = _SliceTableFn(c.channel.table_source(plan.table, slice_label), rows, c.operator(plan))
    return (c.pipeline | create >> beam.Create(list(range(n)))
            | slice_label >> beam.ParDo(fn).with_output_types(KeyedBatch))


@_expand.register
def _(plan: P.Scan, c: Compiler) -> beam.PCollection:
    return (c.pipeline | c.label("ScanTasks") >> beam.Create(operators.scan_tasks(plan))
            | c.label("Scan") >> beam.ParDo(_ScanFn(plan, c.options.batch_rows,
                                                    c.operator(plan)))
            .with_output_types(KeyedBatch))


@_expand.register
def _(plan: P.FromPCollection, c: Compiler) -> beam.PCollection:
    return (plan.pcoll | c.label("Batch") >> beam.BatchElements(min_batch_size=1024,
                                                                 max_batch_size=65536)
            | c.label("ToArrow") >> beam.ParDo(_RowsToBatchFn(plan.schema.to_arrow())))


def _row_stage(plan: P.Plan, c: Compiler) -> beam.PCollection:
    ops, node, multimodal = operators.row_ops(plan)
    source = c.expand(node)
    if multimodal:
        source = c.spread(source)
    sub = (c.options.multimodal_batch_rows or "auto") if multimodal else None
    fn = _RowStageFn(ops, sub, plan.schema.to_arrow(), c.operator(plan), c.capture)
    return c.capturing(source | c.label("Stage") >> c.stage(fn))


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
                                                        c.options.batch_rows,
                                                        c.operator(plan))))


_expand.register(UdfApply, udf_stage.expand_udf_apply)
_expand.register(P.Limit, _gather)
_expand.register(P.Sort, _gather)


@_expand.register
def _(plan: P.Join, c: Compiler) -> beam.PCollection:
    if operators.broadcast_right(plan, c.options):
        right = c.expand(plan.right)
        return c.expand(plan.left) | c.label("BroadcastJoin") >> beam.ParDo(
            _BroadcastJoinFn(plan, c.operator(plan)), right_batches=beam.pvalue.AsList(right))
    parts = c.options.num_partitions
    left = c.expand(plan.left) | c.label("HashLeft") >> beam.ParDo(
        _PartitionFn(plan.left_on, parts, c.hold_prefix()))
    right = c.expand(plan.right) | c.label("HashRight") >> beam.ParDo(
        _PartitionFn(plan.right_on, parts, c.hold_prefix()))
    return ({"l": left, "r": right} | c.label("CoGroup") >> beam.CoGroupByKey()
            | c.label("Join") >> beam.ParDo(_JoinFn(plan, c.operator(plan))))


@_expand.register
def _(plan: P.Aggregate, c: Compiler) -> beam.PCollection:
    child = c.expand(plan.child)
    parts = c.options.num_partitions if plan.keys else 1
    name = c.operator(plan)
    hashed = child | c.label("PartialAgg") >> beam.ParDo(
        _PartialAggregateFn(plan, parts, c.hold_prefix(), name))
    return (hashed
            | c.label("GroupAgg") >> beam.GroupByKey()
            | c.label("Aggregate") >> beam.ParDo(_AggregateFn(plan, name)))


@_expand.register
def _(plan: P.Distinct, c: Compiler) -> beam.PCollection:
    child = c.expand(plan.child)
    cols = plan.on or tuple(plan.child.schema.names())
    return (child | c.label("HashDistinct") >> beam.ParDo(
        _PartitionFn(cols, c.options.num_partitions, c.hold_prefix()))
            | c.label("GroupDistinct") >> beam.GroupByKey()
            | c.label("Distinct") >> beam.ParDo(_DistinctFn(plan, plan.schema.to_arrow(),
                                                          c.operator(plan))))


# -- a frame inside a user's pipeline ---------------------------------------------------------
def expand_rows(plan: P.Plan, pipeline: beam.Pipeline, options: ExecOptions,
                batches: bool = False) -> beam.PCollection:
    """The plan's rows as a PCollection in ``pipeline`` (dicts, or RecordBatches); its tables
    travel inline, or through the engine on mmbeam's runners."""
    from mmbeam.exec.beam.channel import input_channel_for

    compiler = Compiler(pipeline, options, input_channel_for(pipeline))
    out = compiler.expand(plan)
    if batches:
        return out | compiler.label("Batches") >> beam.Map(lambda kb: kb[1])
    return out | compiler.label("Rows") >> beam.FlatMap(_batches_to_rows)


class WriteFilesFn(beam.DoFn):
    """Write each keyed batch as files (a :class:`~mmbeam.io.writers.WriteSpec`); emit the
    batch of written paths under the same key."""

    def __init__(self, spec: Any):
        self._spec = spec

    def process(self, element):
        key, batch = element
        paths = write_table(_table(batch), self._spec)
        yield key, pa.record_batch({"path": pa.array(paths, pa.large_string())})
