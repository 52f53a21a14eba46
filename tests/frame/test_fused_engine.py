"""The frame's URL/image chain as one fused, autotuned per-row kernel (issue 4)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

import mmbeam.frame as mf
from mmbeam.expr import ir
from mmbeam.frame import col, context
from mmbeam.plan import nodes as P
from mmbeam.plan.optimizer import optimize
from mmbeam.testing.http_server import FaultServer
from mmbeam.testing.images import encode_sample, make_image


def thumbnails(urls, out):
    return (mf.from_pydict({"url": urls})
            .with_column("image", col("url").url.download().image.decode())
            .with_column("resized", col("image").image.resize(32, 24))
            .with_column("encoded", col("resized").image.encode("PNG"))
            .with_column("path", col("encoded").url.upload(out))
            .select("url", "path"))


def test_the_reference_chain_is_one_fused_expression_without_a_full_size_column(tmp_path):
    df = thumbnails(["http://x/a.jpg"], str(tmp_path))
    projects = [n for n in P.walk(optimize(df._plan)) if isinstance(n, P.Project)]
    assert len(projects) == 1
    (path,) = [e for e in projects[0].exprs if ir.output_name(e) == "path"]
    names = [n.name for n in ir.walk(path) if isinstance(n, ir.Function)]
    assert names == ["url.upload", "image.encode", "image.resize", "image.decode", "url.download"]


def test_fused_chain_writes_every_row_bounded_by_connections_and_explains_its_sizes(
        tmp_path, capsys):
    pixels = [make_image(400 + 10 * i, 300, seed=i) for i in range(24)]
    with FaultServer(latency_s=0.02) as srv:
        urls = [srv.add(f"e/{i}.jpg", encode_sample(p, "JPEG")) for i, p in enumerate(pixels)]
        df = thumbnails(urls, str(tmp_path))
        got = df.to_pydict()
        assert got["url"] == urls  # row order kept
        assert 1 < srv.peak_concurrency <= 32
    assert len(set(got["path"])) == 24 and sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(p) for p in got["path"])
    for path in got["path"]:
        assert Image.open(path).size == (32, 24)
    df.explain(show_all=True)
    text = capsys.readouterr().out
    assert "autotuned batches, fused per-row kernel" in text
    chain = "frame:url.download>image.decode>image.resize>image.encode>url.upload"
    assert f"autotune (last run) {chain}: batch" in text and "ms/elem" in text
    assert "autotune (last run) frame:multimodal_batch_rows: batch" in text


def test_pinned_multimodal_batch_rows_still_work():
    context.set_execution_config(multimodal_batch_rows=2)
    imgs = [np.full((4, 6, 3), i, np.uint8) for i in range(5)]
    out = mf.from_pydict({"i": imgs}).select(
        col("i").image.resize(3, 2).alias("r")).to_pydict()["r"]
    assert [int(a[0, 0, 0]) for a in out] == [0, 1, 2, 3, 4] and out[0].shape == (2, 3, 3)
