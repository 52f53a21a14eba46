"""Failed rows as data: with_exception_handling, Frame.failures, write_parquet(failures_path);
in process and as a Beam pipeline (Dask and Ray: tests/runners/test_frame_results_on_runners.py).
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import mmbeam
import mmbeam.frame as mf
from mmbeam.errors import DownloadError, SchemaError
from mmbeam.frame import DataType, col, context
from mmbeam.testing.images import encode_sample, make_image


def failing_corpus(server, prefix: str) -> list[str]:
    """15 URLs: ids 0-9 JPEGs, 10-11 missing (404), 12-13 not images, 14 always 503."""
    urls = [server.add(f"{prefix}/{i}.jpg", encode_sample(make_image(12, 10, seed=i)))
            for i in range(10)]
    urls += [server.url(f"files/{prefix}/missing{i}.jpg") for i in range(2)]
    urls += [server.add(f"{prefix}/junk{i}.jpg", b"<html>not an image</html>") for i in range(2)]
    return urls + [server.url("status/503")]


EXPECTED_STAGES = {3: "cast", 10: "Download", 11: "Download", 12: "DecodeImage",
                   13: "DecodeImage", 14: "Download"}


def corpus_frame(urls):
    n = [str(i) for i in range(len(urls))]
    n[3] = "three"  # the cast to int fails on this row
    return (mf.from_pydict({"id": list(range(len(urls))), "url": urls, "n": n})
            .with_column("image", col("url").url.download().image.decode().image.resize(4, 4))
            .with_column("k", col("n").cast(DataType.int64())))


def by_id(failures):
    return {row["id"]: row for row in failures.to_pylist()}


@pytest.fixture
def urls(mmbeam_http):
    return failing_corpus(mmbeam_http, "failures")


def test_without_exception_handling_the_first_failure_raises(urls):
    with pytest.raises(DownloadError, match="missing0.jpg"):  # the first in row order
        corpus_frame(urls).exclude("k").collect()


def test_one_run_gives_the_good_rows_and_the_failures_table(urls, mmbeam_http):
    mmbeam_http.reset_stats()
    out = corpus_frame(urls).with_exception_handling().collect()
    assert out.to_pydict()["id"] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    failures = out.failures.to_arrow()
    assert failures.column_names == ["id", "url", "n", "stage", "error_type", "error",
                                     "attempts"]  # the image column is not identifying
    got = by_id(failures)
    assert {i: r["stage"] for i, r in got.items()} == EXPECTED_STAGES
    assert got[10]["error_type"] == "DownloadError" and "missing0.jpg" in got[10]["error"]
    assert got[12]["error_type"] == "DecodeError" and "not an image" in got[12]["error"]
    assert got[3]["n"] == "three" and "three" in got[3]["error"]
    assert got[14]["attempts"] == 4 and got[10]["attempts"] == 1  # 503 retried 3 times
    # the counts equal the metrics', and nothing ran twice
    assert sum(out.metrics.column("failures").to_pylist()) == failures.num_rows == 6
    assert sum(mmbeam_http.hits(u) for u in urls[:10]) == 10


def test_on_error_null_nulls_the_value_and_records_the_failure(urls):
    df = (mf.from_pydict({"id": list(range(15)), "url": urls})
          .with_column("size", col("url").url.download(on_error="null").image.decode()
                       .image.width())
          .with_exception_handling(columns=["id"]))
    out = df.collect()
    got = out.to_pydict()
    # the download's failures are nulled and kept, the decode's (on_error="raise") dropped
    assert got["id"] == [i for i in range(15) if i not in (12, 13)]
    assert [i for i, s in zip(got["id"], got["size"], strict=True) if s is None] == [10, 11, 14]
    failures = out.failures.to_arrow()
    assert failures.column_names == ["id", "stage", "error_type", "error", "attempts"]
    assert {i: r["stage"] for i, r in by_id(failures).items()} == {
        10: "Download", 11: "Download", 12: "DecodeImage", 13: "DecodeImage",
        14: "Download"}
    stage = out.metrics.to_pylist()[-1]
    assert stage["nulls"] == 3 and stage["failures"] == 5 == failures.num_rows


@pytest.mark.parametrize("in_process", [None, False], ids=["in_process", "beam"])
def test_write_parquet_writes_the_failures_beside_the_output(urls, tmp_path, in_process):
    context.set_execution_config(in_process=in_process)
    try:
        paths = corpus_frame(urls).write_parquet(str(tmp_path / "out"),
                                                 failures_path=str(tmp_path / "failed"))
    finally:
        context.set_execution_config(in_process=None)
    written = pq.read_table([p for p in paths.to_pydict()["path"]])
    assert sorted(written.column("id").to_pylist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    failed = pq.read_table(str(tmp_path / "failed"))
    assert sorted(failed.column("id").to_pylist()) == sorted(EXPECTED_STAGES)
    assert sorted(failed.column("stage").to_pylist()) == sorted(EXPECTED_STAGES.values())


def test_iterators_capture_failures_too(urls):
    df = corpus_frame(urls).with_exception_handling(columns=["id"])
    ids = [r["id"] for r in df.iter_rows()]
    assert ids == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert sorted(by_id(df.failures.to_arrow())) == sorted(EXPECTED_STAGES)


def test_unknown_identifying_column_is_a_schema_error(urls):
    with pytest.raises(SchemaError, match="idd"):
        corpus_frame(urls).with_exception_handling(columns=["idd"])


def test_udf_failures_on_a_beam_pipeline(urls):
    @mmbeam.udf(return_dtype=DataType.int64())
    def odd_one_out(ids, images):
        values = ids.to_pylist()
        if any(i % 4 == 1 for i in values):
            raise ValueError(f"refusing {values}")
        return values

    context.set_execution_config(in_process=False)
    try:
        df = corpus_frame(urls).with_column("u", odd_one_out(col("id"), col("image")))
        out = df.with_exception_handling().collect()
    finally:
        context.set_execution_config(in_process=None)
    assert out.to_pydict()["id"] == [0, 2, 4, 6, 7, 8]
    got = by_id(out.failures.to_arrow())
    assert {i: r["stage"] for i, r in got.items()} == {
        **EXPECTED_STAGES, 1: "udf odd_one_out", 5: "udf odd_one_out", 9: "udf odd_one_out"}
    assert got[5]["error_type"] == "UdfError" and "ValueError: refusing [5]" in got[5]["error"]
    assert sum(out.metrics.column("failures").to_pylist()) == len(got) == 9


def test_a_failing_filter_predicate_sends_its_row_to_the_failures():
    df = (mf.from_pydict({"id": [0, 1, 2, 3], "n": ["5", "x", "-1", "7"]})
          .where(col("n").cast(DataType.int64()) > 0).with_exception_handling())
    out = df.collect()
    assert out.to_pydict()["id"] == [0, 3]
    failures = out.failures.to_pylist()
    assert [(r["id"], r["stage"], r["error_type"]) for r in failures] == [
        (1, "cast", "ArrowInvalid")]
