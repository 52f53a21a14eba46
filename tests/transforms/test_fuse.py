"""Fuse and the autotuned window: same outputs as the separate transforms, errors per stage,
bounded concurrency, reduced-scale decode chosen from the graph, the memory budget option."""

import os
import pickle
import re

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from mmbeam import transforms as mt
from mmbeam.errors import ConfigError, DecodeError, DownloadError, UnsafePathError
from mmbeam.testing.collect import run_collect
from mmbeam.testing.http_server import FaultServer
from mmbeam.testing.images import encode_sample, make_image


@pytest.fixture(scope="module")
def served(serve_jpegs):
    return serve_jpegs("fuse", [(700 + 40 * i, 500) for i in range(10)], orientations=True,
                       name="f{i}.jpg")


def parts(out, **kw):
    return (mt.Download(max_connections=4, **kw), mt.DecodeImage(**kw), mt.ResizeImage(64, 48, **kw),
            mt.EncodeImage("PNG", **kw), mt.Upload(str(out), **kw))


def files(folder):
    return {name: np.asarray(Image.open(os.path.join(folder, name))) for name in os.listdir(folder)}


def test_fused_writes_the_same_pixels_as_the_separate_transforms(served, tmp_path):
    pairs = sorted(served.items())
    chained = tmp_path / "chained"
    fused = tmp_path / "fused"

    def separate(p):
        pcoll = p | beam.Create(pairs)
        for t in parts(chained, keyed=True):
            pcoll = pcoll | t
        return pcoll

    a = run_collect(separate)
    b = run_collect(lambda p: p | beam.Create(pairs) | mt.Fuse(*parts(fused, keyed=True)))
    assert sorted(k for k, _ in b.outputs) == sorted(served)
    left, right = files(chained), files(fused)
    assert set(left) == set(right) == set(served)
    for name in left:
        assert left[name].shape == (48, 64, 3)
        assert np.array_equal(left[name], right[name])  # both decode at the same reduced scale
    stage = "Download+DecodeImage+ResizeImage+EncodeImage+Upload"
    for part in ("Download", "DecodeImage", "ResizeImage", "EncodeImage", "Upload"):
        assert b.counter(part, "succeeded") == len(served) == a.counter(part, "succeeded")
    window = b.result.metrics().query()["distributions"]
    assert any(d.key.metric.namespace == stage and d.key.metric.name == "window" for d in window)


@pytest.mark.parametrize(
    "broken, stage, error",
    [("files/fuse/missing.jpg", "Download", DownloadError),
     ("files/fuse/junk.jpg", "DecodeImage", DecodeError),
     ("files/fuse/f0.jpg", "Upload", UnsafePathError)],
)
def test_each_stage_routes_its_failure(served, mmbeam_http, tmp_path, broken, stage, error):
    mmbeam_http.add("fuse/junk.jpg", b"<html>not an image</html>")
    url = mmbeam_http.url(broken)
    key = "../escape.png" if stage == "Upload" else "bad.png"
    pairs = [("ok.png", served["f1.jpg"]), (key, url)]
    fuse = mt.Fuse(mt.Download(retries=0, keyed=True), mt.DecodeImage(keyed=True),
                   mt.ResizeImage(8, 8, keyed=True), mt.EncodeImage("PNG", keyed=True),
                   mt.Upload(str(tmp_path), keyed=True))
    good, failed = run_collect(
        lambda p: p | beam.Create(pairs) | fuse.with_exception_handling()).outputs
    assert [k for k, _ in good] == ["ok.png"]
    (record,) = failed
    assert record.stage == stage and record.element == (key, url)
    assert f"{stage} failed for key {key!r}" in record.error
    with pytest.raises(error, match=f"{stage} failed for key {re.escape(repr(key))}") as info:
        run_collect(lambda p: p | beam.Create(pairs) | fuse)
    assert type(info.value) is error
    nulling = mt.Fuse(mt.Download(retries=0, keyed=True, on_error="null"),
                      mt.DecodeImage(keyed=True, on_error="null"), mt.ResizeImage(8, 8, keyed=True),
                      mt.EncodeImage("PNG", keyed=True),
                      mt.Upload(str(tmp_path), keyed=True, on_error="null"))
    out = run_collect(lambda p: p | beam.Create(pairs) | nulling)
    assert dict(out.outputs)[key] is None and out.counter(stage, "nulls") == 1


def test_window_is_the_backpressure_and_connections_bound_the_server():
    with FaultServer(latency_s=0.03) as slow:
        urls = [slow.add(f"w{i}.jpg", encode_sample(make_image(64, 64, seed=i), "JPEG"))
                for i in range(40)]
        out = run_collect(lambda p: p | beam.Create(urls) | mt.Fuse(
            mt.Download(max_connections=3), mt.DecodeImage(), mt.ResizeImage(8, 8))).outputs
        assert len(out) == 40 and all(a.shape == (8, 8, 3) for a in out)
        assert 1 < slow.peak_concurrency <= 3


def _decode_min_size(images):
    """The min_size the decode DoFn producing ``images`` runs with, once serialized to run."""
    clone = pickle.loads(pickle.dumps(images.producer.transform.fn))
    return clone.chain.steps[0].fn.args[0].keywords["min_size"]


def test_decode_feeding_only_resizes_decodes_at_reduced_scale(served):
    p = beam.Pipeline()
    images = p | beam.Create(["u"]) | mt.Download() | mt.DecodeImage()
    _ = images | "small" >> mt.ResizeImage(64, 48)
    _ = images | "big" >> mt.ResizeImage(32, 100, mode="fit")
    assert _decode_min_size(images) == (64, 100)  # enough for every resize
    _ = images | beam.Map(lambda a: a.shape)  # a consumer that wants the full image
    assert _decode_min_size(images) is None
    explicit = p | "E" >> beam.Create([b""]) | "D2" >> mt.DecodeImage(min_size=(10, 10))
    _ = explicit | "R" >> mt.ResizeImage(64, 48)
    assert _decode_min_size(explicit) == (10, 10)


def test_memory_budget_option_caps_the_window(served):
    options = PipelineOptions(["--memory_budget=200KB"])
    assert options.view_as(mt.MmbeamOptions).memory_budget == "200KB"
    urls = sorted(served.values()) * 3
    out = run_collect(lambda p: p | beam.Create(urls) | mt.Fuse(
        mt.Download(max_connections=8), mt.DecodeImage(), mt.ResizeImage(16, 16)), options=options)
    assert len(out.outputs) == 30
    sizes = [d for d in out.result.metrics().query()["distributions"]
             if d.key.metric.name == "window"]
    # each row holds its ~40-60 KB JPEG: the budget allows about 4 rows, below the 8 connections
    assert sizes and 1 <= max(d.committed.max for d in sizes) < 8
    with pytest.raises(ConfigError, match="--memory_budget"):
        run_collect(lambda p: p | beam.Create([b""]) | mt.DecodeImage(),
                    options=PipelineOptions(["--memory_budget=lots"]))


def test_fuse_checks_its_parts_and_pickles(tmp_path):
    with pytest.raises(ConfigError, match="at least one"):
        mt.Fuse()
    with pytest.raises(ConfigError, match="agree on keyed"):
        mt.Fuse(mt.Download(keyed=True), mt.DecodeImage())
    with pytest.raises(ConfigError, match="on the Fuse"):
        mt.Fuse(mt.Download().with_exception_handling())
    with pytest.raises(ConfigError, match="per-element"):
        mt.Fuse(mt.Join(on="k"))
    fuse = mt.Fuse(*parts(tmp_path)).with_exception_handling()
    clone = pickle.loads(pickle.dumps(fuse))
    assert clone._failures and [type(p) for p in clone.parts] == [type(p) for p in fuse.parts]
    fn = pickle.loads(pickle.dumps(fuse.make_fn()))
    assert fn.chain.stages == ("Download", "DecodeImage", "ResizeImage", "EncodeImage", "Upload")
