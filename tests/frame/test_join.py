"""Joins: every `how` against pandas with SQL null semantics, column naming, early errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import mmbeam.frame as mf
from mmbeam.errors import ConfigError, SchemaError
from mmbeam.exec.physical import hash_columns, partition_table
from mmbeam.frame import col


def _random(seed: int, n: int, name: str):
    rng = np.random.default_rng(seed)
    keys = [None if rng.random() < 0.15 else int(rng.integers(0, 12)) for _ in range(n)]
    skeys = [None if k is None else f"k{k}" for k in keys]
    vals = [None if rng.random() < 0.1 else float(rng.normal()) for _ in range(n)]
    return {"k": keys, "sk": skeys, name: vals}


def _canon(records):
    def clean(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    rows = [tuple(clean(v) for v in r) for r in records]
    return sorted(rows, key=lambda r: tuple((v is None, str(v)) for v in r))


def _expected(left: pd.DataFrame, right: pd.DataFrame, key: str, how: str) -> pd.DataFrame:
    """pandas merge with SQL semantics: rows with a null key never match."""
    lk, rk = left[left[key].notna()], right[right[key].notna()]
    ln, rn = left[left[key].isna()], right[right[key].isna()]
    if how == "inner":
        return lk.merge(rk, on=key, how="inner")
    if how == "left":
        return left.merge(rk, on=key, how="left")
    if how == "right":
        return lk.merge(right, on=key, how="right")
    if how == "outer":
        return pd.concat([lk.merge(rk, on=key, how="outer"), ln, rn], ignore_index=True)
    matched = left[key].isin(set(rk[key]))
    return left[matched] if how == "semi" else left[~matched]


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer", "semi", "anti"])
@pytest.mark.parametrize("key", ["k", "sk"])
def test_join_null_semantics_match_pandas(how, key, engine):
    ldata, rdata = _random(1, 120, "lv"), _random(2, 80, "rv")
    drop = "sk" if key == "k" else "k"
    ldata.pop(drop)
    rdata.pop(drop)
    out = mf.from_pydict(ldata).join(mf.from_pydict(rdata), on=key, how=how)
    got = out.to_pandas()
    expected = _expected(pd.DataFrame(ldata, dtype=object), pd.DataFrame(rdata, dtype=object),
                         key, how)
    cols = [key, "lv"] if how in ("semi", "anti") else [key, "lv", "rv"]
    assert list(got.columns) == cols  # the key once, first
    assert _canon(got[cols].itertuples(index=False)) == \
        _canon(expected[cols].itertuples(index=False))


def test_join_with_different_key_names_and_collisions():
    left = mf.from_pydict({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    right = mf.from_pydict({"uid": [3, 1, 4], "name": ["C", "A", "D"]})
    out = left.join(right, left_on="id", right_on="uid", how="left").sort("id").to_pydict()
    assert out == {"id": [1, 2, 3], "name": ["a", "b", "c"], "uid": [1, None, 3],
                   "right.name": ["A", None, "C"]}
    custom = left.join(right, left_on=col("id"), right_on=col("uid"), prefix="r_")
    assert custom.column_names == ["id", "name", "uid", "r_name"]


def test_join_on_multiple_keys_and_int_widths():
    left = mf.from_pydict({"a": [1, 1, 2], "b": ["x", "y", "x"], "v": [10, 20, 30]})
    right = mf.from_arrow(__import__("pyarrow").table({
        "a": __import__("pyarrow").array([1, 2], "int32"), "b": ["y", "x"], "w": [1, 2]}))
    out = left.join(right, on=["a", "b"]).sort("v").to_pydict()
    assert out == {"a": [1, 2], "b": ["y", "x"], "v": [20, 30], "w": [1, 2]}


def test_join_errors_before_running(runs):
    left = mf.from_pydict({"id": [1], "x": ["a"]})
    right = mf.from_pydict({"uid": [1], "y": ["b"]})
    with pytest.raises(SchemaError, match="join key 'id' is missing on the right side.*uid, y"):
        left.join(right, on="id")
    with pytest.raises(SchemaError, match="incompatible"):
        left.join(right, left_on="x", right_on="uid")
    with pytest.raises(ConfigError, match="Did you mean 'outer'"):
        left.join(right, left_on="id", right_on="uid", how="outter")
    with pytest.raises(ConfigError):
        left.join(right)
    assert runs.runs == 0


def test_filters_push_into_join_sides():
    from mmbeam.plan import nodes as P
    from mmbeam.plan.optimizer import optimize

    left = mf.from_pydict({"id": [1, 2, 3], "x": [5, 6, 7]})
    right = mf.from_pydict({"id": [1, 2, 3], "y": [7, 8, 9]})
    df = left.join(right, on="id").where((col("x") > 5) & (col("y") < 9))
    opt = optimize(df._plan)
    joins = [n for n in P.walk(opt) if isinstance(n, P.Join)]
    assert isinstance(joins[0].left, P.Filter) and isinstance(joins[0].right, P.Filter)
    assert df.to_pydict() == {"id": [2], "x": [6], "y": [8]}


def test_hash_partitioning_is_deterministic_and_type_stable():
    import pyarrow as pa

    t = pa.table({"s": ["a", "bb", None, "", "a"], "i": [1, 2, 3, 4, 1]})
    h = hash_columns(t, ["s"])
    assert h[0] == h[4] and h[0] != h[1]
    # int32 and int64 keys hash alike, so mixed-width joins meet in one partition
    h32 = hash_columns(pa.table({"i": pa.array([1, 2], "int32")}), ["i"])
    h64 = hash_columns(pa.table({"i": pa.array([1, 2], "int64")}), ["i"])
    assert list(h32) == list(h64)
    parts = partition_table(t, ["s"], 3)
    assert sum(p.num_rows for _, p in parts) == 5


@pytest.mark.parametrize("shuffle_files", [True, False])
def test_shuffle_by_value_and_by_file_agree(shuffle_files):
    mf.context.set_execution_config(shuffle_files=shuffle_files, batch_rows=50, in_process=False,
                                     broadcast_bytes=0)
    ldata, rdata = _random(3, 300, "lv"), _random(4, 200, "rv")
    ldata.pop("sk")
    rdata["name"] = rdata.pop("sk")
    left, right = mf.from_pydict(ldata), mf.from_pydict(rdata)
    joined = left.join(right, on="k", how="outer").to_pandas()
    expected = _expected(pd.DataFrame(ldata, dtype=object), pd.DataFrame(rdata, dtype=object),
                         "k", "outer")
    cols = ["k", "lv", "rv", "name"]
    assert list(joined.columns) == cols
    assert _canon(joined[cols].itertuples(index=False)) == \
        _canon(expected[cols].itertuples(index=False))
    counts = left.groupby("k").agg(col("lv").count()).sort("k").to_pydict()
    assert sum(counts["lv"]) == sum(v is not None for v in ldata["lv"])
    assert left.distinct("k").count_rows() == len(set(ldata["k"]))
