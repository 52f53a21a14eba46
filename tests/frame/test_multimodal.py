"""URL and image expressions: fused chains, on_error semantics, limit pushdown, uploads."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mmbeam.frame as mf
import mmbeam.ops.decode as decode_mod
from mmbeam.errors import DecodeError, DownloadError, SchemaError
from mmbeam.expr import ir
from mmbeam.frame import DataType, col
from mmbeam.plan import nodes as P
from mmbeam.plan.optimizer import optimize
from mmbeam.testing.images import encode_sample, make_image


@pytest.fixture
def served(mmbeam_http, serve_jpegs):
    return mmbeam_http, list(serve_jpegs("mm", [(64 + i, 48) for i in range(6)]).values())


def test_download_decode_chain_and_image_functions(served):
    _, urls = served
    df = mf.from_pydict({"url": urls[:3]})
    img = col("url").url.download().image.decode()
    out = df.select(
        img.image.width().alias("w"), img.image.height().alias("h"),
        img.image.crop((1, 2, 10, 5)).alias("crop"),
        img.image.to_mode("L").alias("gray"),
        img.image.resize(8, 6).image.encode("PNG").alias("png"),
    ).to_pydict()
    assert out["w"] == [64, 65, 66] and out["h"] == [48, 48, 48]
    assert out["crop"][0].shape == (5, 10, 3)
    assert out["gray"][0].shape == (48, 64, 1)
    assert out["png"][0][:8] == b"\x89PNG\r\n\x1a\n"
    decoded = mf.from_pydict({"png": out["png"]}).select(
        col("png").image.decode().alias("i")).to_pydict()["i"]
    assert decoded[0].shape == (6, 8, 3)


def test_width_height_of_an_image_column_read_the_struct():
    imgs = [np.zeros((3, 5, 3), np.uint8), None]
    out = mf.from_pydict({"i": imgs}).select(col("i").image.width().alias("w"),
                                             col("i").image.height().alias("h")).to_pydict()
    assert out == {"w": [5, None], "h": [3, None]}


def test_chains_fuse_into_one_expression_and_decode_at_reduced_scale(served, monkeypatch):
    server, urls = served
    big = server.add("mm/big.jpg", encode_sample(make_image(800, 600, seed=9)))
    df = mf.from_pydict({"url": [big], "other": [1]})
    df = df.with_column("image", col("url").url.download().image.decode())
    df = df.with_column("thumb", col("image").image.resize(50, 40))
    df = df.select("thumb")
    opt = optimize(df._plan)
    projects = [n for n in P.walk(opt) if isinstance(n, P.Project)]
    assert len(projects) == 1  # one fused projection, no "image" column in between
    names = [n.name for n in ir.walk(projects[0].exprs[0]) if isinstance(n, ir.Function)]
    assert names == ["image.resize", "image.decode", "url.download"]
    seen = []
    real = decode_mod.decode_image

    def spy(data, mode="RGB", **kw):
        out = real(data, mode, **kw)
        seen.append((kw.get("min_size"), out.shape))
        return out

    monkeypatch.setattr(decode_mod, "decode_image", spy)
    thumb = df.to_pydict()["thumb"][0]
    assert thumb.shape == (40, 50, 3)
    assert seen[0][0] == (50, 40) and seen[0][1][0] < 600  # decoded below full size


def test_on_error_null_gives_null_rows_never_drops(served):
    server, urls = served
    server.add("mm/not-an-image.jpg", b"<html>nope</html>")
    bad = [urls[0], server.url("files/mm/missing.jpg"), None,
           server.url("files/mm/not-an-image.jpg")]
    df = mf.from_pydict({"url": bad}).with_column(
        "img", col("url").url.download(on_error="null").image.decode(on_error="null"))
    out = df.collect()
    got = out.to_pydict()["img"]
    assert len(got) == 4 and got[0] is not None and got[1:] == [None, None, None]
    assert out._counts == {"url.download": 1, "image.decode": 1}


def test_on_error_raise_names_the_url(served):
    server, urls = served
    missing = server.url("files/mm/gone.jpg")
    df = mf.from_pydict({"url": [urls[0], missing]})
    with pytest.raises(DownloadError, match="gone.jpg"):
        df.with_column("b", col("url").url.download()).collect()
    server.add("mm/junk.jpg", b"junk")
    df = mf.from_pydict({"url": [server.url("files/mm/junk.jpg")]})
    with pytest.raises(DecodeError, match="image.decode failed for"):
        df.with_column("i", col("url").url.download().image.decode()).collect()


def test_show_downloads_only_the_rows_it_shows(served, capsys):
    server, urls = served
    server.reset_stats()
    df = mf.from_pydict({"url": urls}).with_column("bytes", col("url").url.download())
    df.show(2)
    assert sum(server.hits(u) for u in urls) == 2
    assert "(Showing first 2 of 6 rows)" in capsys.readouterr().out


def test_upload_writes_content_named_files(tmp_path, served):
    _, urls = served
    df = mf.from_pydict({"url": urls[:2]}).with_column(
        "path", col("url").url.download().image.decode().image.resize(16, 16)
        .image.encode("JPEG", quality=80).url.upload(str(tmp_path / "thumbs")))
    paths = df.to_pydict()["path"]
    assert len(set(paths)) == 2 and all(os.path.exists(p) for p in paths)
    assert all(p.startswith(str(tmp_path / "thumbs")) for p in paths)
    assert open(paths[0], "rb").read(2) == b"\xff\xd8"
    assert df.schema()["path"] == DataType.string()


def test_image_type_mismatch_before_running(runs):
    df = mf.from_pydict({"s": ["a"]})
    with pytest.raises(SchemaError, match="image.resize expects an Image"):
        df.with_column("x", col("s").image.resize(2, 2))
    assert runs.runs == 0


def test_show_over_a_filtered_parquet_scan_downloads_only_shown_rows(served, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    server, urls = served
    pq.write_table(pa.table({"id": list(range(6)), "url": urls}), tmp_path / "urls.parquet")
    server.reset_stats()
    df = mf.read_parquet(str(tmp_path / "urls.parquet")).where(col("id") % 2 == 1)
    df = df.with_column("size", col("url").url.download().image.decode().image.width())
    df.show(2)
    out = capsys.readouterr().out
    assert [server.hits(u) for u in urls] == [0, 1, 0, 1, 0, 0]
    assert "65" in out and "67" in out and "(Showing first 2 rows)" in out


@pytest.mark.parametrize("in_process", [None, False], ids=["in_process", "beam"])
def test_fused_thumbnail_is_the_reduced_scale_decode_resized(served, in_process):
    """The frame's thumbnail equals resize(decode at the reduced scale), pixel for pixel, and
    not resize(decode at full size): the two differ for this photo, so a frame that decoded at
    full size would give other pixels. Checked on both execution paths."""
    from mmbeam.ops.decode import decode_image
    from mmbeam.ops.resize import resize_image

    server, _ = served
    data = encode_sample(make_image(800, 600, seed=11))
    url = server.add("mm/reduced.jpg", data)
    reduced = resize_image(decode_image(data, min_size=(50, 40)), 50, 40)
    full = resize_image(decode_image(data), 50, 40)
    assert decode_image(data, min_size=(50, 40)).shape[0] < 600
    assert not np.array_equal(reduced, full)
    mf.context.set_execution_config(in_process=in_process)  # restored by the conftest
    out = mf.from_pydict({"url": [url]}).select(
        col("url").url.download().image.decode().image.resize(50, 40).alias("thumb")).to_pydict()
    assert np.array_equal(out["thumb"][0], reduced)


def test_limit_after_a_filter_on_downloaded_bytes_stops_at_the_first_sub_batch(mmbeam_http):
    """Rows are filtered on what was downloaded, so the limit cannot move to the source: the
    stream must stop pulling once it has its row. With sub-batches of two, only the first
    sub-batch's URLs are fetched (a stream that read ahead would fetch the second too)."""
    urls = [mmbeam_http.add(f"mm/limit/{i}.bin", bytes(10 + i)) for i in range(8)]
    mmbeam_http.reset_stats()
    mf.context.set_execution_config(multimodal_batch_rows=2)  # restored by the conftest
    df = mf.from_pydict({"url": urls, "i": list(range(8))}).with_column(
        "data", col("url").url.download())
    out = df.where(col("data").not_null()).limit(1).select("i").to_pydict()
    assert out == {"i": [0]}
    assert [mmbeam_http.hits(u) for u in urls] == [1, 1, 0, 0, 0, 0, 0, 0]
