"""The immutable, lazy ``Frame``: every method returns a new frame over a bigger plan.

Nothing runs until ``show``, ``collect``, ``count_rows``, ``to_*`` or ``write_*``. Each method
checks its columns and types against the schema at once (SchemaError before anything runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from difflib import get_close_matches
from typing import Any

import pyarrow as pa

from mmbeam.errors import ConfigError, UnsupportedError
from mmbeam.exec.base import Collect, Outcome, WriteFiles
from mmbeam.exec.failures import FailureCapture
from mmbeam.expr import ir
from mmbeam.expr.expr import Expr, col, lit, suggest_attribute
from mmbeam.frame.context import get_context
from mmbeam.frame.display import Preview, render_text
from mmbeam.frame.iterators import (
    column_values,
    iter_batches,
    iter_rows,
    iter_torch_batches,
    table_to_pandas,
)
from mmbeam.io.writers import WriteSpec, write_table
from mmbeam.plan import nodes as P
from mmbeam.plan.optimizer import optimize
from mmbeam.types import DataType, Schema

__all__ = ["Frame", "GroupedFrame"]

ColumnLike = str | Expr


def _node(value: ColumnLike) -> ir.Node:
    if isinstance(value, Expr):
        return value._node
    if isinstance(value, str):
        return ir.Column(value)
    raise ConfigError(f"expected a column name or an expression, got {value!r}")


def _flatten(args: tuple) -> list:
    out: list = []
    for a in args:
        if isinstance(a, (list, tuple)) and not (isinstance(a, tuple) and len(a) == 2 and
                                                  isinstance(a[1], str) and a[1] in ir.AGG_OPS):
            out.extend(a)
        else:
            out.append(a)
    return out


def _column_name(value: ColumnLike, what: str) -> str:
    node = _node(value)
    if isinstance(node, ir.Column):
        return node.name
    raise UnsupportedError(f"{what} takes column names for now; add the expression as a column "
                           f"with with_column() first, then use its name")


class Frame:
    """A lazy table of rows. Build with ``mmbeam.from_pydict``, ``read_parquet`` ..."""

    def __init__(self, plan: P.Plan, capture: FailureCapture | None = None):
        plan.schema  # noqa: B018 - validate now, before anything runs
        self._plan = plan
        self._capture = capture
        self._result: pa.Table | None = None
        self._counts: dict[str, int] = {}
        self._stages: dict[str, dict[str, int]] = {}
        self._metrics: pa.Table | None = None
        self._failures: pa.Table | None = None

    # -- schema ---------------------------------------------------------------------------------
    def schema(self) -> Schema:
        """Column names and types (known without running anything)."""
        return self._plan.schema

    @property
    def column_names(self) -> list[str]:
        """The column names, in order."""
        return self._plan.schema.names()

    @property
    def columns(self) -> list[Expr]:
        """An expression per column."""
        return [col(n) for n in self.column_names]

    def _derive(self, plan: P.Plan) -> Frame:
        return Frame(plan, self._capture)

    # -- failed rows ----------------------------------------------------------------------------
    def with_exception_handling(self, columns: Sequence[str] | None = None) -> Frame:
        """This frame in failure-capturing mode (Beam's ``with_exception_handling``): a row that
        a function (URL/image function, cast, UDF) fails on goes to the run's failures table
        instead of raising, and leaves the output; ``on_error="null"`` functions null the value
        and record the failure too. After a run, :attr:`failures` holds one row per failure:
        ``columns`` (default: the failing stage's non-image, non-binary input columns),
        ``stage``, ``error_type``, ``error``, ``attempts`` (see :mod:`mmbeam.exec.failures`)."""
        names = None
        if columns is not None:
            names = (columns,) if isinstance(columns, str) else tuple(columns)
            for name in names:
                self._plan.schema[name]  # unknown names fail here with a suggestion
        return Frame(self._plan, FailureCapture(names))

    @property
    def failures(self) -> Frame | None:
        """The failures table of this frame's last run in failure-capturing mode (a Frame; see
        :meth:`with_exception_handling`); None before a run, or when not capturing."""
        return None if self._failures is None else Frame(P.InMemory(self._failures))

    # -- projections ----------------------------------------------------------------------------
    def select(self, *columns: ColumnLike) -> Frame:
        """Only these columns or expressions, in this order."""
        nodes = [_node(c) for c in _flatten(columns)]
        if not nodes:
            raise ConfigError("select() needs at least one column")
        return self._derive(P.Project(self._plan, tuple(_aliased(n) for n in nodes)))

    def with_column(self, name: str, expr: Expr | Any) -> Frame:
        """This frame plus (or with a replaced) column ``name`` computed by ``expr``."""
        return self.with_columns({name: expr})

    def with_columns(self, columns: Mapping[str, Expr | Any]) -> Frame:
        """This frame plus several new or replaced columns."""
        new = {str(k): ir.Alias(_strip_alias((v if isinstance(v, Expr) else lit(v))._node),
                                str(k)) for k, v in columns.items()}
        exprs = [new.pop(n) if n in new else ir.Column(n) for n in self.column_names]
        exprs.extend(new.values())
        return self._derive(P.Project(self._plan, tuple(exprs)))

    def exclude(self, *names: str) -> Frame:
        """All columns but ``names``."""
        names_list = _flatten(names)
        for n in names_list:
            self._plan.schema[n]  # unknown names fail here with a suggestion
        keep = [ir.Column(n) for n in self.column_names if n not in names_list]
        return self._derive(P.Project(self._plan, tuple(keep)))

    def with_column_renamed(self, existing: str, new: str) -> Frame:
        """A frame with column ``existing`` renamed to ``new``."""
        self._plan.schema[existing]
        return self._derive(P.Project(self._plan, tuple(
            ir.Alias(ir.Column(n), new) if n == existing else ir.Column(n)
            for n in self.column_names)))

    # -- rows -----------------------------------------------------------------------------------
    def where(self, predicate: Expr) -> Frame:
        """Rows where ``predicate`` is true (null counts as false)."""
        if not isinstance(predicate, Expr):
            raise ConfigError(f"where() takes a Boolean expression, got {predicate!r}")
        return self._derive(P.Filter(self._plan, predicate._node))

    filter = where

    def limit(self, n: int) -> Frame:
        """The first ``n`` rows."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"limit() takes a non-negative integer, not {n!r}")
        return self._derive(P.Limit(self._plan, n))

    def sort(self, by: ColumnLike | Sequence[ColumnLike], desc: bool | Sequence[bool] = False,
             nulls_first: bool | None = None) -> Frame:
        """Rows ordered by ``by`` (nulls last, or first with ``nulls_first=True``)."""
        nodes = [_node(b) for b in (by if isinstance(by, (list, tuple)) else [by])]
        flags = list(desc) if isinstance(desc, (list, tuple)) else [bool(desc)] * len(nodes)
        if len(flags) != len(nodes):
            raise ConfigError(f"sort got {len(nodes)} keys but {len(flags)} desc flags")
        child, keys, hidden = self._plan, [], []
        for i, node in enumerate(nodes):  # an expression key sorts by a hidden column
            if isinstance(node, ir.Column):
                keys.append(node.name)
                continue
            name = f"__sort_key{i}"
            child = _with_hidden(child, name, node)
            keys.append(name)
            hidden.append(name)
        return self._derive(_drop_hidden(P.Sort(child, tuple(keys), tuple(map(bool, flags)),
                                                bool(nulls_first)), hidden))

    def distinct(self, *on: ColumnLike) -> Frame:
        """Unique rows (or the first row per distinct value of ``on``)."""
        cols = tuple(_column_name(c, "distinct") for c in _flatten(on)) or None
        return self._derive(P.Distinct(self._plan, cols))

    unique = distinct

    def explode(self, *columns: ColumnLike) -> Frame:
        """One row per element of the list columns ``columns``."""
        cols = tuple(_column_name(c, "explode") for c in _flatten(columns))
        if not cols:
            raise ConfigError("explode() needs at least one list column")
        return self._derive(P.Explode(self._plan, cols))

    def join(self, other: Frame, on: Any = None, left_on: Any = None, right_on: Any = None,
             how: str = "inner", prefix: str | None = None, suffix: str | None = None) -> Frame:
        """Equi-join with ``other``; ``how`` is inner, left, right, outer, semi or anti.

        Null keys never match (SQL). With ``on`` a key appears once; a right column whose name
        is taken is renamed ``right.<name>`` (or ``prefix``/``suffix``).
        """
        if not isinstance(other, Frame):
            raise ConfigError(f"join() takes another Frame, got {type(other).__name__}")
        if how not in P.JOIN_HOWS:
            near = get_close_matches(str(how), P.JOIN_HOWS, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"unknown join type {how!r}; use one of {P.JOIN_HOWS}.{hint}")
        if on is not None:
            if left_on is not None or right_on is not None:
                raise ConfigError("join() takes on= or left_on=/right_on=, not both")
            left_on = right_on = on
        if left_on is None or right_on is None:
            raise ConfigError("join() needs on= or both left_on= and right_on=")
        lk = [_node(c) for c in _listify(left_on)]
        rk = [_node(c) for c in _listify(right_on)]
        if len(lk) != len(rk) or not lk:
            raise ConfigError(f"join needs as many left keys as right keys, got "
                              f"{len(lk)} and {len(rk)}")
        if suffix is not None:
            raise UnsupportedError("join(suffix=) is not supported yet; use prefix=")
        # a key that is an expression on either side becomes a hidden column on both sides:
        # same name, so the join merges it, and it is dropped from the output
        left_plan, right_plan, lnames, rnames, hidden = self._plan, other._plan, [], [], []
        for i, (lnode, rnode) in enumerate(zip(lk, rk, strict=True)):
            if isinstance(lnode, ir.Column) and isinstance(rnode, ir.Column):
                lnames.append(lnode.name)
                rnames.append(rnode.name)
                continue
            name = f"__join_key{i}"
            left_plan = _with_hidden(left_plan, name, lnode)
            right_plan = _with_hidden(right_plan, name, rnode)
            lnames.append(name)
            rnames.append(name)
            hidden.append(name)
        joined: P.Plan = P.Join(left_plan, right_plan, tuple(lnames), tuple(rnames), how,
                                "right." if prefix is None else prefix)
        return self._derive(_drop_hidden(joined, hidden))

    def groupby(self, *keys: ColumnLike) -> GroupedFrame:
        """Group rows by ``keys``; follow with ``.agg(...)`` or ``.sum(...)`` etc."""
        nodes = [_node(k) for k in _flatten(keys)]
        exprs = {ir.output_name(n): _strip_alias(n) for n in nodes
                 if not isinstance(n, ir.Column)}
        for n in nodes:
            if isinstance(n, ir.Column):
                self._plan.schema[n.name]
        # an expression key (``col("a") % 2``) is computed as a column named like Daft names it
        frame = self.with_columns({k: Expr(v) for k, v in exprs.items()}) if exprs else self
        return GroupedFrame(frame, tuple(ir.output_name(n) for n in nodes))

    group_by = groupby

    def agg(self, *aggs: Any) -> Frame:
        """Aggregate the whole frame into one row."""
        return GroupedFrame(self, ()).agg(*aggs)

    def sum(self, *cols: ColumnLike) -> Frame:
        """The sum of each column (per group on a grouped frame)."""
        return self.agg(*[col(_column_name(c, "sum")).sum() for c in _flatten(cols)])

    def mean(self, *cols: ColumnLike) -> Frame:
        """The mean of each column (per group on a grouped frame)."""
        return self.agg(*[col(_column_name(c, "mean")).mean() for c in _flatten(cols)])

    def min(self, *cols: ColumnLike) -> Frame:
        """The smallest value of each column (per group on a grouped frame)."""
        return self.agg(*[col(_column_name(c, "min")).min() for c in _flatten(cols)])

    def max(self, *cols: ColumnLike) -> Frame:
        """The largest value of each column (per group on a grouped frame)."""
        return self.agg(*[col(_column_name(c, "max")).max() for c in _flatten(cols)])

    # -- running --------------------------------------------------------------------------------
    def _run(self) -> pa.Table:
        if self._result is None:
            outcome = get_context().executor().run(optimize(self._plan), Collect(), self._capture)
            self._result = outcome.table.select(self.column_names)
            self._ran(outcome)
        return self._result

    def _ran(self, outcome: Outcome) -> None:
        self._counts, self._stages = outcome.nulled, outcome.stages
        self._metrics, self._failures = outcome.metrics, outcome.failures

    @property
    def metrics(self) -> pa.Table | None:
        """The per-operator metrics of this frame's last run (``collect``, ``to_*``, ``write_*``
        or a finished or stopped iterator; on Dask and Ray a finished one), one row per
        operator: ``operator``, ``rows_in``, ``rows_out``, ``nulls``, ``failures``, ``seconds``,
        ``peak_bytes`` (see :mod:`mmbeam.exec.metrics`); None before any run."""
        return self._metrics

    def collect(self) -> Frame:
        """Run the plan and keep the rows (later calls reuse them); returns this frame."""
        self._run()
        return self

    @property
    def stage_metrics(self) -> dict[str, dict[str, int]]:
        """What each URL/image stage did in the run that gave this frame's rows (empty before
        it ran): ``{"Download": {"succeeded": 98, "failed": 2, "nulls": 2, "bytes": ...}}``,
        the counters the Beam transforms report as metrics (namespace: the stage)."""
        return {stage: dict(counts) for stage, counts in self._stages.items()}

    def is_materialized(self) -> bool:
        """True once the rows have been computed and kept."""
        return self._result is not None

    def count_rows(self) -> int:
        """Number of rows (reads only what counting needs)."""
        if self._result is not None:
            return self._result.num_rows
        cheap = _cheap_count(self._plan)
        if cheap is not None:
            return cheap
        agg = ir.Alias(ir.Agg("count_all", ir.Literal(1, _int64())), "count")
        table = Frame(P.Aggregate(self._plan, (), (agg,)))._run()
        return int(table.column("count")[0].as_py())

    def __len__(self) -> int:
        return self.count_rows()

    def show(self, n: int = 8) -> None:
        """Print the first ``n`` rows as a table (HTML with thumbnails in notebooks)."""
        preview = self._preview(n)
        if _in_notebook():
            from IPython.display import display  # only inside a notebook

            display(preview)
        else:
            print(repr(preview))

    def _preview(self, n: int) -> Preview:
        if self._result is not None:
            return Preview(self._result.slice(0, n), self.schema(), self._result.num_rows)
        rows = self.limit(n)._run()
        total = rows.num_rows if rows.num_rows < n else _cheap_count(self._plan)
        return Preview(rows, self.schema(), total)

    def explain(self, show_all: bool = False) -> None:
        """Print the plan and how the context's executor runs it (in this process, or a Beam
        pipeline on which runner); with ``show_all`` also the optimized plan and the stages."""
        opt = optimize(self._plan)
        text = "== Logical plan ==\n" + P.render(self._plan)
        if show_all:
            text += "\n\n== Optimized plan ==\n" + P.render(opt)
        print(text + "\n\n" + get_context().executor().explain(opt, show_all))

    def to_arrow(self) -> pa.Table:
        """The rows as an Arrow table (image columns use the ``mmbeam.image`` extension type)."""
        return self._run()

    def to_pydict(self) -> dict[str, list]:
        """``{column: values}``; image cells are numpy arrays."""
        table = self._run()
        return {n: column_values(table.column(n)) for n in table.column_names}

    def to_pylist(self) -> list[dict[str, Any]]:
        """A list of row dicts."""
        data = self.to_pydict()
        names = list(data)
        return [dict(zip(names, row, strict=True)) for row in zip(*data.values(), strict=True)]

    def _stream(self) -> Iterator[pa.Table]:
        """The rows as a stream of tables: the kept result's, or the executor's (which stops
        its work when the stream is closed)."""
        if self._result is not None:
            yield from (pa.Table.from_batches([b]) for b in self._result.to_batches())
            return
        names = self.column_names
        stream = get_context().executor().stream(optimize(self._plan), self._ran, self._capture)
        try:
            for table in stream:
                yield table.select(names)
        finally:
            stream.close()

    def iter_batches(self, batch_size: int | None = 256, batch_format: str = "arrow",
                     drop_last: bool = False) -> Iterator[Any]:
        """The rows in batches of ``batch_size`` (``None``: as they are computed), as they are
        computed: ``batch_format`` ``"arrow"`` (``pyarrow.Table``), ``"numpy"`` (dict of column
        → ndarray; images of one size stacked N×H×W×C) or ``"pandas"``. Stopping early stops
        the work. In row order, except on the Dask and Ray runners: there in the order their
        tasks finish (see :mod:`mmbeam.frame.iterators`)."""
        return iter_batches(self._stream(), batch_size, batch_format, drop_last)

    def iter_torch_batches(self, batch_size: int | None = 256, dtypes: Any = None,
                           device: Any = "cpu", drop_last: bool = False) -> Iterator[dict]:
        """Batches as ``{column: torch.Tensor}`` (Ray Data's ``iter_torch_batches``): numbers
        and images of one size become tensors (images uint8 N×H×W×C) of ``dtypes`` (one torch
        dtype or a dict per column) on ``device``; strings stay lists. Streams like
        :meth:`iter_batches`."""
        return iter_torch_batches(self._stream(), batch_size, dtypes, device, drop_last)

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """The rows as dicts, as they are computed (image cells are numpy arrays); stopping
        early stops the work."""
        return iter_rows(self._stream())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_rows()

    def to_torch_iter_dataset(self) -> Any:
        """A ``torch.utils.data.IterableDataset`` of the rows (dicts; images uint8 H×W×C
        tensors); with ``DataLoader(num_workers=N)`` each worker computes its own share, every
        row exactly once (see :mod:`mmbeam.frame.torch`)."""
        from mmbeam.frame.torch import FrameIterableDataset  # imports torch: optional

        return FrameIterableDataset(self)

    def to_pandas(self) -> Any:
        """A pandas DataFrame; image cells are numpy arrays in object columns."""
        return table_to_pandas(self._run())

    def write_parquet(self, root_dir: str, partition_cols: Sequence[str] | None = None,
                      io_config: Any = None, failures_path: str | None = None) -> Frame:
        """Write Parquet files under ``root_dir``; returns a frame of written paths. With
        ``failures_path`` (failure-capturing mode, see :meth:`with_exception_handling`; implied)
        the run's failures table is written there as Parquet too, from the same run."""
        return self._write("parquet", root_dir, partition_cols, io_config, failures_path)

    def write_csv(self, root_dir: str, partition_cols: Sequence[str] | None = None,
                  io_config: Any = None, failures_path: str | None = None) -> Frame:
        """Write CSV files under ``root_dir``; returns a frame of written paths (and the
        failures under ``failures_path``, as :meth:`write_parquet`)."""
        return self._write("csv", root_dir, partition_cols, io_config, failures_path)

    def _write(self, fmt: str, root: str, partition_cols: Any, io_config: Any,
               failures_path: str | None = None) -> Frame:
        cols = tuple(partition_cols or ())
        for c in cols:
            self._plan.schema[c]
        spec = WriteSpec(fmt, root, cols, io_config)
        capture = self._capture
        if failures_path is not None and capture is None:
            capture = FailureCapture()
        written = P.Project(self._plan, tuple(ir.Column(n) for n in self.column_names))
        outcome = get_context().executor().run(optimize(written), WriteFiles(spec), capture)
        self._ran(outcome)
        if failures_path is not None:
            write_table(outcome.failures, WriteSpec(fmt, failures_path, (), io_config))
        paths = Frame(P.InMemory(outcome.table))
        paths._metrics, paths._stages = outcome.metrics, outcome.stages
        return paths

    def to_pcollection(self, pipeline: Any, batches: bool = False) -> Any:
        """The rows as a PCollection of dicts (or of Arrow record batches) in ``pipeline``."""
        from mmbeam.exec.beam.compile import expand_rows  # Beam: only for to_pcollection

        return expand_rows(optimize(self._plan), pipeline, get_context().exec_options,
                           batches=batches)

    # -- python protocol ------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            self._plan.schema[key]
            return col(key)
        if isinstance(key, (list, tuple)) and all(isinstance(k, str) for k in key):
            return self.select(*key)
        raise ConfigError(f"frame[...] takes a column name or a list of names, not {key!r}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise suggest_attribute(self, name, "Frame")

    def __repr__(self) -> str:
        if self._result is not None:
            return repr(self._preview(8))

        empty = self._plan.schema.to_arrow().empty_table()
        text = render_text(empty, self.schema(), None).rsplit("\n\n", 1)[0]
        return text + "\n\n(No data to display: Frame not materialized)"

    def _repr_html_(self) -> str:
        if self._result is None:
            return "<pre>" + repr(self).replace("<", "&lt;") + "</pre>"
        return self._preview(8)._repr_html_()


class GroupedFrame:
    """A frame grouped by keys; ``agg`` turns it back into a frame."""

    def __init__(self, frame: Frame, keys: tuple[str, ...]):
        self._frame = frame
        self._keys = keys

    def agg(self, *aggs: Any) -> Frame:
        """One row per group: keys, then each aggregation (``col("x").sum()``, ``("x", "sum")``)."""
        nodes = []
        for a in _flatten(aggs):
            if isinstance(a, tuple) and len(a) == 2:
                name, op = a
                if op not in ir.AGG_OPS:
                    raise ConfigError(f"unknown aggregation {op!r}; use one of {ir.AGG_OPS}")
                a = Expr(ir.Agg(op, _node(name)))
            if not isinstance(a, Expr) or not isinstance(_strip_alias(a._node), ir.Agg):
                raise ConfigError(f"agg() takes aggregations such as col('x').sum(), got {a!r}")
            nodes.append(a._node if isinstance(a._node, ir.Alias)
                         else ir.Alias(a._node, ir.output_name(a._node)))
        if not nodes:
            raise ConfigError("agg() needs at least one aggregation")
        return Frame(P.Aggregate(self._frame._plan, self._keys, tuple(nodes)))

    def _each(self, op: str, cols: tuple) -> Frame:
        names = [_column_name(c, op) for c in _flatten(cols)] or [
            n for n in self._frame.column_names if n not in self._keys]
        return self.agg(*[Expr(ir.Agg(op, ir.Column(n))) for n in names])

    def sum(self, *cols: ColumnLike) -> Frame:
        """The sum of each column (per group on a grouped frame)."""
        return self._each("sum", cols)

    def mean(self, *cols: ColumnLike) -> Frame:
        """The mean of each column (per group on a grouped frame)."""
        return self._each("mean", cols)

    def min(self, *cols: ColumnLike) -> Frame:
        """The smallest value of each column (per group on a grouped frame)."""
        return self._each("min", cols)

    def max(self, *cols: ColumnLike) -> Frame:
        """The largest value of each column (per group on a grouped frame)."""
        return self._each("max", cols)

    def count(self, *cols: ColumnLike) -> Frame:
        """The non-null values of each column, per group."""
        return self._each("count", cols)

    def agg_list(self, *cols: ColumnLike) -> Frame:
        """The values of each column, per group, as a list."""
        return self._each("list", cols)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise suggest_attribute(self, name, "GroupedFrame")


def _with_hidden(plan: P.Plan, name: str, node: ir.Node) -> P.Plan:
    """``plan`` plus a column ``name`` computed by ``node`` (checked against its schema now)."""
    keep = tuple(ir.Column(c) for c in plan.schema.names())
    return P.Project(plan, keep + (ir.Alias(_strip_alias(node), name),))


def _drop_hidden(plan: P.Plan, hidden: list[str]) -> P.Plan:
    if not hidden:
        return plan
    return P.Project(plan, tuple(ir.Column(c) for c in plan.schema.names() if c not in hidden))


def _int64():
    return DataType.int64()


def _strip_alias(node: ir.Node) -> ir.Node:
    return node.child if isinstance(node, ir.Alias) else node


def _aliased(node: ir.Node) -> ir.Node:
    return node if isinstance(node, (ir.Column, ir.Alias)) else ir.Alias(node,
                                                                          ir.output_name(node))


def _listify(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]




def _cheap_count(plan: P.Plan) -> int | None:
    """The row count without running, when the plan allows (no filters, joins ...)."""
    if isinstance(plan, P.InMemory):
        return plan.table.num_rows
    if isinstance(plan, P.Project):
        return _cheap_count(plan.child)
    if isinstance(plan, P.Limit):
        inner = _cheap_count(plan.child)
        return None if inner is None else min(inner, plan.n)
    if isinstance(plan, P.Scan) and plan.predicate is None:
        n = plan.source.count_rows()
        return n if plan.limit is None or n is None else min(n, plan.limit)
    if isinstance(plan, P.Sort):
        return _cheap_count(plan.child)
    if isinstance(plan, P.Aggregate) and not plan.keys:
        return 1
    return None


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
