"""The two execution paths (in-process operators, Beam pipeline) give the same rows; group-by
pre-aggregates before its shuffle; join, sort and group-by keys may be expressions."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmbeam.frame as mf
from mmbeam.errors import SchemaError
from mmbeam.exec import physical
from mmbeam.exec.beam.compile import _PartialAggregateFn
from mmbeam.frame import col, context, lit
from mmbeam.testing import run_collect


def _data(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 9, n).astype(object)
    k[rng.random(n) < 0.1] = None
    v = rng.normal(size=n).astype(object)
    v[rng.random(n) < 0.1] = None
    names = np.array(["Ann", "bob", "CY", "dee", None], dtype=object)[rng.integers(0, 5, n)]
    return {"k": list(k), "v": list(v), "i": rng.integers(0, 50, n).tolist(),
            "name": list(names), "tags": [["a"] * int(j % 3) for j in range(n)]}


@pytest.fixture
def sources(tmp_path):
    left = _data(1, 700)
    right = {"k": list(range(-2, 7)) + [None], "w": [f"w{i}" for i in range(10)]}
    folder = tmp_path / "hive"
    for part in ("a", "b"):
        (folder / f"part={part}").mkdir(parents=True)
        table = pa.table({"k": left["k"], "v": left["v"], "i": left["i"]})
        pq.write_table(table.slice(0 if part == "a" else 350, 350),
                       folder / f"part={part}" / "f.parquet")
    return mf.from_pydict(left), mf.from_pydict(right), str(folder)


PLANS = {
    "scan_filter_project": lambda lf, rf, path: mf.read_parquet(path).where(
        (col("part") == "b") & (col("i") > 10)).with_column("x", col("i") * 2 + col("v")),
    "joins": lambda lf, rf, path: lf.select("k", "v").join(rf, on="k", how="outer"),
    "semi": lambda lf, rf, path: lf.join(rf, on="k", how="semi"),
    "groupby": lambda lf, rf, path: lf.groupby("k").agg(
        col("v").sum().alias("s"), col("v").mean().alias("m"), col("i").min().alias("lo"),
        col("i").max().alias("hi"), col("v").count().alias("c"),
        col("name").agg_list().alias("l")),
    "global_agg_of_nothing": lambda lf, rf, path: lf.where(col("i") > 100).agg(
        col("v").sum(), col("i").count().alias("c"), col("name").agg_list()),
    "distinct_sort_limit": lambda lf, rf, path: lf.distinct("k", "name").sort(
        ["k", "name"], desc=[True, False], nulls_first=True).limit(17),
    "explode": lambda lf, rf, path: lf.select("i", "tags").explode("tags"),
    "expression_keys": lambda lf, rf, path: lf.join(
        rf, left_on=col("i") % 10, right_on=col("k") + 0, how="left").sort(
        col("name").str.lower()),
}


def _canon(table: pa.Table) -> list:
    rows = [tuple(repr(v) for v in r.values()) for r in table.to_pylist()]
    return sorted(rows)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_both_paths_give_the_same_rows(sources, name):
    frame = PLANS[name](*sources)
    local = frame.to_arrow()
    context.set_execution_config(in_process=False)
    try:
        beam_rows = PLANS[name](*sources).to_arrow()
    finally:
        context.set_execution_config(in_process=None)
    assert local.schema == beam_rows.schema
    assert local.num_rows == beam_rows.num_rows
    if name == "distinct_sort_limit":  # a total order: the same rows in the same order
        assert local.to_pylist() == beam_rows.to_pylist()
    assert _canon(local) == _canon(beam_rows)


def test_explain_names_the_path_and_only_beam_starts_a_runner(capsys, mmbeam_http, runs):
    runs.install("local")  # counted, under the name that lets frames run in this process
    df = mf.from_pydict({"a": [3, 1, 2]}).where(col("a") > 1)
    df.explain()
    assert "in-process" in capsys.readouterr().out
    assert df.to_pydict() == {"a": [3, 2]} and runs.runs == 0
    context.set_execution_config(in_process=False)
    df2 = mf.from_pydict({"a": [3, 1, 2]}).where(col("a") > 1)
    df2.explain()
    assert "Beam pipeline" in capsys.readouterr().out
    assert df2.to_pydict() == {"a": [3, 2]} and runs.runs == 1
    context.set_execution_config(in_process=None)
    url = mmbeam_http.add("paths-a.txt", b"hello")
    mm = mf.from_pydict({"u": [url]}).with_column("b", col("u").url.download())
    mm.explain()
    out = capsys.readouterr().out
    assert "in-process" in out and "URL/image work streams" in out
    assert mm.to_pydict()["b"] == [b"hello"] and runs.runs == 1


def test_write_parquet_same_files_either_way(tmp_path):
    df = mf.from_pydict({"k": ["x", "y", None], "v": [1, 2, 3]})
    df.write_parquet(str(tmp_path / "local"), partition_cols=["k"])
    context.set_execution_config(in_process=False)
    df.write_parquet(str(tmp_path / "beam"), partition_cols=["k"])
    a = mf.read_parquet(str(tmp_path / "local")).sort("v").to_pydict()
    b = mf.read_parquet(str(tmp_path / "beam")).sort("v").to_pydict()
    assert a == b == {"v": [1, 2, 3], "k": ["x", "y", None]}


# -- group-by pre-aggregation ---------------------------------------------------------------------
def _grouped(n: int, seed: int):
    data = _data(seed, n)
    return data, mf.from_pydict(data).groupby("k").agg(
        col("v").sum().alias("s"), col("v").mean().alias("m"), col("v").min().alias("lo"),
        col("v").max().alias("hi"), col("v").count().alias("c"), col("i").agg_list().alias("l"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partials_merged_in_any_split_match_pandas(seed):
    data, frame = _grouped(400, seed)
    plan = frame._plan
    table = pa.table({k: data[k] for k in ("k", "v", "i")})
    rng = np.random.default_rng(seed)
    cuts = sorted(set(rng.integers(0, 400, 5).tolist()) | {0, 400})
    parts = [physical.partial_aggregate(table.slice(a, b - a), plan.keys, plan.aggs)
             for a, b in zip(cuts, cuts[1:], strict=False)]
    half = physical.merge_partials(pa.concat_tables(parts[:2]), plan.keys, plan.aggs)
    partials = pa.concat_tables([half, *parts[2:]])
    out = physical.finish_aggregate(partials, plan.keys, plan.aggs, plan.schema).to_pandas()
    out = out.sort_values("k", na_position="last").reset_index(drop=True)
    frame_df = pd.DataFrame(data)
    frame_df["v"] = frame_df["v"].astype(float)
    exp = frame_df.groupby("k", dropna=False).agg(
        s=("v", "sum"), m=("v", "mean"), lo=("v", "min"), hi=("v", "max"), c=("v", "count"),
        l=("i", list)).reset_index().sort_values("k", na_position="last").reset_index(drop=True)
    assert out["k"].tolist()[:-1] == exp["k"].tolist()[:-1] and pd.isna(out["k"].iloc[-1])
    all_null = exp["c"] == 0  # pandas sums an all-null group to 0; SQL (and mmbeam) to null
    np.testing.assert_allclose(out["s"][~all_null], exp["s"][~all_null])
    assert out["s"][all_null].isna().all()
    for c in ("m", "lo", "hi"):
        np.testing.assert_allclose(out[c], exp[c])
    assert out["c"].tolist() == exp["c"].tolist()
    assert [sorted(x) for x in out["l"]] == [sorted(x) for x in exp["l"]]


def test_partial_aggregation_shuffles_one_row_per_group_and_bundle():
    data, frame = _grouped(20_000, 3)
    table = pa.table({k: data[k] for k in ("k", "v", "i")})
    batches = [(i,) for i in range(20)]
    out = run_collect(lambda p: p | beam.Create(batches)
                      | beam.Map(lambda key: (key, table.slice(key[0] * 1000, 1000)))
                      | beam.ParDo(_PartialAggregateFn(frame._plan, 4)))
    rows = sum(batch.num_rows for _, batch in out.outputs)
    groups = len(set(data["k"]))
    assert 0 < rows <= groups * len(batches) < table.num_rows


# -- expression keys ------------------------------------------------------------------------------
def test_join_sort_and_groupby_take_expressions(engine):
    left = mf.from_pydict({"name": ["Ann", "BOB", "cy", None], "v": [1, 2, 3, 4]})
    right = mf.from_pydict({"n": ["ann", "bob", "dd"], "w": [10, 20, 30]})
    joined = left.join(right, left_on=col("name").str.lower(), right_on="n", how="left")
    assert joined.column_names == ["name", "v", "n", "w"]
    assert joined.sort("v").to_pydict() == {"name": ["Ann", "BOB", "cy", None],
                                            "v": [1, 2, 3, 4], "n": ["ann", "bob", None, None],
                                            "w": [10, 20, None, None]}
    both = left.join(right, left_on=col("name").str.lower(), right_on=col("n") + lit(""))
    assert sorted(both.to_pydict()["w"]) == [10, 20]
    assert left.sort(col("name").str.lower(), desc=True).to_pydict()["v"] == [3, 2, 1, 4]
    assert left.sort(col("v") % 2).column_names == ["name", "v"]
    grouped = left.groupby(col("v") % 2).agg(col("name").count()).sort("v").to_pydict()
    assert grouped == {"v": [0, 1], "name": [1, 2]}


def test_expression_keys_fail_before_running_naming_the_column():
    left = mf.from_pydict({"name": ["a"]})
    right = mf.from_pydict({"n": ["a"]})
    with pytest.raises(SchemaError, match="'nmae' not found. Did you mean 'name'"):
        left.join(right, left_on=col("nmae").str.lower(), right_on="n")
    with pytest.raises(SchemaError, match="incompatible"):
        left.join(right, left_on=col("name").str.length(), right_on="n")
    with pytest.raises(SchemaError, match="'x' not found"):
        left.sort(col("x") + 1)


def test_new_dofns_survive_pickling():
    import pickle

    from mmbeam.exec.beam.compile import _AggregateFn, _BroadcastJoinFn

    left = mf.from_pydict({"k": [1, 2], "v": [1.0, None]})
    right = mf.from_pydict({"k": [1], "w": ["a"]})
    grouped = left.groupby("k").agg(col("v").mean())._plan
    joined = left.join(right, on="k")._plan
    for fn in (_PartialAggregateFn(grouped, 4), _AggregateFn(grouped), _BroadcastJoinFn(joined)):
        back = pickle.loads(pickle.dumps(fn))
        assert type(back) is type(fn) and back.__dict__.keys() == fn.__dict__.keys()


# -- URL/image plans: the same rows, nulls, counts and errors either way ----------------------------
def _both_ways(make):
    """``make()``'s collected frame in-process and on Beam (a fresh frame each time)."""
    local = make().collect()
    context.set_execution_config(in_process=False)
    try:
        on_beam = make().collect()
    finally:
        context.set_execution_config(in_process=None)
    return local, on_beam


@pytest.fixture
def images(mmbeam_http, serve_jpegs):
    from mmbeam.testing.images import encode_sample, make_image

    urls = list(serve_jpegs("paths", [(40 + i, 30) for i in range(5)]).values())
    mmbeam_http.add("paths/corrupt.jpg", encode_sample(make_image(40, 30, seed=7))[:200])
    return mmbeam_http, urls


def test_multimodal_nulls_and_counts_match(images):
    server, urls = images
    bad = [urls[0], server.url("files/paths/404.jpg"), None, urls[1],
           server.url("files/paths/corrupt.jpg")]

    def make():
        img = col("url").url.download(on_error="null").image.decode(on_error="null")
        return mf.from_pydict({"url": bad}).select(
            "url", img.image.width().alias("w"),
            img.image.resize(8, 6).image.encode("PNG").alias("png"))

    local, on_beam = _both_ways(make)
    assert local.to_arrow() == on_beam.to_arrow()
    assert local.to_pydict()["w"] == [40, None, None, 41, None]
    # both columns run the chain, so each counts the 404 and the corrupt image once
    assert local._counts == on_beam._counts == {"url.download": 2, "image.decode": 2}


def test_a_corrupt_image_fails_the_same_way(images):
    from mmbeam.errors import DecodeError

    server, urls = images
    corrupt = server.url("files/paths/corrupt.jpg")
    messages = []
    for in_process in (None, False):
        context.set_execution_config(in_process=in_process)
        try:
            df = mf.from_pydict({"url": [urls[0], corrupt]}).with_column(
                "i", col("url").url.download().image.decode())
            with pytest.raises(DecodeError) as info:
                df.collect()
        finally:
            context.set_execution_config(in_process=None)
        messages.append(str(info.value))
    assert messages[1].startswith(messages[0])  # Beam appends "[while running 'StageN']"
    assert "image.decode failed for" in messages[0] and "corrupt.jpg" in messages[0]


def test_uploads_write_the_same_files(images, tmp_path):
    _, urls = images
    folders = iter([tmp_path / "local", tmp_path / "beam"])

    def make():
        return mf.from_pydict({"url": urls}).with_column(
            "path", col("url").url.download().image.decode().image.resize(16, 16)
            .image.encode("JPEG").url.upload(str(next(folders)))).select("path")

    local, on_beam = _both_ways(make)
    names = [[p.rsplit("/", 1)[1] for p in f.to_pydict()["path"]] for f in (local, on_beam)]
    assert names[0] == names[1] and len(set(names[0])) == len(urls)
    for name in names[0]:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "beam" / name).read_bytes()


def test_a_limit_over_url_work_downloads_only_the_rows_it_needs(images):
    """The limit cannot be pushed below the multimodal filter: the stream stops pulling."""
    server, urls = images
    context.set_execution_config(multimodal_batch_rows=2)
    server.reset_stats()
    df = mf.from_pydict({"url": urls}).with_column(
        "w", col("url").url.download().image.decode().image.width())
    out = df.where(col("w") > 40).limit(2).to_pydict()
    assert out["w"] == [41, 42]
    assert [server.hits(u) for u in urls] == [1, 1, 1, 1, 0]


def test_url_work_in_process_never_imports_beam(images, tmp_path):
    import subprocess
    import sys

    _, urls = images
    script = f"""
import sys
import mmbeam
from mmbeam import col
urls = {urls!r}
df = mmbeam.from_pydict({{"url": urls}}).with_column(
    "path", col("url").url.download().image.decode().image.resize(8, 8).image.encode("JPEG")
    .url.upload({str(tmp_path / "up")!r}))
assert len(df.collect().to_pydict()["path"]) == len(urls)
assert mmbeam.from_pydict({{"a": [1, 2]}}).where(col("a") > 1).to_pydict() == {{"a": [2]}}
print("beam-imported", "apache_beam" in sys.modules)
mmbeam.context.set_execution_config(in_process=False)
assert mmbeam.from_pydict({{"url": urls[:1]}}).with_column(
    "n", col("url").url.download().image.decode().image.width()).to_pydict()["n"] == [40]
print("beam-after-forcing", "apache_beam" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "beam-imported False" in out.stdout and "beam-after-forcing True" in out.stdout
