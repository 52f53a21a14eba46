"""``@mmbeam.udf`` in frames: class and function UDFs, batching, one instance per process, errors."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from apache_beam.internal import pickler

import mmbeam
from mmbeam import DataType, col
from mmbeam.errors import ConfigError, SchemaError, UdfError
from mmbeam.exec.beam.udf_stage import _UdfStageFn
from mmbeam.frame import context
from mmbeam.plan.udfs import UdfApply, split_udfs
from mmbeam.transforms import shared_model as sm

PAIR = DataType.fixed_size_list(dtype=DataType.string(), size=2)


@mmbeam.udf(return_dtype=PAIR, batch_size=4)
class Describe:
    """[prefix + name + suffix, "<instance>:<pid>:<batch length>"] per row."""

    def __init__(self, prefix="", suffix=""):
        self.prefix, self.suffix = prefix, suffix

    def __call__(self, names):
        tag = f"{id(self)}:{os.getpid()}:{len(names)}"
        return [[self.prefix + n + self.suffix, tag] for n in names]


@mmbeam.udf(return_dtype=DataType.int64())
def scaled_length(words, factor=1):
    return np.array([len(w) * factor for w in words])


@pytest.fixture
def partitions():
    context.set_execution_config(num_partitions=3)  # restored by tests/conftest.py


def test_class_udf_runs_once_per_process_in_batches_of_batch_size(partitions):
    names = [f"n{i:02d}" for i in range(40)]
    left = mmbeam.from_pydict({"name": names, "k": list(range(40))})
    right = mmbeam.from_pydict({"k": list(range(40)), "v": [i % 3 for i in range(40)]})
    udf = Describe.with_init_args("<", suffix=">")
    df = left.join(right, on="k").with_column("d", udf(col("name")))  # three join partitions
    out = df.sort("k").to_pydict()
    assert [d[0] for d in out["d"]] == [f"<{n}>" for n in names]
    tags = [d[1].split(":") for d in out["d"]]
    assert len({t[0] for t in tags}) == 1 and {t[1] for t in tags} == {str(os.getpid())}
    assert max(int(t[2]) for t in tags) == 4
    assert df.count_rows() == 40 and df.limit(3).to_pydict()["d"][0][1].split(":")[0] == tags[0][0]
    assert sm.loads_in_process(udf.token) == 1  # the next runs reused the loaded instance


def test_show_prints_fixed_size_list_dtype_and_cells(capsys):
    df = mmbeam.from_pydict({"name": ["ab", "c"]}).with_column("d", Describe(col("name")))
    df.select("d").show()
    text = capsys.readouterr().out
    assert "│ FixedSizeList[Utf8; 2]   " in text and "│ [ab, " in text
    assert df.schema()["d"] == PAIR


def test_function_udf_with_constants_keywords_filters_and_nesting():
    df = mmbeam.from_pydict({"w": ["a", "bbb", "cc", "dddd"]})
    out = (df.with_column("n", scaled_length(col("w") + "!", factor=10))
           .where(scaled_length(col("w")) > 1)
           .with_column("nested", scaled_length(Describe(col("w"))
                                                .cast(DataType.list(DataType.string()))))
           .to_pydict())
    assert out["w"] == ["bbb", "cc", "dddd"] and out["n"] == [40, 30, 50]
    assert out["nested"] == [2, 2, 2]  # length of the 2-item list each row got
    plan = split_udfs(df.with_column("n", scaled_length(col("w")))._plan)
    assert any(isinstance(n, UdfApply) for n in _walk(plan))


def _walk(plan):
    yield plan
    for child in plan.inputs():
        yield from _walk(child)


def test_autotuned_batches_grow():
    @mmbeam.udf(return_dtype=DataType.int64())
    def batch_len(values):
        return [len(values)] * len(values)

    context.set_execution_config(batch_rows=5000)
    out = mmbeam.from_pydict({"x": list(range(3000))}).with_column(
        "b", batch_len(col("x"))).to_pydict()["b"]
    assert out[0] <= 2 and max(out) >= 256  # starts small, doubles as batches prove cheap


def test_batch_helpers_on_image_columns():
    images = [np.full((4, 6, 3), i, np.uint8) for i in range(3)]

    @mmbeam.udf(return_dtype=DataType.list(DataType.int64()), batch_size=8)
    def shape_of(batch):
        arr = batch.to_numpy()
        return [list(arr.shape)] * len(batch)

    out = mmbeam.from_pydict({"img": images}).with_column("s", shape_of(col("img"))).to_pydict()
    assert out["s"] == [[3, 4, 6, 3]] * 3


@mmbeam.udf(return_dtype=DataType.string(), batch_size=3)
def shout(words):
    if "boom" in words:
        raise RuntimeError("cannot shout boom")
    return [w.upper() for w in words]


def test_a_failing_row_raises_naming_udf_and_row_or_is_nulled():
    df = mmbeam.from_pydict({"w": ["a", "b", "boom", "c", "d"]})
    with pytest.raises(UdfError, match=r"udf shout failed for 'boom': shout raised "
                                       r"RuntimeError: cannot shout boom"):
        df.with_column("s", shout(col("w"))).collect()
    nulled = df.with_column("s", shout.override_options(on_error="null")(col("w")))
    assert nulled.to_pydict()["s"] == ["A", "B", None, "C", "D"]


def test_wrong_outputs_are_clear_errors():
    @mmbeam.udf(return_dtype=DataType.int64())
    def drops_one(values):
        return list(values)[1:]

    @mmbeam.udf(return_dtype=DataType.int64())
    def words(values):
        return ["x"] * len(values)

    df = mmbeam.from_pydict({"v": [1, 2, 3]})
    with pytest.raises(UdfError, match="drops_one returned 0 values for a batch of 1 rows"):
        df.with_column("o", drops_one(col("v"))).collect()
    with pytest.raises(UdfError, match="words returned values that are not Int64"):
        df.with_column("o", words(col("v"))).collect()


def test_errors_before_running():
    with pytest.raises(SchemaError, match="nope"):
        mmbeam.from_pydict({"a": [1]}).with_column("x", Describe(col("nope")))
    with pytest.raises(ConfigError, match="batch_size"):
        mmbeam.udf(return_dtype=DataType.int64(), batch_size=0)(len)
    with pytest.raises(ConfigError, match="return_dtype"):
        mmbeam.udf(return_dtype=int)(len)
    with pytest.raises(ConfigError, match="with_init_args needs a class"):
        scaled_length.with_init_args(1)
    with pytest.raises(ConfigError, match="at least one expression"):
        scaled_length("constant")


def test_concurrency_caps_instances_per_process():
    @mmbeam.udf(return_dtype=DataType.int64(), batch_size=2, concurrency=1)
    class Counter:
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self, values):
            assert self.lock.acquire(blocking=False), "two batches ran on one instance at once"
            try:
                return [id(self)] * len(values)
            finally:
                self.lock.release()

    out = mmbeam.from_pydict({"v": list(range(30))}).with_column("i", Counter(col("v")))
    assert len(set(out.to_pydict()["i"])) == 1


def test_udf_stage_and_expression_survive_pickling():
    expr = Describe.with_init_args("p")(col("name"))
    clone = pickler.loads(pickler.dumps(expr))
    assert repr(clone) == "Describe(col(name))"
    df = mmbeam.from_pydict({"name": ["a"]}).with_column("d", expr)
    apply = next(n for n in _walk(split_udfs(df._plan)) if isinstance(n, UdfApply))
    fn = pickler.loads(pickler.dumps(_UdfStageFn(apply.calls, apply.child.schema.to_arrow())))
    assert fn._spec[0][1].udf.token == apply.calls[0][1].udf.token


@mmbeam.udf(return_dtype=DataType.int64(), batch_size=8)
class HeldTables:
    """Records how many in-memory tables this process holds for running pipelines, per batch."""

    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, images):
        from mmbeam.exec.beam.channel import held_tables

        self.seen.append(held_tables())
        return [int(img.sum() % 251) for img in images]


def test_big_in_memory_table_is_read_by_reference_on_the_local_runner_and_released():
    from mmbeam.exec.beam.channel import held_tables

    images = [np.full((200, 200, 3), i, np.uint8) for i in range(16)]  # ~1.9 MB: not inlined
    frame = mmbeam.from_pydict({"image": images})
    got = frame.with_column("s", HeldTables(col("image"))).select("s").to_pydict()["s"]
    assert got == [int(img.sum() % 251) for img in images]
    (instance,) = sm.instances(HeldTables.token)
    assert instance.seen == [2, 2]  # the table and the result list, held in memory: no file
    assert held_tables() == 0

    @mmbeam.udf(return_dtype=DataType.int64())
    def broken(images):
        raise ValueError("no")

    with pytest.raises(UdfError, match="no"):
        frame.with_column("s", broken(col("image"))).collect()
    assert held_tables() == 0
