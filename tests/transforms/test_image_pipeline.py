"""The transforms chained in real Beam pipelines on the in-process runner, over loopback HTTP."""

import io
import os
import pickle
import urllib.request

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.transforms import window
from PIL import Image

from mmbeam import transforms as mt
from mmbeam.testing.collect import run_collect
from mmbeam.testing.http_server import FaultServer
from mmbeam.testing.images import encode_sample, make_image


@pytest.fixture(scope="module")
def served(serve_jpegs):
    """Twelve JPEGs of different sizes on the loopback server: name -> URL."""
    return serve_jpegs("pipe", [(120 + 20 * i, 90 + 10 * i) for i in range(12)])


def test_download_decode_resize_encode_upload(served, tmp_path):
    out = tmp_path / "thumbs"
    collected = run_collect(
        lambda p: p
        | beam.Create(sorted(served.values()))
        | mt.Download(max_connections=4)
        | mt.DecodeImage()
        | mt.ResizeImage(64, 48, mode="stretch")
        | mt.EncodeImage("JPEG", quality=85)
        | mt.Upload(str(out))
    )
    paths = collected.outputs
    assert len(paths) == len(served) == len(set(paths))
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)
    for path in paths:
        assert Image.open(path).size == (64, 48)
    assert collected.counter("Download", "succeeded") == len(served)
    assert collected.counter("Upload", "succeeded") == len(served)
    assert collected.counter("Download", "bytes") == sum(len(_get(u)) for u in served.values())


def _get(url):
    with urllib.request.urlopen(url) as r:
        return r.read()


def test_keyed_ids_travel_and_name_the_uploads(served, tmp_path):
    pairs = [(f"id-{i}/{name}", url) for i, (name, url) in enumerate(sorted(served.items()))]
    collected = run_collect(
        lambda p: p
        | beam.Create(pairs)
        | mt.Download(keyed=True)
        | mt.DecodeImage(mode="L", keyed=True)
        | mt.ResizeImage(32, 32, mode="fit", keyed=True)
        | mt.EncodeImage("PNG", keyed=True)
        | mt.Upload(str(tmp_path), keyed=True)
    )
    got = dict(collected.outputs)
    assert set(got) == {k for k, _ in pairs}
    for key, path in got.items():
        assert path == os.path.join(str(tmp_path), key)
        img = Image.open(path)
        assert img.mode == "L" and max(img.size) == 32


def test_rerun_overwrites_instead_of_duplicating(served, tmp_path):
    def build(p):
        return p | beam.Create(sorted(served.values())[:3]) | mt.Download() | mt.Upload(str(tmp_path))

    first = sorted(run_collect(build).outputs)
    second = sorted(run_collect(build).outputs)
    assert first == second and len(os.listdir(tmp_path)) == 3


def test_window_bounds_concurrent_requests():
    with FaultServer(latency_s=0.05) as slow:
        urls = [slow.add(f"c{i}.bin", bytes([i]) * 1000) for i in range(24)]
        out = run_collect(lambda p: p | beam.Create(urls) | mt.Download(max_connections=3)).outputs
        assert sorted(out) == sorted(bytes([i]) * 1000 for i in range(24))
        assert 1 < slow.peak_concurrency <= 3


def test_results_keep_their_windows(served):
    urls = sorted(served.values())[:6]
    stamped = [window.TimestampedValue(u, 10 * (i % 2)) for i, u in enumerate(urls)]
    out = run_collect(
        lambda p: p
        | beam.Create(stamped)
        | mt.Download(max_connections=6)
        | beam.WindowInto(window.FixedWindows(5))
        | beam.Map(lambda data: ("all", len(data)))
        | beam.GroupByKey()
        | beam.MapTuple(lambda k, sizes: len(sizes))
    ).outputs
    assert sorted(out) == [3, 3]  # two windows of three elements each, none lost


def test_decoded_arrays_are_hwc_uint8(served):
    url = served["p3.jpg"]
    (img,) = run_collect(lambda p: p | beam.Create([url]) | mt.Download() | mt.DecodeImage()).outputs
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (120, 180, 3)


@pytest.mark.parametrize(
    "transform",
    [
        mt.Download(max_connections=8),
        mt.DecodeImage(mode="L", min_size=(10, 10)),
        mt.ResizeImage(10, 20, mode="fill"),
        mt.EncodeImage("PNG"),
        mt.Upload("/tmp/x").with_exception_handling(),
    ],
    ids=lambda t: type(t).__name__,
)
def test_transforms_and_dofns_pickle(transform):
    clone = pickle.loads(pickle.dumps(transform))
    assert type(clone) is type(transform) and clone._failures == transform._failures
    fn = pickle.loads(pickle.dumps(transform.make_fn()))
    assert fn.stage == transform.stage


def test_upload_returns_written_bytes_unchanged(tmp_path):
    blobs = [encode_sample(make_image(16, 16, seed=s), "PNG") for s in range(5)]
    paths = run_collect(lambda p: p | beam.Create(blobs) | mt.Upload(str(tmp_path))).outputs
    assert sorted(open(p, "rb").read() for p in paths) == sorted(blobs)
    assert all(Image.open(io.BytesIO(open(p, "rb").read())).format == "PNG" for p in paths)


def _max_window(collected, stage):
    windows = [d.committed.max for d in collected.result.metrics().query()["distributions"]
               if d.key.metric.name == "window" and d.key.metric.namespace == stage]
    assert windows, f"no window metric for {stage}"
    return max(windows)


def test_memory_budget_option_caps_the_decode_window_of_big_images():
    """Each 600x500 PNG decodes to 0.9 MB: under ``--memory_budget=1500KB`` at most one row
    is in flight, while without the option the same pipeline keeps several in flight."""
    from apache_beam.options.pipeline_options import PipelineOptions

    pngs = [encode_sample(make_image(600, 500, seed=i), "PNG") for i in range(2)] * 8

    def run(flags):
        return run_collect(lambda p: p | beam.Create(pngs) | mt.DecodeImage(),
                           options=PipelineOptions(flags))

    budgeted, free = run(["--memory_budget=1500KB"]), run([])
    assert len(budgeted.outputs) == len(free.outputs) == 16
    assert _max_window(budgeted, "DecodeImage") == 1
    assert _max_window(free, "DecodeImage") > 1
