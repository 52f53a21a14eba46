"""Automatic fusion of consecutive per-element transforms: the fused run gives what the unfused
run (``--no_fuse_elements``) gives, outputs, failed records, nulls, metrics, timestamps and
windows, and fuses only where no other reader could tell."""

import os
import pickle
import re
import urllib.request

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.internal import pickler
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.transforms import window as beam_window
from apache_beam.utils import proto_utils

from mmbeam import transforms as mt
from mmbeam.errors import DecodeError
from mmbeam.runners.direct import local_runner
from mmbeam.testing.collect import run_collect
from mmbeam.testing.images import encode_sample, make_image
from mmbeam.transforms._base import ElementFn

STAGES = ("Download", "DecodeImage", "ResizeImage", "EncodeImage", "Upload")
CHAIN = "+".join(STAGES)
FNS = ("ElementFn", "_DecodeFn", "ElementFn", "ElementFn", "ElementFn")


def unfused() -> PipelineOptions:
    return PipelineOptions(["--no_fuse_elements"])


@pytest.fixture(scope="module")
def served(mmbeam_http, serve_jpegs):
    urls = serve_jpegs("autofuse", [(300 + 20 * i, 200) for i in range(10)], orientations=True,
                       name="f{i}.jpg")
    mmbeam_http.add("autofuse/junk.jpg", b"<html>not an image</html>")
    return {f"f{i}.png": url for i, url in enumerate(urls.values())}  # keys: the upload names


def five(out, **kw):
    return (mt.Download(max_connections=4, retries=0, **kw), mt.DecodeImage(**kw),
            mt.ResizeImage(40, 30, **kw), mt.EncodeImage("PNG", **kw), mt.Upload(str(out), **kw))


def chained(pcoll, transforms):
    for t in transforms:
        pcoll = pcoll | t
    return pcoll


def element_fns(build, runner=None) -> list[ElementFn]:
    """The ElementFns of the stages ``runner`` (default: the local one) makes of ``build``'s
    pipeline."""
    p = beam.Pipeline()
    build(p)
    _, stages = (runner or local_runner()).create_stages(p.to_runner_api())
    fns = []
    for transform in (t for s in stages for t in s.transforms):
        if transform.spec.urn != "beam:transform:pardo:v1":
            continue
        payload = proto_utils.parse_Bytes(transform.spec.payload, beam_runner_api_pb2.ParDoPayload)
        if payload.do_fn.urn == python_urns.PICKLED_DOFN_INFO:
            fn = pickler.loads(payload.do_fn.payload)[0]
            fns += [fn] if isinstance(fn, ElementFn) else []
    return fns


def files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


def windows_by_stage(collected) -> set[str]:
    return {d.key.metric.namespace for d in collected.result.metrics().query()["distributions"]
            if d.key.metric.name == "window"}


def test_five_transforms_become_one_kernel_with_the_same_bytes_and_metrics(served, tmp_path):
    urls = sorted(served.values())

    def build(out):
        return lambda p: chained(p | beam.Create(urls), five(out))

    (fn,) = element_fns(build(tmp_path / "x"))
    assert fn.chain.stages == STAGES and fn.parts == (0, 1, 2, 3, 4) and fn.stage == CHAIN
    fused = run_collect(build(tmp_path / "fused"))
    plain = run_collect(build(tmp_path / "plain"), options=unfused())
    assert files(tmp_path / "fused") == files(tmp_path / "plain")
    assert len(files(tmp_path / "fused")) == len(urls)
    assert sorted(os.path.basename(x) for x in fused.outputs) == sorted(
        os.path.basename(x) for x in plain.outputs)
    for stage in STAGES:
        for name in ("succeeded", "failed", "nulls", "bytes"):
            assert fused.counter(stage, name) == plain.counter(stage, name), (stage, name)
        assert fused.counter(stage, "succeeded") == len(urls)
    assert fused.counter("Download", "bytes") > fused.counter("EncodeImage", "bytes") > 0
    # the option shows each transform's own window again
    assert windows_by_stage(fused) == {CHAIN}
    assert windows_by_stage(plain) == set(STAGES)
    assert len(steps_counting(fused)) == 1 and len(steps_counting(plain)) == 5


def test_a_branch_is_not_fused_and_both_readers_see_every_element(served, tmp_path):
    urls = sorted(served.values())

    def build(p):
        data = p | beam.Create(urls) | mt.Download()
        sizes = data | beam.Map(len)
        thumbs = chained(data, five(tmp_path)[1:])
        return sizes, thumbs

    assert [fn.chain.stages for fn in element_fns(build)] == [("Download",), STAGES[1:]]
    sizes, thumbs = run_collect(build).outputs
    assert len(thumbs) == len(urls) == len(set(thumbs))
    assert sorted(sizes) == sorted(len(data) for data in _downloads(urls))

    def side(p):  # the intermediate read as a side input: not fused either
        data = p | beam.Create(urls) | mt.Download()
        decoded = data | mt.DecodeImage()
        return decoded | beam.Map(lambda a, n: (a.shape, n), n=beam.pvalue.AsSingleton(
            data | beam.combiners.Count.Globally()))

    assert [fn.chain.stages for fn in element_fns(side)] == [("Download",), ("DecodeImage",)]
    assert {n for _, n in run_collect(side).outputs} == {len(urls)}


def _downloads(urls):
    for url in urls:
        with urllib.request.urlopen(url) as r:
            yield r.read()


def test_what_is_not_fused():
    arrays = [make_image(20, 10, seed=1)]

    def keyed_then_plain(p):
        pairs = p | beam.Create([("a", arrays[0])]) | mt.ResizeImage(8, 8, keyed=True)
        return pairs | beam.Map(lambda kv: kv[1]) | mt.EncodeImage("PNG") | mt.DecodeImage()

    # the Map breaks the first pair; the encode and the decode fuse
    assert [fn.chain.stages for fn in element_fns(keyed_then_plain)] == [
        ("ResizeImage",), ("EncodeImage", "DecodeImage")]

    def mixed_keys(p):
        return (p | beam.Create([("a", encode_sample(arrays[0], "PNG"))])
                | mt.DecodeImage(keyed=True) | mt.ResizeImage(8, 8, keyed=False))

    assert len(element_fns(mixed_keys)) == 2

    def handled_producer(p):  # a producer with a failed output stays whole
        good, _ = p | beam.Create([b""]) | mt.DecodeImage().with_exception_handling()
        return good | mt.ResizeImage(8, 8) | mt.EncodeImage("PNG")

    assert [fn.chain.stages for fn in element_fns(handled_producer)] == [
        ("DecodeImage",), ("ResizeImage", "EncodeImage")]

    def explicit_fuse(p):  # a user's Fuse is a producer part, never a consumer
        decoded = p | beam.Create(["u"]) | mt.Fuse(mt.Download(), mt.DecodeImage())
        resized = decoded | mt.ResizeImage(8, 8)
        return resized | "Fuse2" >> mt.Fuse(mt.EncodeImage("PNG"), mt.DecodeImage())

    fns = element_fns(explicit_fuse)
    assert [fn.chain.stages for fn in fns] == [
        ("Download", "DecodeImage", "ResizeImage"), ("EncodeImage", "DecodeImage")]
    assert fns[0].parts == (0, 2)


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "plain"])
def test_exception_handling_routes_and_names_failures_as_unfused(served, mmbeam_http, tmp_path,
                                                                 keyed):
    junk = mmbeam_http.url("files/autofuse/junk.jpg")
    good_url = served["f1.png"]
    upload_fails = [("../escape.png", good_url)] if keyed else []

    def handled(out, items=None):
        if items is None:
            items = [("ok.png", good_url), *upload_fails] if keyed else [good_url]

        def build(p):
            parts = five(out, keyed=keyed)
            pcoll = chained(p | beam.Create(items), parts[:-1])
            return pcoll | parts[-1].with_exception_handling()
        return build

    fused = run_collect(handled(tmp_path / "a"))
    plain = run_collect(handled(tmp_path / "b"), options=unfused())
    assert len(element_fns(handled(tmp_path / "c"))) == 1
    (good_a, failed_a), (good_b, failed_b) = fused.outputs, plain.outputs
    assert len(good_a) == len(good_b) == 1
    assert failed_a == failed_b and len(failed_a) == len(upload_fails)
    for record in failed_a:  # the Upload's own input: the key and the encoded PNG
        key, encoded = record.element
        assert key == "../escape.png" and encoded[:4] == b"\x89PNG" and record.stage == "Upload"
    assert fused.counter("Upload", "failed") == plain.counter("Upload", "failed")

    # a failure before the handled Upload raises, named by the decode's own input, as unfused
    bad = [("bad.png", junk)] if keyed else [junk]
    expected = "DecodeImage failed for " + ("key 'bad.png'" if keyed else "<25 bytes>")
    for options, out in ((None, "d"), (unfused(), "e")):
        with pytest.raises(DecodeError, match=re.escape(expected) + ": not an image"):
            run_collect(handled(tmp_path / out, bad), options=options)


def test_a_handled_consumer_in_the_middle_gets_its_own_input_as_the_failed_element(served,
                                                                                   mmbeam_http):
    junk = mmbeam_http.url("files/autofuse/junk.jpg")
    urls = [served["f2.png"], junk]

    def build(p):
        good, failed = p | beam.Create(urls) | mt.Download() | mt.DecodeImage(
            ).with_exception_handling()
        return good | mt.ResizeImage(8, 8) | mt.EncodeImage("PNG"), failed

    assert [fn.chain.stages for fn in element_fns(build)] == [
        ("Download", "DecodeImage"), ("ResizeImage", "EncodeImage")]
    fused, plain = run_collect(build), run_collect(build, options=unfused())
    assert fused.outputs == plain.outputs
    (record,) = fused.outputs[1]
    assert record.element == b"<html>not an image</html>" and record.stage == "DecodeImage"
    assert "DecodeImage failed for <25 bytes>: not an image" in record.error


def test_nulls_pass_through_and_are_counted_as_unfused(served, mmbeam_http, tmp_path):
    junk = mmbeam_http.url("files/autofuse/junk.jpg")
    missing = mmbeam_http.url("files/autofuse/missing.jpg")
    pairs = [("ok.png", served["f3.png"]), ("junk.png", junk), ("missing.png", missing)]

    def build(out):
        return lambda p: chained(p | beam.Create(pairs), five(out, keyed=True, on_error="null"))

    fused = run_collect(build(tmp_path / "a"))
    plain = run_collect(build(tmp_path / "b"), options=unfused())
    assert dict(fused.outputs)["junk.png"] is None and dict(fused.outputs)["missing.png"] is None
    assert {k: v is None for k, v in fused.outputs} == {k: v is None for k, v in plain.outputs}
    assert files(tmp_path / "a") == files(tmp_path / "b") and len(files(tmp_path / "a")) == 1
    for stage in STAGES:
        for name in ("succeeded", "failed", "nulls", "bytes"):
            assert fused.counter(stage, name) == plain.counter(stage, name), (stage, name)
    assert fused.counter("Download", "nulls") == fused.counter("DecodeImage", "nulls") == 1


def test_timestamps_and_windows_are_kept():
    images = [make_image(30 + i, 20, seed=i) for i in range(6)]

    def build(p):
        stamped = (p | beam.Create(list(enumerate(images)))
                   | beam.Map(lambda kv: beam_window.TimestampedValue(kv, 10.0 * kv[0]))
                   | beam.WindowInto(beam_window.FixedWindows(25)))
        thumbs = (stamped | mt.ResizeImage(8, 8, keyed=True) | mt.EncodeImage("PNG", keyed=True)
                  | mt.DecodeImage(keyed=True))
        return thumbs | beam.Map(
            lambda kv, ts=beam.DoFn.TimestampParam, w=beam.DoFn.WindowParam:
            (kv[0], float(ts), float(w.start), kv[1].tobytes()))

    assert len(element_fns(build)) == 1
    fused, plain = run_collect(build), run_collect(build, options=unfused())
    assert sorted(fused.outputs) == sorted(plain.outputs)
    assert sorted((k, ts, start) for k, ts, start, _ in fused.outputs) == [
        (i, 10.0 * i, 25.0 * (10 * i // 25)) for i in range(6)]


def test_the_fused_fn_survives_a_pickle_round_trip(tmp_path):
    def build(p):
        return chained(p | beam.Create(["u"]), five(tmp_path, keyed=True))

    (fn,) = element_fns(build)
    clone = pickle.loads(pickle.dumps(fn))
    assert clone.chain.stages == STAGES and clone.parts == fn.parts and clone.keyed
    arrays = [np.full((4, 4, 3), 200, np.uint8)]  # and the fused chain runs after its own trip
    (fused,) = element_fns(lambda p: p | beam.Create(arrays) | mt.ResizeImage(2, 2)
                           | mt.EncodeImage("PNG") | mt.DecodeImage())
    clone = pickle.loads(pickle.dumps(fused))
    clone.setup()
    clone.start_bundle()
    out = [*clone.process(arrays[0], 0, beam_window.GlobalWindow()), *clone.finish_bundle()]
    assert len(out) == 1 and np.array_equal(out[0].value, np.full((2, 2, 3), 200, np.uint8))


@pytest.mark.parametrize("runner_name", ["dask", "ray"])
def test_distributed_runners_fuse_too_with_the_same_bytes(served, tmp_path, make_runner):
    urls = sorted(served.values())

    def build(out):
        return lambda p: chained(p | beam.Create(urls), five(out))

    (fn,) = element_fns(build(tmp_path / "x"), make_runner())
    assert fn.chain.stages == STAGES
    fused = run_collect(build(tmp_path / "a"), runner=make_runner())
    plain = run_collect(build(tmp_path / "b"), runner=make_runner(), options=unfused())
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert len(files(tmp_path / "a")) == len(urls) == len(fused.outputs) == len(plain.outputs)
    assert fused.counter("Upload", "succeeded") == plain.counter("Upload", "succeeded") == len(urls)
    assert steps_counting(fused) == {"+".join(f"{s}/ParDo({n})" for s, n in zip(STAGES, FNS))}
    assert steps_counting(plain) == {f"{s}/ParDo({n})" for s, n in zip(STAGES, FNS)}


def steps_counting(collected) -> set[str]:
    """The Beam steps that reported a ``succeeded`` counter."""
    query = collected.result.metrics().query(MetricsFilter().with_name("succeeded"))
    return {c.key.step for c in query["counters"]}
