"""read_parquet / write_parquet through the frame on s3:// (moto) and gs:// (GCS emulator):
a file, a folder, ``**`` globs, hive partitions; on both execution paths."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmbeam.frame as mf
from mmbeam.frame import DataType, col, context

ROWS = {("2023", "DE"): [1, 2], ("2023", "FR"): [3], ("2024", "DE"): [4, 5, 6], ("2024", "FR"): [7]}


@pytest.fixture(params=["s3", "gcs"])
def store(request, mmbeam_bucket_name):
    """(server, bucket URL, io_config) with a hive-partitioned Parquet dataset at owners.pq/."""
    server = request.getfixturevalue(f"mmbeam_{request.param}")
    bucket = server.make_bucket(mmbeam_bucket_name)
    for (year, country), ids in ROWS.items():
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ids, "name": [f"n{i}" for i in ids]}), buf)
        server.put(f"{bucket}/owners.pq/year={year}/country={country}/part-0.parquet",
                   buf.getvalue())
    server.put(f"{bucket}/owners.pq/_SUCCESS", b"ok")  # a marker the reader skips
    return server, bucket, server.io_config()


@pytest.fixture(params=[None, False], ids=["in_process", "beam"])
def path_mode(request):
    context.set_execution_config(in_process=request.param)  # restored by tests/conftest.py
    return request.param


def test_read_a_file_a_folder_and_globs(store, path_mode):
    _, bucket, cfg = store
    one = mf.read_parquet(f"{bucket}/owners.pq/year=2024/country=DE/part-0.parquet",
                          io_config=cfg)
    assert one.sort("id").to_pydict()["id"] == [4, 5, 6]
    folder = mf.read_parquet(f"{bucket}/owners.pq", io_config=cfg)
    assert folder.column_names == ["id", "name", "year", "country"]
    assert folder.schema()["year"] == DataType.int64()
    assert folder.count_rows() == 7
    out = folder.sort("id").to_pydict()
    assert out["id"] == list(range(1, 8))
    assert out["year"] == [2023, 2023, 2023, 2024, 2024, 2024, 2024]
    assert out["country"] == ["DE", "DE", "FR", "DE", "DE", "DE", "FR"]
    everything = mf.read_parquet(f"{bucket}/owners.pq/**", io_config=cfg)
    assert sorted(everything.to_pydict()["id"]) == list(range(1, 8))
    deep = mf.read_parquet(f"{bucket}/owners.pq/year=2024/**/*.parquet", io_config=cfg)
    assert sorted(deep.to_pydict()["id"]) == [4, 5, 6, 7]
    listed = mf.from_glob_path(f"{bucket}/owners.pq/**/*.parquet", io_config=cfg).to_pydict()
    assert len(listed["path"]) == 4 and all(size > 0 for size in listed["size"])
    assert sorted(listed["path"])[0] == f"{bucket}/owners.pq/year=2023/country=DE/part-0.parquet"


def test_hive_filters_prune_remote_files(store, path_mode):
    _, bucket, cfg = store
    df = mf.read_parquet(f"{bucket}/owners.pq", io_config=cfg)
    fr = df.where((col("country") == "FR") & (col("year") == 2024)).select("id", "name")
    assert fr.to_pydict() == {"id": [7], "name": ["n7"]}


def test_write_parquet_to_the_store_and_read_it_back(store, path_mode):
    server, bucket, cfg = store
    df = mf.from_pydict({"id": [1, 2, 3, None], "country": ["DE", "FR", "DE", None]})
    paths = df.write_parquet(f"{bucket}/out", partition_cols=["country"],
                             io_config=cfg).to_pydict()["path"]
    assert paths and all(p.startswith(f"{bucket}/out/country=") for p in paths)
    assert len(server.ls(f"{bucket}/out")) == len(paths) == 3
    back = mf.read_parquet(f"{bucket}/out", io_config=cfg).sort("id").to_pydict()
    assert back == {"id": [1, 2, 3, None], "country": ["DE", "FR", "DE", None]}
    plain = df.write_parquet(f"{bucket}/plain", io_config=cfg).to_pydict()["path"]
    table = pq.read_table(io.BytesIO(server.get(plain[0])))
    assert table.column("id").to_pylist() == [1, 2, 3, None]
