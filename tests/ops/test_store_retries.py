"""Transient object-store errors (S3 503 ServiceUnavailable, 500 InternalError) are retried by mmbeam's
Fetcher; permanent ones are not. moto's S3 server sits behind a FaultProxy that fails chosen
requests, and botocore's own retries are off (``S3Config(num_tries=1)``) so the count of GETs
shows mmbeam's retries. The GCS emulator sits behind one too (gcsfs's own retries cannot be
turned off, so its GCS tests use statuses gcsfs passes on at once). Waits are recorded through
the Fetcher's injected sleep, never timed."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest

from mmbeam.errors import DownloadError
from mmbeam.ops.fetch import Fetcher
from mmbeam.testing import FaultProxy

DATA = b"object-bytes" * 1000


@contextlib.contextmanager
def _object_behind_proxy(server, bucket_name):
    """(proxy, URL of an object on ``server``, io_config reaching the server through the
    proxy)."""
    bucket = server.make_bucket(bucket_name)
    url = f"{bucket}/flaky.bin"
    server.put(url, DATA)
    with FaultProxy(server.endpoint_url) as proxy:
        yield proxy, url, server.io_config(endpoint_url=proxy.url)


@pytest.fixture
def proxied(mmbeam_s3, mmbeam_bucket_name):
    """An S3 object behind a proxy (see above), botocore's own retries off."""
    with _object_behind_proxy(mmbeam_s3, mmbeam_bucket_name) as (proxy, url, config):
        s3 = dataclasses.replace(config.s3, num_tries=1)
        yield proxy, url, dataclasses.replace(config, s3=s3)


# (s3fs itself retries "SlowDown" five times, so 503 comes as ServiceUnavailable here)
@pytest.mark.parametrize("status, code", [(503, "ServiceUnavailable"), (500, "InternalError")])
def test_a_transient_s3_error_is_retried_until_it_recovers(proxied, status, code):
    proxy, url, io_config = proxied
    waits = []
    fetcher = Fetcher(io_config, retries=3, backoff_s=0.5, max_backoff_s=5, sleep=waits.append)
    proxy.fail("/flaky.bin", times=3, status=status, code=code, method="GET")
    assert fetcher.fetch_blocking(url) == DATA
    assert proxy.count("GET", "/flaky.bin") == 4  # three failures, then the object
    _assert_doubling(waits, first=0.5, count=3)


def _assert_doubling(waits, first, count):
    """``count`` waits, each within the jitter range [1/2, 1] of ``first * 2**attempt``."""
    assert len(waits) == count, waits
    for attempt, wait in enumerate(waits):
        assert first * 2**attempt / 2 <= wait <= first * 2**attempt, waits


def test_s3_errors_left_after_every_retry_name_the_attempts(proxied):
    proxy, url, io_config = proxied
    fetcher = Fetcher(io_config, retries=1, backoff_s=0.01, sleep=lambda s: None)
    proxy.fail("/flaky.bin", times=5, code="ServiceUnavailable", method="GET")
    with pytest.raises(DownloadError, match=r"after 2 attempts"):
        fetcher.fetch_blocking(url)
    assert proxy.count("GET", "/flaky.bin") == 2


def test_a_permanent_s3_error_is_not_retried(proxied):
    proxy, url, io_config = proxied
    fetcher = Fetcher(io_config, retries=3, backoff_s=0.01, sleep=lambda s: None)
    proxy.fail("/flaky.bin", times=5, status=403, code="AccessDenied")
    with pytest.raises(DownloadError, match="permission denied|AccessDenied|403"):
        fetcher.fetch_blocking(url)
    assert proxy.count("GET", "/flaky.bin") + proxy.count("HEAD", "/flaky.bin") == 1


def test_an_s3_object_over_max_bytes_is_refused_by_its_size_before_its_body_is_read(proxied):
    """max_bytes on s3:// uses the object's size from its metadata: no GET of the body."""
    proxy, url, io_config = proxied
    with pytest.raises(DownloadError, match=rf"is too large: {len(DATA)} bytes is over "
                                            r"max_bytes=1000"):
        Fetcher(io_config, retries=0, max_bytes=1000).fetch_blocking(url)
    assert proxy.count("GET", "/flaky.bin") == 0 and proxy.count("HEAD", "/flaky.bin") >= 1
    assert Fetcher(io_config, max_bytes=len(DATA)).fetch_blocking(url) == DATA
    assert proxy.count("GET", "/flaky.bin") == 1


@pytest.fixture
def gcs_proxied(mmbeam_gcs, mmbeam_bucket_name):
    """A GCS emulator object behind a proxy."""
    with _object_behind_proxy(mmbeam_gcs, mmbeam_bucket_name) as behind:
        yield behind


# gcsfs retries 408/429/5xx itself (sleeping 1, 2, 4... s), so 425 Too Early, which it passes
# on at once, shows mmbeam's own retry of a GCS status
def test_a_transient_gcs_status_is_retried_by_mmbeam_until_it_recovers(gcs_proxied):
    proxy, url, io_config = gcs_proxied
    waits = []
    fetcher = Fetcher(io_config, retries=3, backoff_s=0.5, max_backoff_s=5, sleep=waits.append)
    proxy.fail("/download/", times=3, status=425, code="TooEarly", method="GET")  # the body
    assert fetcher.fetch_blocking(url) == DATA
    assert proxy.count("GET", "/download/") == 4  # three failures, then the object
    _assert_doubling(waits, first=0.5, count=3)


def test_a_permanent_gcs_error_is_not_retried(gcs_proxied):
    proxy, url, io_config = gcs_proxied
    waits = []
    fetcher = Fetcher(io_config, retries=3, backoff_s=0.01, sleep=waits.append)
    proxy.fail("/download/", times=5, status=403, code="AccessDenied", method="GET")
    with pytest.raises(DownloadError, match=r"Forbidden: .*flaky\.bin"):
        fetcher.fetch_blocking(url)
    assert waits == [] and proxy.count("GET", "/download/") == 1
