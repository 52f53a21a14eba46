"""Each URL and image function through the Beam transforms and through the frame, compared.

Both surfaces run the one declaration of a function on the one row engine, so for the same
input they must give the same values, the same nulls (``on_error="null"``), the same failures
(stage and error type), the same stage names and the same per-stage counts: the transforms'
Beam counters ``succeeded``/``failed``/``nulls`` (namespace: the stage) against the frame's
``Frame.stage_metrics``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pytest

import mmbeam
import mmbeam.transforms as mt
from mmbeam import col
from mmbeam.errors import MmbeamError, StageError
from mmbeam.ops.registry import registered
from mmbeam.testing import run_collect
from mmbeam.testing.images import encode_sample, make_image

JPEG = encode_sample(make_image(96, 64, seed=1), "JPEG")
PNG = encode_sample(make_image(40, 30, seed=2), "PNG")
RGB = make_image(48, 32, seed=3)
GREY = np.ascontiguousarray(make_image(20, 24, seed=4)[:, :, 0])


@dataclass
class Case:
    """One function applied to ``inputs`` on both surfaces; ``bad`` marks inputs that fail."""

    name: str
    stage: str
    inputs: Callable[[Any, Any], list]  # (server, tmp_path) -> inputs
    transform: Callable[[dict, Any], Any]  # (options, tmp_path) -> PTransform
    frame: Callable[[Any, dict, Any], Any]  # (column, options, tmp_path) -> expression
    bad: tuple[int, ...] = ()
    error: type = StageError


def _urls(srv, tmp_path):
    return [srv.add("a.jpg", JPEG), srv.add("b.png", PNG), srv.url("status/404"),
            srv.add("c.jpg", JPEG)]


CASES = [
    Case("download", "Download", _urls,
         lambda o, t: mt.Download(retries=0, **o),
         lambda c, o, t: c.url.download(retries=0, **o), bad=(2,)),
    Case("decode", "DecodeImage", lambda s, t: [JPEG, b"<html>not an image", PNG],
         lambda o, t: mt.DecodeImage(**o), lambda c, o, t: c.image.decode("RGB", **o), bad=(1,)),
    Case("decode_grey", "DecodeImage", lambda s, t: [JPEG, PNG],
         lambda o, t: mt.DecodeImage("L", **o), lambda c, o, t: c.image.decode("L", **o)),
    Case("resize", "ResizeImage", lambda s, t: [RGB, RGB[:7, :5]],
         lambda o, t: mt.ResizeImage(16, 10, "fill", **o),
         lambda c, o, t: c.image.resize(16, 10, "fill", **o)),
    Case("encode", "EncodeImage", lambda s, t: [RGB, RGB[::2, ::3].copy()],
         lambda o, t: mt.EncodeImage("PNG", **o), lambda c, o, t: c.image.encode("PNG", **o)),
    Case("crop", "CropImage", lambda s, t: [RGB, RGB[:4, :4].copy(), RGB],
         lambda o, t: mt.CropImage((5, 6, 10, 8), **o),
         lambda c, o, t: c.image.crop((5, 6, 10, 8), **o), bad=(1,)),
    Case("convert", "ConvertImage", lambda s, t: [RGB, RGB[:3].copy()],
         lambda o, t: mt.ConvertImage("L", **o), lambda c, o, t: c.image.to_mode("L", **o)),
    Case("upload", "Upload", lambda s, t: [JPEG, PNG, JPEG],
         lambda o, t: mt.Upload(str(t / "transform"), **o),
         lambda c, o, t: c.url.upload(str(t / "frame"), **o)),
]


def test_every_function_with_a_transform_has_a_case():
    assert {f.stage for f in registered() if f.transform} == {c.stage for c in CASES}


def _grey(image: np.ndarray) -> np.ndarray:
    """A frame's image column gives a grey image as H×W×1, the transforms as H×W."""
    return image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        a, b = _grey(a), _grey(b)
        return a.shape == b.shape and bool((a == b).all())
    if isinstance(a, str) and isinstance(b, str) and os.sep in a:  # written paths
        return os.path.basename(a) == os.path.basename(b)
    return a == b


def _frame(case, values, options, tmp_path):
    df = mmbeam.from_pydict({"x": values})
    return df.with_column("y", case.frame(col("x"), options, tmp_path)).collect()


def _transform(case, values, options, tmp_path, handled=False):
    """Run the transform keyed by each input's index (rows finish in any order); an upload
    unkeyed, so that it names files by content as the frame does."""
    keyed = case.stage != "Upload"
    transform = case.transform({**options, "keyed": keyed}, tmp_path)
    if handled:
        transform = transform.with_exception_handling()
    inputs = list(enumerate(values)) if keyed else values
    return run_collect(lambda p: p | beam.Create(inputs) | transform)


def _in_order(outputs: list, frame: list) -> tuple[list, list]:
    """Both surfaces' outputs in input order (paths, which carry no key: sorted)."""
    if outputs and isinstance(outputs[0], tuple):
        return [value for _, value in sorted(outputs, key=lambda kv: kv[0])], frame
    return sorted(outputs, key=os.path.basename), sorted(frame, key=os.path.basename)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_nulls_values_stage_names_and_counts_agree(case, mmbeam_http, tmp_path):
    values = case.inputs(mmbeam_http, tmp_path)
    beam_run = _transform(case, values, {"on_error": "null"}, tmp_path)
    frame = _frame(case, values, {"on_error": "null"}, tmp_path)
    got = frame.to_pydict()["y"]
    outputs, got = _in_order(beam_run.outputs, got)
    assert len(outputs) == len(got) == len(values)
    for i, (a, b) in enumerate(zip(outputs, got)):
        assert (a is None) == (b is None) == (i in case.bad), (i, a, b)
        assert a is None or _same(a, b), i
    counts = {name: beam_run.counter(case.stage, name) for name in ("succeeded", "failed", "nulls")}
    assert counts == {"succeeded": len(values) - len(case.bad), "failed": len(case.bad),
                      "nulls": len(case.bad)}
    frame_counts = {k: v for k, v in frame.stage_metrics[case.stage].items() if k != "bytes"}
    assert frame_counts == counts
    assert set(frame.stage_metrics) == {case.stage}


@pytest.mark.parametrize("case", [c for c in CASES if c.bad], ids=lambda c: c.name)
def test_failures_name_the_same_stage_and_error(case, mmbeam_http, tmp_path):
    values = case.inputs(mmbeam_http, tmp_path)
    good, failed = _transform(case, values, {}, tmp_path, handled=True).outputs
    assert len(good) == len(values) - len(case.bad)
    assert [r.stage for r in failed] == [case.stage] * len(case.bad)
    assert sorted(r.element[0] for r in failed) == list(case.bad)
    with pytest.raises(StageError) as caught:
        _frame(case, values, {}, tmp_path)
    err = caught.value
    assert err.stage == case.stage
    assert err.cause in failed[0].error
    assert type(err).__name__ in _error_types(case, values, tmp_path)


def _error_types(case, values, tmp_path) -> set[str]:
    """The error types the transform raises for the bad inputs (without exception handling)."""
    names = set()
    for i in case.bad:
        with pytest.raises(MmbeamError) as caught:
            _transform(case, [values[i]], {}, tmp_path)
        err = caught.value
        while err is not None and not isinstance(err, StageError):
            err = err.__cause__ or err.__context__
        names.add(type(err).__name__ if err is not None else type(caught.value).__name__)
    return names


def test_a_fused_chain_reports_every_stage_the_same_way(mmbeam_http, tmp_path):
    urls = _urls(mmbeam_http, tmp_path)
    beam_run = run_collect(lambda p: (
        p | beam.Create(list(enumerate(urls)))
        | mt.Download(retries=0, on_error="null", keyed=True) | mt.DecodeImage(keyed=True)
        | mt.ResizeImage(32, 32, keyed=True) | mt.EncodeImage("JPEG", keyed=True)
        | beam.MapTuple(lambda i, data: (f"{i}.jpg", data))
        | mt.Upload(str(tmp_path / "t"), keyed=True)))
    frame = mmbeam.from_pydict({"u": urls, "k": [f"{i}.jpg" for i in range(len(urls))]})
    frame = frame.with_column("p", (
        col("u").url.download(retries=0, on_error="null").image.decode("RGB")
        .image.resize(32, 32).image.encode("JPEG")
        .url.upload(str(tmp_path / "f"), name=col("k")))).collect()
    got = frame.to_pydict()
    assert dict(beam_run.outputs).keys() == set(got["k"])
    for name, path in zip(got["k"], got["p"]):
        other = dict(beam_run.outputs)[name]
        assert (path is None) == (other is None) == (name == "2.jpg")
        assert path is None or open(path, "rb").read() == open(other, "rb").read()
    for stage in ("Download", "DecodeImage", "ResizeImage", "EncodeImage", "Upload"):
        for name in ("succeeded", "failed", "nulls"):
            assert frame.stage_metrics[stage][name] == beam_run.counter(stage, name), (stage, name)
    assert frame.stage_metrics["Download"]["nulls"] == 1
    assert frame.stage_metrics["EncodeImage"]["bytes"] == beam_run.counter("EncodeImage", "bytes") > 0


def test_upload_names_by_key_and_by_name_column_alike(tmp_path):
    pairs = [("cats/1.jpg", JPEG), ("dogs/2.png", PNG)]
    run_collect(lambda p: p | beam.Create(pairs) | mt.Upload(str(tmp_path / "t"), keyed=True))
    mmbeam.from_pydict({"k": [k for k, _ in pairs], "v": [v for _, v in pairs]}).with_column(
        "p", col("v").url.upload(str(tmp_path / "f"), name=col("k"))).collect()
    for key, data in pairs:
        assert (tmp_path / "t" / key).read_bytes() == (tmp_path / "f" / key).read_bytes() == data


def test_upload_to_s3_on_both_paths(mmbeam_s3):
    bucket = mmbeam_s3.make_bucket("both-paths")
    io = mmbeam_s3.io_config()
    (url_t,) = run_collect(lambda p: p | beam.Create([JPEG])
                           | mt.Upload(f"{bucket}/t", io_config=io)).outputs
    (url_f,) = mmbeam.from_pydict({"v": [JPEG]}).with_column(
        "p", col("v").url.upload(f"{bucket}/f", io_config=io)).to_pydict()["p"]
    assert os.path.basename(url_t) == os.path.basename(url_f)
    assert mmbeam_s3.get(url_t) == mmbeam_s3.get(url_f) == JPEG
