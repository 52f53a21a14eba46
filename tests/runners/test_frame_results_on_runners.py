"""Frame iterators on the Beam executor (local Beam, Dask, Ray): the same rows as to_arrow();
metrics from the runners' counters."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import mmbeam
from mmbeam.frame import context
from mmbeam.testing.images import encode_sample, make_image


@pytest.fixture
def on_runner(runner_name, make_runner):
    """Frames run on the parametrised runner (local: a Beam pipeline, not in-process)."""
    if runner_name == "dask":
        context.set_runner_dask(make_runner().address)
    elif runner_name == "ray":
        make_runner()
        context.set_runner_ray()
    else:
        context.set_execution_config(in_process=False)
    yield runner_name
    context.set_runner_local()
    context.set_execution_config(in_process=None)


def test_every_iterator_gives_the_rows_of_to_arrow(mmbeam_http, on_runner):
    import torch

    urls = [mmbeam_http.add(f"iter-runners/{i}.jpg", encode_sample(make_image(24, 16, seed=i)))
            for i in range(30)]
    df = (mmbeam.from_pydict({"id": list(range(30)), "url": urls})
          .where(mmbeam.col("id") % 5 != 0)
          .with_column("image", mmbeam.col("url").url.download().image.decode()))
    expected = df.to_arrow()
    assert expected.num_rows == 24
    ops = {row["operator"]: row for row in df.metrics.to_pylist()}  # from Beam's counters
    stage = ops["Filter+Project[url.download>image.decode]"]
    assert (stage["rows_in"], stage["rows_out"], stage["nulls"]) == (30, 24, 0)
    assert ops["InMemory"]["rows_out"] == 30 and stage["seconds"] > 0
    batches = list(df.iter_batches(batch_size=7))
    assert [b.num_rows for b in batches] == [7, 7, 7, 3]
    assert pa.concat_tables(batches).equals(expected)
    numpy = list(df.iter_batches(batch_size=10, batch_format="numpy"))
    images = np.stack(df.to_pydict()["image"])
    assert np.array_equal(np.concatenate([b["image"] for b in numpy]), images)
    torch_batches = list(df.iter_torch_batches(batch_size=10))
    assert torch.equal(torch.cat([b["image"] for b in torch_batches]), torch.from_numpy(images))
    assert torch.cat([b["id"] for b in torch_batches]).tolist() == expected["id"].to_pylist()
    assert [r["id"] for r in df.iter_rows()] == expected["id"].to_pylist()


def test_failures_table_from_the_same_run(mmbeam_http, on_runner):
    """404s, non-images, a 503 that is retried and a UDF raising on some rows: the good rows
    and every failure from one run, counts equal to the metrics'."""
    urls = [mmbeam_http.add(f"fail-runners/{i}.jpg", encode_sample(make_image(12, 10, seed=i)))
            for i in range(8)]
    urls += [mmbeam_http.url("files/fail-runners/missing.jpg"),
             mmbeam_http.add("fail-runners/junk.jpg", b"<html>no</html>"),
             mmbeam_http.url("status/503")]

    @mmbeam.udf(return_dtype=mmbeam.DataType.int64())
    def picky(ids, images):
        values = ids.to_pylist()
        if 5 in values:
            raise ValueError("five")
        return values

    df = (mmbeam.from_pydict({"id": list(range(11)), "url": urls})
          .with_column("image", mmbeam.col("url").url.download().image.decode())
          .with_column("p", picky(mmbeam.col("id"), mmbeam.col("image")))
          .with_exception_handling(columns=["id"]))
    out = df.collect()
    assert sorted(out.to_pydict()["id"]) == [0, 1, 2, 3, 4, 6, 7]
    failures = {r["id"]: r for r in out.failures.to_pylist()}
    assert {i: r["stage"] for i, r in failures.items()} == {
        5: "udf picky", 8: "Download", 9: "DecodeImage", 10: "Download"}
    assert failures[10]["attempts"] == 4 and failures[5]["error_type"] == "UdfError"
    assert sum(out.metrics.column("failures").to_pylist()) == 4
