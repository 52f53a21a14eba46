"""Frame basics: sources, projections, filters, limits, sinks, laziness and early errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import mmbeam.frame as mf
from mmbeam.errors import ConfigError, SchemaError
from mmbeam.frame import DataType, col, lit


def people():
    return mf.from_pydict({
        "first_name": ["Ernesto", "James", "Wolfgang", "Shandra", "Zaya"],
        "last_name": ["Evergreen", "Jale", "Winter", "Shamas", "Zaphora"],
        "age": [34, 62, 23, 57, 40],
        "has_dog": [True, True, None, True, True],
    })


def test_sources_agree():
    data = {"a": [1, 2, None], "b": ["x", None, "z"]}
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": None}, {"a": None, "b": "z"}]
    frames = [
        mf.from_pydict(data),
        mf.from_pylist(rows),
        mf.from_arrow(pa.table(data)),
        mf.from_arrow([pa.table(data).slice(0, 1), pa.table(data).slice(1)]),
        mf.from_pandas(pd.DataFrame(data).astype({"a": "Int64"})),
    ]
    for f in frames:
        assert f.to_pydict() == data
        assert f.schema()["a"] == DataType.int64() and f.schema()["b"] == DataType.string()


def test_from_pylist_missing_keys_are_null():
    f = mf.from_pylist([{"a": 1}, {"b": "x"}])
    assert f.to_pylist() == [{"a": 1, "b": None}, {"a": None, "b": "x"}]


def test_from_pydict_rejects_ragged_columns():
    with pytest.raises(SchemaError, match="different lengths"):
        mf.from_pydict({"a": [1, 2], "b": [1]})


def test_nothing_runs_until_asked(runs):
    df = people().with_column("full_name", col("first_name") + " " + col("last_name"))
    df = df.where(col("age") > 30).select("full_name", "age").limit(3).sort("age")
    df.schema()
    df.explain(show_all=True)
    assert runs.runs == 0
    assert df.to_pydict() == {"full_name": ["Ernesto Evergreen", "Shandra Shamas", "James Jale"],
                              "age": [34, 57, 62]}
    assert runs.runs == 1
    df.to_pylist()
    df.to_pandas()
    assert runs.runs == 1  # the collected result is reused


def test_string_concatenation_and_select_order():
    df = people().with_column("full_name", col("first_name") + " " + col("last_name"))
    out = df.select("full_name", "age", "has_dog").to_pydict()
    assert list(out) == ["full_name", "age", "has_dog"]
    assert out["full_name"][2] == "Wolfgang Winter"
    assert out["has_dog"] == [True, True, None, True, True]


def test_with_columns_replace_in_place_and_exclude():
    df = people().with_columns({"age": col("age") + 1, "x": lit(7)})
    assert df.column_names == ["first_name", "last_name", "age", "has_dog", "x"]
    out = df.exclude("first_name", "last_name").to_pydict()
    assert out["age"] == [35, 63, 24, 58, 41] and out["x"] == [7] * 5
    with pytest.raises(SchemaError, match="Did you mean 'age'"):
        df.exclude("agee")


def test_operators_and_null_semantics():
    df = mf.from_pydict({"a": [1, 2, None, 4], "b": [2, 0, 1, None], "s": ["ab", None, "cd", "Ab"],
                         "t": [True, False, None, None]})
    out = df.select(
        (col("a") + col("b")).alias("add"),
        (col("a") - col("b")).alias("sub"),
        (col("a") * col("b")).alias("mul"),
        (col("a") / col("b")).alias("div"),
        (col("a") % col("b")).alias("mod"),
        (col("a") == col("b")).alias("eq"),
        (col("a") != 1).alias("ne"),
        (col("a") < 2).alias("lt"),
        (col("a") <= 2).alias("le"),
        (col("a") > 2).alias("gt"),
        (col("a") >= 2).alias("ge"),
        (col("t") & True).alias("and_"),
        (col("t") | True).alias("or_"),
        (~col("t")).alias("not_"),
        col("a").is_null().alias("isnull"),
        col("a").not_null().alias("notnull"),
        col("a").fill_null(0).alias("filled"),
        (col("a") > 1).if_else(lit("big"), lit("small")).alias("ifelse"),
        col("a").cast(DataType.string()).alias("cast"),
        col("s").str.contains("b").alias("contains"),
        col("s").str.startswith("a").alias("sw"),
        col("s").str.endswith("d").alias("ew"),
        col("s").str.lower().alias("lower"),
        col("s").str.upper().alias("upper"),
        col("s").str.length().alias("len"),
        col("s").str.split("b").alias("split"),
        col("s").str.replace("b", "X").alias("replace"),
        (col("s") + "!").alias("concat"),
    ).to_pydict()
    assert out["add"] == [3, 2, None, None]
    assert out["sub"] == [-1, 2, None, None]
    assert out["mul"] == [2, 0, None, None]
    assert out["div"][0] == 0.5 and out["div"][1] == float("inf") and out["div"][2] is None
    assert out["mod"] == [1, None, None, None]  # modulo by zero is null, not an error
    assert out["eq"] == [False, False, None, None]
    assert out["ne"] == [False, True, None, True]
    assert out["lt"] == [True, False, None, False]
    assert out["le"] == [True, True, None, False]
    assert out["gt"] == [False, False, None, True]
    assert out["ge"] == [False, True, None, True]
    assert out["and_"] == [True, False, None, None]
    assert out["or_"] == [True, True, True, True]  # Kleene logic: null | true is true
    assert out["not_"] == [False, True, None, None]
    assert out["isnull"] == [False, False, True, False]
    assert out["notnull"] == [True, True, False, True]
    assert out["filled"] == [1, 2, 0, 4]
    assert out["ifelse"] == ["small", "big", None, "big"]
    assert out["cast"] == ["1", "2", None, "4"]
    assert out["contains"] == [True, None, False, True]
    assert out["sw"] == [True, None, False, False]
    assert out["ew"] == [False, None, True, False]
    assert out["lower"] == ["ab", None, "cd", "ab"]
    assert out["upper"] == ["AB", None, "CD", "AB"]
    assert out["len"] == [2, None, 2, 2]
    assert out["split"] == [["a", ""], None, ["cd"], ["A", ""]]
    assert out["replace"] == ["aX", None, "cd", "AX"]
    assert out["concat"] == ["ab!", None, "cd!", "Ab!"]


def test_where_filter_and_limit(engine):
    df = people()
    assert df.where(col("has_dog")).count_rows() == 4  # null is not true
    assert df.filter((col("age") > 30) & (col("age") < 60)).to_pydict()["age"] == [34, 57, 40]
    assert df.limit(2).to_pydict()["first_name"] == ["Ernesto", "James"]
    assert df.limit(0).to_pydict()["age"] == []
    assert df.where(col("age") > 100).to_pydict() == {
        "first_name": [], "last_name": [], "age": [], "has_dog": []}
    with pytest.raises(ConfigError):
        df.limit(-1)
    with pytest.raises(SchemaError, match="Boolean"):
        df.where(col("age") + 1)


def test_limit_keeps_source_order_across_batches(engine):
    mf.context.set_execution_config(batch_rows=7)
    df = mf.from_pydict({"i": list(range(100))})
    assert df.limit(30).to_pydict()["i"] == list(range(30))
    assert df.where(col("i") % 3 == 0).limit(5).to_pydict()["i"] == [0, 3, 6, 9, 12]
    assert df.to_pydict()["i"] == list(range(100))


def test_len_getitem_iter_rows_and_sinks():
    df = people()
    assert len(df) == 5
    assert repr(df["age"]) == "col(age)"
    assert df[["age", "first_name"]].column_names == ["age", "first_name"]
    with pytest.raises(SchemaError, match="Did you mean 'age'"):
        df["aeg"]
    rows = list(df.select("first_name", "age").iter_rows())
    assert rows[0] == {"first_name": "Ernesto", "age": 34} and len(rows) == 5
    assert df.to_pylist()[2]["has_dog"] is None
    pdf = df.to_pandas()
    assert list(pdf.columns) == df.column_names and pdf["age"].tolist() == [34, 62, 23, 57, 40]
    table = df.to_arrow()
    assert isinstance(table, pa.Table) and table.num_rows == 5


def test_errors_before_anything_runs(runs):
    df = people()
    with pytest.raises(SchemaError, match="'agee'.*Did you mean 'age'.*first_name"):
        df.with_column("x", col("agee") + 1)
    with pytest.raises(SchemaError, match="image.resize expects an Image"):
        df.with_column("x", col("first_name").image.resize(4, 4))
    with pytest.raises(SchemaError):
        df.select("nope")
    with pytest.raises(SchemaError):
        df.sort("nope")
    with pytest.raises(AttributeError, match="did you mean 'with_column'"):
        df.with_colum("x", col("age"))
    assert runs.runs == 0


def test_sort_multiple_keys_and_nulls(engine):
    df = mf.from_pydict({"a": [2, 1, None, 2, 1], "b": ["x", "y", "z", "w", "v"]})
    assert df.sort(["a", "b"]).to_pydict()["b"] == ["v", "y", "w", "x", "z"]
    assert df.sort("a", desc=True).to_pydict()["a"] == [2, 2, 1, 1, None]
    assert df.sort("a", nulls_first=True).to_pydict()["a"][0] is None
    assert df.sort(["a", "b"], desc=[True, False]).to_pydict()["b"] == ["w", "x", "v", "y", "z"]


def test_distinct(engine):
    df = mf.from_pydict({"a": [1, 1, 2, None, None], "b": ["x", "x", "y", None, None]})
    out = df.distinct().sort("a").to_pydict()
    assert out == {"a": [1, 2, None], "b": ["x", "y", None]}
    assert df.distinct("a").count_rows() == 3


def test_groupby_aggregations_against_pandas(engine):
    rng = np.random.default_rng(0)
    n = 500
    keys = rng.integers(0, 7, n).astype(object)
    keys[rng.random(n) < 0.1] = None
    vals = rng.normal(size=n)
    data = {"k": list(keys), "v": list(vals), "i": list(rng.integers(0, 100, n))}
    df = mf.from_pydict(data)
    out = df.groupby("k").agg(
        col("v").sum().alias("s"), col("v").mean().alias("m"), col("i").min().alias("lo"),
        col("i").max().alias("hi"), col("i").count().alias("c"), col("i").agg_list().alias("l"),
    ).sort("k").to_pandas()
    expected = pd.DataFrame(data).groupby("k", dropna=False).agg(
        s=("v", "sum"), m=("v", "mean"), lo=("i", "min"), hi=("i", "max"), c=("i", "count"))
    expected = expected.reset_index().sort_values("k", na_position="last")
    np.testing.assert_allclose(out["s"], expected["s"])
    np.testing.assert_allclose(out["m"], expected["m"])
    assert out["lo"].tolist() == expected["lo"].tolist()
    assert out["c"].tolist() == expected["c"].tolist()
    assert [len(x) for x in out["l"]] == out["c"].tolist()
    assert pd.isna(out["k"].tolist()[-1])  # null keys form their own group


def test_groupby_shortcuts_and_global_agg(engine):
    df = mf.from_pydict({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    assert df.groupby("k").sum("v").sort("k").to_pydict() == {"k": ["a", "b"], "v": [4, 2]}
    assert df.groupby("k").count().sort("k").to_pydict()["v"] == [2, 1]
    assert df.agg(col("v").sum().alias("total"), col("v").max()).to_pydict() == {
        "total": [6], "v": [3]}
    assert df.groupby("k").agg(("v", "mean")).sort("k").to_pydict()["v"] == [2.0, 2.0]
    assert df.where(col("v") > 10).agg(col("v").count()).to_pydict() == {"v": [0]}
    with pytest.raises(ConfigError):
        df.groupby("k").agg(col("v") + 1)


def test_explode(engine):
    df = mf.from_pydict({"id": [1, 2, 3, 4], "tags": [["a", "b"], [], None, ["c"]]})
    out = df.explode("tags").to_pydict()
    assert out == {"id": [1, 1, 2, 3, 4], "tags": ["a", "b", None, None, "c"]}
    assert df.schema()["tags"] == DataType.list(DataType.string())
    assert df.explode(col("tags")).schema()["tags"] == DataType.string()
    with pytest.raises(SchemaError, match="List"):
        df.explode("id")


def test_count_rows_runs_only_when_needed(runs):
    df = people()
    assert df.count_rows() == 5 and runs.runs == 0  # in-memory: known without running
    assert df.where(col("age") > 40).count_rows() == 2 and runs.runs == 1


def test_explain_shows_pushdown_and_fusion(capsys):
    df = people().with_column("full_name", col("first_name") + " " + col("last_name"))
    df = df.where(col("age") > 30).select("full_name").limit(2)
    df.explain(show_all=True)
    text = capsys.readouterr().out
    assert "== Logical plan ==" in text and "== Optimized plan ==" in text
    optimized = text.split("== Optimized plan ==")[1].split("== Physical stages ==")[0]
    # the filter and limit moved below the projection; unused columns are gone
    lines = [line.strip() for line in optimized.strip().splitlines()]
    assert lines[0].startswith("* Project") and "has_dog" not in optimized
    assert any(line.startswith("* Filter") for line in lines[1:])
    assert "RowStage (one DoFn" in text


def test_frames_are_immutable():
    df = people()
    df2 = df.with_column("x", lit(1))
    assert "x" not in df.column_names and "x" in df2.column_names


def test_pcollection_interop():
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from mmbeam.runners.direct import local_pipeline

    df = people().select("first_name", "age").where(col("age") > 50)
    with local_pipeline() as p:
        rows = df.to_pcollection(p)
        assert_that(rows, equal_to([{"first_name": "James", "age": 62},
                                    {"first_name": "Shandra", "age": 57}]))
    p = local_pipeline()
    pcoll = p | beam.Create([{"n": i, "s": str(i)} for i in range(10)])
    frame = mf.from_pcollection(pcoll, {"n": DataType.int64(), "s": DataType.string()})
    out = frame.where(col("n") >= 7).sort("n").to_pydict()
    assert out == {"n": [7, 8, 9], "s": ["7", "8", "9"]}


@pytest.mark.parametrize("make", [lambda: mf.from_pydict({}), lambda: mf.from_pylist([]),
                                  lambda: mf.from_arrow(pa.table({}))])
def test_a_frame_without_columns_has_no_rows_everywhere(engine, make):
    """Before: counted 0 rows but collected 131,072 (a slice of a column-less table)."""
    assert make().count_rows() == 0 and len(make()) == 0
    assert make().to_arrow().num_rows == 0 and make().to_pylist() == []
    assert make().collect().count_rows() == 0
    assert make().with_column("x", lit(1)).to_pydict() == {"x": []}
    assert make().limit(5).to_pylist() == []
