"""read_parquet / read_csv / from_glob_path / write_* on local folders and S3 (moto)."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import mmbeam.frame as mf
from mmbeam.errors import ConfigError, ReadError, SchemaError
from mmbeam.frame import DataType, col
from mmbeam.io.readers import list_files
from mmbeam.plan import nodes as P
from mmbeam.plan.optimizer import optimize


def _write(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


@pytest.fixture
def hive(tmp_path):
    root = tmp_path / "data.pq"
    for year in (2023, 2024):
        for country in ("DE", "FR"):
            n = 3 if country == "DE" else 2
            t = pa.table({"id": [f"{year}-{country}-{i}" for i in range(n)],
                          "v": [float(i) for i in range(n)]})
            _write(root / f"year={year}" / f"country={country}" / "part-0.parquet", t)
    (root / "_SUCCESS").write_text("")
    (root / "year=2023" / ".part-0.parquet.crc").write_text("x")
    return root


def test_hive_partitions_become_typed_columns(hive):
    df = mf.read_parquet(str(hive))
    assert df.schema()["year"] == DataType.int64()
    assert df.schema()["country"] == DataType.string()
    assert df.column_names == ["id", "v", "year", "country"]
    out = df.sort("id").to_pydict()
    assert len(out["id"]) == 10 and out["year"][0] == 2023 and out["country"][0] == "DE"
    assert df.count_rows() == 10  # from Parquet metadata
    assert mf.read_parquet(str(hive), hive_partitioning=False).column_names == ["id", "v"]


def test_file_folder_and_globs(hive):
    one = hive / "year=2024" / "country=FR" / "part-0.parquet"
    assert mf.read_parquet(str(one)).count_rows() == 2
    assert mf.read_parquet(str(hive / "**")).count_rows() == 10
    assert mf.read_parquet(str(hive / "year=2024" / "**" / "*.parquet")).count_rows() == 5
    assert mf.read_parquet([str(one), str(one)]).count_rows() == 2  # same file once
    with pytest.raises(ConfigError, match="no file or folder"):
        mf.read_parquet(str(hive / "missing"))
    with pytest.raises(ConfigError, match="no files match"):
        mf.read_parquet(str(hive / "*.csv"))


def test_partition_filters_prune_files_and_columns_are_pruned(hive):
    df = mf.read_parquet(str(hive)).where((col("country") == "FR") & (col("v") > 0))
    opt = optimize(df.select("id")._plan)
    scan = next(n for n in P.walk(opt) if isinstance(n, P.Scan))
    assert scan.predicate is not None and scan.columns == ("id",)
    from mmbeam.exec.operators import prune_tasks

    assert len(prune_tasks(scan, scan.source.tasks())) == 2
    assert sorted(df.select("id").to_pydict()["id"]) == ["2023-FR-1", "2024-FR-1"]


def test_limit_reads_only_the_files_it_needs(hive):
    df = mf.read_parquet(str(hive)).limit(3)
    opt = optimize(df._plan)
    scan = next(n for n in P.walk(opt) if isinstance(n, P.Scan))
    assert scan.limit == 3 and len(scan.source.tasks(3)) == 1
    assert len(df.to_pydict()["id"]) == 3


def test_list_files_skips_hidden_and_underscore_files(hive):
    _, files, _ = list_files(str(hive))
    assert len(files) == 4 and all(f.path.endswith("part-0.parquet") for f in files)


def test_read_csv(tmp_path):
    (tmp_path / "a.csv").write_text("name,n\nx,1\ny,2\n")
    (tmp_path / "b.csv").write_text("name,n\nz,3\n")
    df = mf.read_csv(str(tmp_path / "*.csv"))
    assert df.schema()["n"] == DataType.int64()
    assert df.where(col("n") > 1).to_pydict() == {"name": ["y", "z"], "n": [2, 3]}
    (tmp_path / "c.tsv").write_text("1\tq\n")
    tsv = mf.read_csv(str(tmp_path / "c.tsv"), delimiter="\t", has_headers=False)
    assert tsv.to_pylist() == [{"f0": 1, "f1": "q"}]


def test_from_glob_path(tmp_path):
    for i in range(3):
        (tmp_path / "imgs" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / "sub" / f"{i}.jpg").write_bytes(b"x" * (i + 1))
    df = mf.from_glob_path(str(tmp_path / "imgs" / "**" / "*.jpg"))
    assert df.schema()["path"] == DataType.string() and df.schema()["size"] == DataType.int64()
    out = df.sort("path").to_pydict()
    assert out["size"] == [1, 2, 3] and out["path"][0].endswith("sub/0.jpg")
    assert df.count_rows() == 3
    assert df.where(col("size") > 1).count_rows() == 2


def test_write_parquet_and_csv_round_trip(tmp_path):
    df = mf.from_pydict({"k": ["a", "b", "a", None], "v": [1, 2, 3, 4]})
    written = df.write_parquet(str(tmp_path / "out"))
    paths = written.to_pydict()["path"]
    assert paths and all(os.path.exists(p) for p in paths)
    assert mf.read_parquet(str(tmp_path / "out")).sort("v").to_pydict() == df.to_pydict()
    parts = df.write_parquet(str(tmp_path / "parts"), partition_cols=["k"]).to_pydict()["path"]
    assert sorted(os.path.basename(os.path.dirname(p)) for p in parts) == [
        "k=__HIVE_DEFAULT_PARTITION__", "k=a", "k=b"]
    back = mf.read_parquet(str(tmp_path / "parts")).sort("v").to_pydict()
    assert back == {"v": [1, 2, 3, 4], "k": ["a", "b", "a", None]}
    df.write_csv(str(tmp_path / "csv"))
    assert mf.read_csv(str(tmp_path / "csv")).sort("v").to_pydict()["v"] == [1, 2, 3, 4]


def test_images_survive_parquet(tmp_path):
    import numpy as np

    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    mf.from_pydict({"img": [img, None]}).write_parquet(str(tmp_path / "imgs"))
    back = mf.read_parquet(str(tmp_path / "imgs"))
    assert back.schema()["img"] == DataType.image("RGB")
    got = back.to_pydict()["img"]
    np.testing.assert_array_equal(got[0], img)
    assert got[1] is None


def test_s3_read_and_write(mmbeam_s3, mmbeam_bucket_name):
    bucket = mmbeam_s3.make_bucket(mmbeam_bucket_name)
    cfg = mmbeam_s3.io_config()
    for country, ids in (("DE", [1, 2]), ("FR", [3])):
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ids}), buf)
        mmbeam_s3.put(f"{bucket}/owners.pq/country={country}/part-0.parquet", buf.getvalue())
    df = mf.read_parquet(f"{bucket}/owners.pq/**", io_config=cfg)
    assert df.sort("id").to_pydict() == {"id": [1, 2, 3], "country": ["DE", "DE", "FR"]}
    paths = df.write_parquet(f"{bucket}/out", io_config=cfg).to_pydict()["path"]
    assert all(p.startswith(f"{bucket}/out/") for p in paths)
    total = sum(pc.sum(pq.read_table(io.BytesIO(mmbeam_s3.get(p)))["id"]).as_py() for p in paths)
    assert total == 6
    listed = mf.from_glob_path(f"{bucket}/owners.pq/**", io_config=cfg).to_pydict()
    assert sorted(listed["path"])[0] == f"{bucket}/owners.pq/country=DE/part-0.parquet"


# -- files that disagree, and files that are damaged ------------------------------------------
@pytest.fixture(params=["in_process", "beam"])
def engine(request):
    """Both execution paths read through the same source."""
    from mmbeam.frame import context

    context.set_execution_config(in_process=None if request.param == "in_process" else False)
    yield request.param
    context.set_execution_config(in_process=None)


def _corrupt_data_page(path):
    """Overwrite bytes inside the first (snappy-compressed) data page, keeping the footer."""
    meta = pq.read_metadata(path)
    column = meta.row_group(0).column(0)
    start = column.data_page_offset + column.total_compressed_size // 2
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * 64)


def test_a_corrupt_data_page_is_an_error_naming_the_file(tmp_path, engine):
    """Before: a bare ``OSError: Corrupt snappy compressed data.``"""
    words = [f"row {i} " * 20 for i in range(2000)]
    for name in ("good", "bad"):
        pq.write_table(pa.table({"s": words}), tmp_path / f"{name}.parquet", compression="snappy",
                       use_dictionary=False)
    _corrupt_data_page(tmp_path / "bad.parquet")
    df = mf.read_parquet(str(tmp_path))
    with pytest.raises(ReadError, match=r"reading .*bad\.parquet failed: .*(Corrupt|snappy)") \
            as info:
        df.collect()
    assert isinstance(info.value, OSError)  # on either engine, as code catching OSError expects


def test_a_type_clash_between_files_names_both_files_and_the_column(tmp_path):
    """Before: a bare ArrowInvalid when the second file was read."""
    pq.write_table(pa.table({"id": [1, 2], "v": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [3], "v": ["three"]}), tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match=r"column 'v' is int64 in .*a\.parquet but string in "
                                          r".*b\.parquet"):
        mf.read_parquet(str(tmp_path))


def test_files_are_unified_by_column_name(tmp_path, engine):
    """Before: the schema came from the first file and ``extra`` was silently dropped."""
    pq.write_table(pa.table({"id": [1, 2], "n": pa.array([1, 2], pa.int32())}),
                   tmp_path / "a.parquet")
    pq.write_table(pa.table({"extra": ["x"], "id": [3], "n": pa.array([3], pa.int64())}),
                   tmp_path / "b.parquet")
    df = mf.read_parquet(str(tmp_path))
    assert df.column_names == ["id", "n", "extra"] and df.schema()["n"] == DataType.int64()
    assert df.sort("id").to_pydict() == {"id": [1, 2, 3], "n": [1, 2, 3],
                                         "extra": [None, None, "x"]}
    assert df.select("extra").to_pydict() == {"extra": [None, None, "x"]}
    assert df.where(col("extra").not_null()).count_rows() == 1 and df.count_rows() == 3


def test_a_column_name_differing_only_in_case_is_an_error(tmp_path):
    """Before: ``url`` in one file and ``URL`` in another silently gave null urls."""
    pq.write_table(pa.table({"url": ["http://a/1.jpg"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"URL": ["http://a/2.jpg"]}), tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match=r"'URL' in .*b\.parquet and 'url' in .*a\.parquet "
                                          "differ only in case"):
        mf.read_parquet(str(tmp_path))
    both = tmp_path / "both"  # one file with both names: two distinct columns, no error
    both.mkdir()
    pq.write_table(pa.table({"url": ["u"], "URL": ["U"]}), both / "c.parquet")
    assert mf.read_parquet(str(both)).to_pydict() == {"url": ["u"], "URL": ["U"]}


def test_a_file_that_lost_a_requested_column_is_an_error_not_nulls(tmp_path, engine):
    """A file rewritten after the read was planned, ``url`` renamed ``URL``: before, null rows."""
    pq.write_table(pa.table({"url": ["http://a/1.jpg"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"url": ["http://a/2.jpg"]}), tmp_path / "b.parquet")
    df = mf.read_parquet(str(tmp_path))
    pq.write_table(pa.table({"URL": ["http://a/2.jpg"]}), tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match=r"b\.parquet has no column 'url' .*did you mean 'URL'"):
        df.collect()
