"""Batch iterators: iter_batches (arrow/numpy/pandas), iter_torch_batches, iter_rows; streaming,
early stop, same rows as to_arrow() (Dask and Ray: tests/runners/test_frame_iterators.py)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

import mmbeam.frame as mf
from mmbeam.errors import ConfigError
from mmbeam.frame import col, context


@pytest.fixture
def served(mmbeam_http, serve_jpegs):
    """40 JPEGs of one size and 4 of other sizes, on the session's FaultServer."""
    same = list(serve_jpegs("iter", [(40, 30)] * 40, name="{i}.jpg").values())
    mixed = list(serve_jpegs("iter", [(20 + i, 10) for i in range(4)], name="m{i}.jpg").values())
    return mmbeam_http, same, mixed


def _images(urls):
    return (mf.from_pydict({"id": list(range(len(urls))), "url": urls})
            .with_column("image", col("url").url.download().image.decode()))


def test_arrow_batches_have_the_size_asked_and_the_rows_of_to_arrow():
    df = mf.from_pydict({"id": list(range(1000)), "s": [f"r{i}" for i in range(1000)]}) \
        .where(col("id") % 3 != 0).with_column("twice", col("id") * 2)
    batches = list(df.iter_batches(batch_size=100))
    assert [b.num_rows for b in batches] == [100] * 6 + [66]
    assert pa.concat_tables(batches).equals(df.to_arrow())
    assert [b.num_rows for b in df.iter_batches(batch_size=100, drop_last=True)] == [100] * 6
    assert sum(b.num_rows for b in df.iter_batches(batch_size=None)) == 666


def test_numpy_and_pandas_batches(served):
    _, same, mixed = served
    df = _images(same[:10])
    got = list(df.iter_batches(batch_size=4, batch_format="numpy"))
    assert [len(b["id"]) for b in got] == [4, 4, 2]
    assert got[0]["image"].shape == (4, 30, 40, 3) and got[0]["image"].dtype == np.uint8
    expected = df.to_pydict()
    assert np.array_equal(np.concatenate([b["image"] for b in got]), np.stack(expected["image"]))
    assert list(np.concatenate([b["url"] for b in got])) == expected["url"]
    # images of different sizes: an object array of HxWxC arrays
    uneven = next(iter(_images(mixed).iter_batches(batch_size=4, batch_format="numpy")))
    assert uneven["image"].dtype == object and [i.shape[1] for i in uneven["image"]] == [
        20, 21, 22, 23]
    frame = next(iter(df.iter_batches(batch_size=3, batch_format="pandas")))
    assert list(frame["id"]) == [0, 1, 2] and frame["image"][0].shape == (30, 40, 3)


def test_torch_batches_are_tensors_with_dtypes(served):
    import torch

    _, same, _ = served
    df = _images(same[:6]).with_column("half", col("id") / 2)
    batches = list(df.iter_torch_batches(batch_size=4, dtypes={"half": torch.float32}))
    first = batches[0]
    assert first["image"].dtype == torch.uint8 and tuple(first["image"].shape) == (4, 30, 40, 3)
    assert first["id"].dtype == torch.int64 and first["id"].tolist() == [0, 1, 2, 3]
    assert first["half"].dtype == torch.float32 and first["half"].tolist() == [0, .5, 1, 1.5]
    assert first["url"] == same[:4]  # strings stay lists
    assert torch.equal(torch.cat([b["image"] for b in batches]),
                       torch.from_numpy(np.stack(df.to_pydict()["image"])))


def test_iter_rows_streams_rows_with_image_arrays(served):
    _, same, _ = served
    df = _images(same[:5])
    rows = list(df.iter_rows())
    assert [r["id"] for r in rows] == list(range(5))
    assert rows[2]["image"].shape == (30, 40, 3)
    assert [r["id"] for r in df] == list(range(5))


def test_a_collected_frame_iterates_its_kept_rows_without_running_again(runs):
    df = mf.from_pydict({"x": [1, 2, 3]}).with_column("y", col("x") + 1)
    assert [r["y"] for r in df.iter_rows()] == [2, 3, 4]  # a Beam run on this runner
    assert runs.runs == 1
    df = df.collect()
    assert [b.num_rows for b in df.iter_batches(batch_size=2)] == [2, 1]
    assert [r["y"] for r in df.iter_rows()] == [2, 3, 4]
    assert runs.runs == 2


def test_stopping_early_stops_the_downloads(served):
    """The first batch arrives before the rest is computed, and breaking out of the loop
    stops the work: no row is downloaded past the sub-batch in flight."""
    server, same, _ = served
    urls = same * 5  # 200 rows
    context.set_execution_config(multimodal_batch_rows=8)
    server.reset_stats()
    df = mf.from_pydict({"url": urls}).with_column("bytes", col("url").url.download())
    batches = df.iter_batches(batch_size=8)
    first = next(batches)
    assert first.num_rows == 8
    batches.close()
    done = sum(server.hits(u) for u in same)
    time.sleep(0.3)  # nothing keeps running in the background
    assert sum(server.hits(u) for u in same) == done
    assert 8 <= done <= 16  # the consumed batch and at most one sub-batch in flight
    rows = df.iter_rows()
    assert next(rows)["url"] == urls[0]
    rows.close()
    assert sum(server.hits(u) for u in same) <= done + 16


def test_unknown_format_and_bad_batch_size_are_config_errors():
    df = mf.from_pydict({"x": [1]})
    with pytest.raises(ConfigError, match="Did you mean 'numpy'"):
        next(df.iter_batches(batch_format="nmupy"))
    with pytest.raises(ConfigError, match="batch_size"):
        next(df.iter_batches(batch_size=0))
