"""Every bad input gets its clear error (raise), its counted null (null), or its failed record."""

import apache_beam as beam
import pytest

from mmbeam import transforms as mt
from mmbeam.errors import (
    ConfigError,
    DecodeError,
    DownloadError,
    ImageTooLargeError,
    UnsafePathError,
    UnsupportedSchemeError,
)
from mmbeam.testing.collect import run_collect
from mmbeam.testing.images import decompression_bomb, encode_sample, make_image, truncated

JPEG = encode_sample(make_image(64, 48), "JPEG")

# id -> (transform factory taking on_error and a folder, input element, stage, words the error must contain)
CASES = {
    "http-404": (
        lambda on_error, tmp: mt.Download(on_error=on_error, retries=0),
        "status/404",
        "Download",
        "not found",
    ),
    "unreachable-host": (
        lambda on_error, tmp: mt.Download(on_error=on_error, retries=1, timeout_s=5),
        "http://127.0.0.1:9/unreachable.jpg",
        "Download",
        "Cannot connect",
    ),
    "unsupported-scheme": (
        lambda on_error, tmp: mt.Download(on_error=on_error),
        "ftp://example.invalid/a.jpg",
        "Download",
        "unsupported URL scheme 'ftp'",
    ),
    "non-image-bytes": (
        lambda on_error, tmp: mt.DecodeImage(on_error=on_error),
        b"<html>oops</html>",
        "DecodeImage",
        "not an image",
    ),
    "truncated-jpeg": (
        lambda on_error, tmp: mt.DecodeImage(on_error=on_error),
        truncated(JPEG),
        "DecodeImage",
        "truncated",
    ),
    "zero-bytes": (
        lambda on_error, tmp: mt.DecodeImage(on_error=on_error),
        b"",
        "DecodeImage",
        "zero bytes",
    ),
    "decompression-bomb": (
        lambda on_error, tmp: mt.DecodeImage(on_error=on_error),
        decompression_bomb(20000, 20000),
        "DecodeImage",
        "decompression bomb",
    ),
    "upload-escape": (
        lambda on_error, tmp: mt.Upload(str(tmp), on_error=on_error, keyed=True),
        ("../evil.jpg", JPEG),
        "Upload",
        "not a plain relative path",
    ),
}


# id -> the exact error type a run raises (Beam's runner re-raises the DoFn's own error type)
RAISES = {
    "http-404": DownloadError,
    "unreachable-host": DownloadError,
    "unsupported-scheme": UnsupportedSchemeError,
    "non-image-bytes": DecodeError,
    "truncated-jpeg": DecodeError,
    "zero-bytes": DecodeError,
    "decompression-bomb": ImageTooLargeError,
    "upload-escape": UnsafePathError,
}


def _resolve(case, mmbeam_http, tmp_path, on_error):
    factory, element, stage, words = CASES[case]
    transform = factory(on_error, tmp_path)
    if isinstance(element, str) and element.startswith("status/"):
        element = mmbeam_http.url(element)
    return transform, element, stage, words


def _expected_name(element):
    """How the error names the element: its key, its URL, or its size."""
    if isinstance(element, tuple):
        return repr(element[0])
    if isinstance(element, bytes):
        return f"<{len(element)} bytes>"
    return element


@pytest.mark.parametrize("case", sorted(CASES))
def test_raise_names_element_stage_and_cause(case, mmbeam_http, tmp_path):
    transform, element, stage, words = _resolve(case, mmbeam_http, tmp_path, "raise")
    with pytest.raises(RAISES[case]) as info:
        run_collect(lambda p: p | beam.Create([element]) | transform)
    assert type(info.value) is RAISES[case]
    message = str(info.value)
    assert f"{stage} failed for" in message
    assert _expected_name(element) in message
    assert words in message


@pytest.mark.parametrize("case", sorted(CASES))
def test_null_gives_a_counted_none(case, mmbeam_http, tmp_path):
    transform, element, stage, _ = _resolve(case, mmbeam_http, tmp_path, "null")
    collected = run_collect(lambda p: p | beam.Create([element]) | transform)
    expected = (element[0], None) if isinstance(element, tuple) else None
    assert collected.outputs == [expected]
    assert collected.counter(stage, "nulls") == 1
    assert collected.counter(stage, "failed") == 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_exception_handling_records_input_stage_and_error(case, mmbeam_http, tmp_path):
    transform, element, stage, words = _resolve(case, mmbeam_http, tmp_path, "raise")
    good, failed = run_collect(
        lambda p: p | beam.Create([element]) | transform.with_exception_handling()
    ).outputs
    assert good == []
    (record,) = failed
    assert isinstance(record, mt.FailedRecord)
    assert record.element == element and record.stage == stage and words in record.error


def test_500_recovers_on_retry_in_every_mode(mmbeam_http):
    for on_error in ["raise", "null"]:
        mmbeam_http.add(f"recover-{on_error}.jpg", JPEG)
        path = f"flaky/2/recover-{on_error}.jpg"
        out = run_collect(
            lambda p, url=mmbeam_http.url(path), on_error=on_error: p
            | beam.Create([url])
            | mt.Download(on_error=on_error)
        ).outputs
        assert out == [JPEG]
        assert mmbeam_http.hits(path) == 3  # two 500s, then the image


def test_one_bad_element_does_not_lose_the_others(mmbeam_http):
    urls = [mmbeam_http.add(f"ok{i}.jpg", JPEG) for i in range(5)]
    urls.insert(2, mmbeam_http.url("status/404"))
    good, failed = run_collect(
        lambda p: p
        | beam.Create(urls)
        | mt.Download(max_connections=2, retries=0).with_exception_handling()
    ).outputs
    assert len(good) == 5 and [r.element for r in failed] == [urls[2]]


def test_nulls_flow_through_later_stages(mmbeam_http, tmp_path):
    urls = [mmbeam_http.add("n.jpg", JPEG), mmbeam_http.url("status/404")]
    out = run_collect(
        lambda p: p
        | beam.Create(urls)
        | mt.Download(on_error="null", retries=0)
        | mt.DecodeImage()
        | mt.ResizeImage(8, 8)
        | mt.EncodeImage("PNG")
        | mt.Upload(str(tmp_path))
    ).outputs
    assert sorted(out, key=str)[-1] is None and len(out) == 2


def test_keyed_transform_rejects_unkeyed_elements():
    good, failed = run_collect(
        lambda p: p | beam.Create([b"raw bytes"]) | mt.DecodeImage(keyed=True).with_exception_handling()
    ).outputs
    assert good == [] and "keyed=True expects (key, value) pairs" in failed[0].error


@pytest.mark.parametrize("make", [mt.Download, lambda **kw: mt.Upload("/tmp/x", **kw)])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_max_connections_is_checked_when_built(make, bad):
    with pytest.raises(ConfigError, match=f"max_connections must be a positive int, got {bad!r}"):
        make(max_connections=bad)


def test_upload_of_non_bytes_is_a_clear_failure(tmp_path):
    good, failed = run_collect(
        lambda p: p | beam.Create(["a string"]) | mt.Upload(str(tmp_path)).with_exception_handling()
    ).outputs
    assert good == [] and "expected bytes to upload, got str" in failed[0].error
    assert list(tmp_path.iterdir()) == []
