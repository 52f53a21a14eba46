"""Per-operator metrics after a run (Frame.metrics), in process and on Beam; the in-process
operators' progress in log mode."""

from __future__ import annotations

import io

import pytest

import mmbeam
import mmbeam.frame as mf
from mmbeam.frame import DataType, col
from mmbeam.progress import Progress, set_progress
from mmbeam.testing.images import encode_sample, make_image


@pytest.fixture
def corpus(mmbeam_http):
    """20 URLs: 16 JPEGs, 4 missing (404)."""
    urls = [mmbeam_http.add(f"metrics/{i}.jpg", encode_sample(make_image(16, 8, seed=i)))
            for i in range(16)]
    urls += [mmbeam_http.url(f"files/metrics/missing{i}.jpg") for i in range(4)]
    return urls


def _by_operator(frame):
    return {row["operator"]: row for row in frame.metrics.to_pylist()}


def _frame(urls):
    return (mf.from_pydict({"id": list(range(len(urls))), "url": urls})
            .where(col("id") != 0)
            .with_column("w", col("url").url.download(on_error="null").image.decode()
                         .image.width()))


def test_in_process_metrics_count_rows_nulls_and_bytes(corpus):
    df = _frame(corpus)
    assert df.metrics is None
    out = df.collect()
    ops = _by_operator(out)
    assert list(ops) == ["InMemory", "Filter+Project[url.download>image.decode>image.width]"]
    source, stage = ops.values()
    assert (source["rows_in"], source["rows_out"]) == (20, 20)
    assert (stage["rows_in"], stage["rows_out"]) == (20, 19)
    assert stage["nulls"] == stage["failures"] == 4 == out.to_pydict()["w"].count(None)
    assert stage["peak_bytes"] > 0 and stage["seconds"] > 0
    assert source["seconds"] < stage["seconds"]


def test_metrics_of_a_blocking_operator_and_of_an_iterator():
    df = mf.from_pydict({"k": [i % 3 for i in range(300)], "v": list(range(300))})
    grouped = df.groupby("k").sum("v").collect()
    ops = _by_operator(grouped)
    assert ops["Aggregate"]["rows_in"] == 300 and ops["Aggregate"]["rows_out"] == 3
    assert ops["Aggregate"]["peak_bytes"] >= 300 * 16  # its whole input, two int64 columns
    frame = df.where(col("v") < 100)
    batches = frame.iter_batches(batch_size=10)
    next(batches)
    batches.close()  # a stopped iterator still reports what ran
    assert _by_operator(frame)["Filter"]["rows_out"] == 100


def test_beam_metrics_from_the_pipeline_counters(corpus):
    @mmbeam.udf(return_dtype=DataType.int64())
    def double(w):
        return [None if x is None else 2 * x for x in w.to_pylist()]

    df = _frame(corpus).with_column("w2", double(col("w")))
    out = df.collect()  # a UDF: a Beam pipeline on the local runner
    ops = _by_operator(out)
    stage = ops["Filter+Project[url.download>image.decode>image.width]"]
    assert (stage["rows_in"], stage["rows_out"], stage["nulls"]) == (20, 19, 4)
    assert ops["Udf[double]"]["rows_in"] == ops["Udf[double]"]["rows_out"] == 19
    assert ops["InMemory"]["rows_out"] == 20 and stage["seconds"] > 0
    assert stage["peak_bytes"] > 0


def test_write_parquet_reports_metrics(tmp_path):
    df = mf.from_pydict({"x": list(range(50))}).with_column("y", col("x") + 1)
    paths = df.write_parquet(str(tmp_path / "out"))
    assert _by_operator(paths)["Project"]["rows_out"] == 50
    assert _by_operator(df)["Project"]["rows_out"] == 50


def test_in_process_operators_report_progress_and_close_it(corpus):
    stream = io.StringIO()
    previous = set_progress(Progress(stream, mode="log", log_interval=0))
    try:
        _frame(corpus).collect()
    finally:
        set_progress(previous)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("mmbeam progress: ") for line in lines)
    last = lines[-1]  # the summary of close(), with every operator's final counts
    assert "InMemory 20 rows" in last
    assert "Filter+Project[url.download>image.decode>image.width] 19 rows" in last
    assert "4 failed" in last


def test_progress_off_draws_nothing(corpus, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setenv("MMBEAM_PROGRESS", "0")
    previous = set_progress(Progress(stream))
    try:
        _frame(corpus[:3]).collect()
    finally:
        set_progress(previous)
    assert stream.getvalue() == ""
