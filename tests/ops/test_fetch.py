"""Fetcher and fetch_all against the loopback fault server: retries, timeouts, redirects."""

import pytest

from mmbeam.errors import ConfigError, DownloadError, UnsupportedSchemeError
from mmbeam.ops.fetch import Fetcher, fetch_all

DATA = bytes(range(256)) * 400  # 100 KiB


@pytest.fixture(scope="module")
def server(mmbeam_http):
    mmbeam_http.add("fetch.bin", DATA)
    return mmbeam_http


@pytest.fixture(params=["loop", "blocking"], autouse=True)
def fetch_form(request, monkeypatch, server):
    """Every test runs against both forms: the coroutine on the I/O loop and fetch_blocking
    on the calling thread (what threaded row chains use); hit counts start from zero."""
    server.reset_stats()
    monkeypatch.setitem(_FORM, "name", request.param)


_FORM = {"name": "loop"}


def fetch(url, **kwargs):
    fetcher = Fetcher(**kwargs)
    if _FORM["name"] == "blocking":
        return fetcher.fetch_blocking(url)
    return fetcher.submit(url).result(timeout=60)


@pytest.mark.parametrize("route, hits", [("redirect/fetch.bin", 1), ("redirect/3/fetch.bin", 1)])
def test_redirects_are_followed(server, route, hits):
    assert fetch(server.url(route)) == DATA
    assert server.hits(route) == hits
    assert server.hits("files/fetch.bin") >= 1


@pytest.mark.parametrize("fault", ["flaky", "throttle"])
def test_transient_status_is_retried_until_it_recovers(server, fault):
    server.add(f"{fault}.bin", DATA)
    route = f"{fault}/2/{fault}.bin"
    assert fetch(server.url(route), retries=2, backoff_s=0.01) == DATA
    assert server.hits(route) == 3


def test_retries_run_out_with_a_clear_error(server):
    server.add("never.bin", DATA)
    route = "flaky/5/never.bin"
    with pytest.raises(DownloadError, match=r"HTTP 500 .*\(after 3 attempts\)"):
        fetch(server.url(route), retries=2, backoff_s=0.01)
    assert server.hits(route) == 3


def test_404_is_not_retried(server):
    with pytest.raises(DownloadError, match="not found"):
        fetch(server.url("status/404"), retries=3)
    assert server.hits("status/404") == 1


def test_403_is_permanent(server):
    with pytest.raises(DownloadError, match="HTTP 403"):
        fetch(server.url("status/403"), retries=3, backoff_s=0.01)
    assert server.hits("status/403") == 1


def test_slow_response_times_out_then_retries(server):
    with pytest.raises(DownloadError, match=r"timed out after 0.3 s \(after 2 attempts\)"):
        fetch(server.url("slow/2/fetch.bin"), timeout_s=0.3, retries=1, backoff_s=0.01)


def test_truncated_body_is_an_error_not_short_data(server):
    with pytest.raises(DownloadError, match="ContentLength|payload"):
        fetch(server.url("truncated/fetch.bin"), retries=1, backoff_s=0.01)
    assert server.hits("truncated/fetch.bin") == 2


def test_connection_reset_is_retried_then_reported(server):
    with pytest.raises(DownloadError, match="reset|Disconnected|ClientOSError"):
        fetch(server.url("reset/fetch.bin"), retries=1, backoff_s=0.01)
    assert server.hits("reset/fetch.bin") >= 2


def test_local_paths_and_file_urls(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(DATA)
    assert fetch(str(path)) == DATA and fetch(f"file://{path}") == DATA
    with pytest.raises(DownloadError, match="not found"):
        fetch(str(tmp_path / "missing.bin"))


def test_bad_arguments():
    with pytest.raises(UnsupportedSchemeError, match="'ftp'"):
        fetch("ftp://example.invalid/x")
    with pytest.raises(ConfigError, match="timeout_s"):
        Fetcher(timeout_s=0)


def test_fetch_all_keeps_order_nulls_and_bounds_connections():
    from mmbeam.testing.http_server import FaultServer

    with FaultServer(latency_s=0.05) as srv:
        urls = [srv.add(f"{i}.bin", bytes([i]) * 10) for i in range(20)]
        urls[3] = None
        urls[7] = srv.url("status/404")
        out = fetch_all(urls, max_connections=4, on_error="null", retries=0)
        assert srv.peak_concurrency <= 4
        with pytest.raises(DownloadError, match=r"url.download failed for .*status/404.*not found"):
            fetch_all(urls, retries=0)
    assert out[3] is None and out[7] is None
    assert [o for i, o in enumerate(out) if i not in (3, 7)] == [
        bytes([i]) * 10 for i in range(20) if i not in (3, 7)
    ]
