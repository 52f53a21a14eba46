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
        with pytest.raises(DownloadError, match=r"Download failed for .*status/404.*not found"):
            fetch_all(urls, retries=0)
    assert out[3] is None and out[7] is None
    assert [o for i, o in enumerate(out) if i not in (3, 7)] == [
        bytes([i]) * 10 for i in range(20) if i not in (3, 7)
    ]


# backoff and retry policy (issue 17, M2): waits recorded through the injected sleep, not timed


def _recorded(**kwargs):
    waits = []
    return Fetcher(sleep=waits.append, **kwargs), waits


def fetch_with(fetcher, url):
    if _FORM["name"] == "blocking":
        return fetcher.fetch_blocking(url)
    return fetcher.submit(url).result(timeout=60)


def test_backoff_doubles_and_is_capped_at_max_backoff_s(server):
    server.add("backoff.bin", DATA)
    fetcher, waits = _recorded(retries=5, backoff_s=1.0, max_backoff_s=3.0)
    assert fetch_with(fetcher, server.url("flaky/5/backoff.bin")) == DATA
    assert len(waits) == 5
    # jitter keeps each wait within [1/2, 1] of min(max_backoff_s, backoff_s * 2**attempt)
    for wait, full in zip(waits, [1, 2, 3, 3, 3]):
        assert full / 2 <= wait <= full, waits


def test_retry_after_is_honoured(server):
    server.add("after.bin", DATA)
    fetcher, waits = _recorded(retries=2, backoff_s=0.01, max_backoff_s=10)
    assert fetch_with(fetcher, server.url("throttle/1/after.bin?retry_after=4")) == DATA
    assert waits and 4 <= waits[0] <= 4.01, waits


def test_retry_after_beyond_max_backoff_s_ends_the_retries(server):
    fetcher, waits = _recorded(retries=3, backoff_s=0.01, max_backoff_s=5)
    with pytest.raises(DownloadError, match=r"retry after 30 s, more than max_backoff_s=5"):
        fetch_with(fetcher, server.url("status/503?retry_after=30"))
    assert waits == [] and server.hits("status/503") == 1


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(server, status):
    fetcher, waits = _recorded(retries=2, backoff_s=0.01)
    with pytest.raises(DownloadError, match=rf"HTTP {status} .*\(after 3 attempts\)"):
        fetch_with(fetcher, server.url(f"status/{status}"))
    assert server.hits(f"status/{status}") == 3 and len(waits) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 418, 451])
def test_client_errors_are_not_retried(server, status):
    fetcher, waits = _recorded(retries=3, backoff_s=0.01)
    with pytest.raises(DownloadError):
        fetch_with(fetcher, server.url(f"status/{status}"))
    assert server.hits(f"status/{status}") == 1 and waits == []


def test_invalid_url_is_not_retried():
    fetcher, waits = _recorded(retries=3)
    with pytest.raises(DownloadError, match="invalid URL 'http://exa mple.invalid/a.jpg'"):
        fetch_with(fetcher, "http://exa mple.invalid/a.jpg")
    assert waits == []


@pytest.mark.parametrize("name", ["a b.bin", "café.bin", "猫.bin"])
def test_spaces_and_non_ascii_in_paths_are_percent_encoded(server, name):
    server.add(name, DATA)
    assert fetch(server.url("files/" + name)) == DATA
    assert server.hits("files/" + name) == 1


# redirects, size cap, scheme restriction


def test_too_many_redirects_is_a_clear_error(server):
    with pytest.raises(DownloadError, match="more than 10 redirects"):
        fetch(server.url("redirect/11/fetch.bin"), retries=3)


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/x", "file:///etc/hostname",
                                    "gopher://127.0.0.1/x"])
def test_redirects_go_to_http_and_https_only(server, target):
    with pytest.raises(UnsupportedSchemeError, match="is not followed"):
        fetch(server.goto(target), retries=3)
    assert server.hits("goto") == 1


def test_credentials_are_dropped_after_a_cross_origin_redirect(server):
    from mmbeam.io.config import HTTPConfig, IOConfig
    from mmbeam.testing.http_server import FaultServer

    creds = IOConfig(http=HTTPConfig(headers=(("X-Api-Key", "k"), ("Cookie", "c=1")),
                                     bearer_token="t"))
    with FaultServer() as other:
        other.add("x.bin", DATA)
        for status in (301, 302, 303, 307, 308):
            assert fetch(server.goto(other.url("files/x.bin"), status), io_config=creds) == DATA
        assert len(other.received()) == 5
        for headers in other.received():
            assert {k.lower() for k in headers} & {"authorization", "x-api-key", "cookie"} == set()
    assert all(h["Authorization"] == "Bearer t" for h in server.received("goto"))


def test_no_credentials_go_over_http_after_an_https_hop(server, tmp_path, monkeypatch):
    """http://home -> https://other -> http://home: back at the configured origin, but after an
    https hop, so no credential is sent in the clear (and none reaches the other origin)."""
    from mmbeam.io.config import HTTPConfig, IOConfig
    from mmbeam.testing.http_server import FaultServer
    from mmbeam.testing.tls import loopback_tls

    context, ca_file = loopback_tls(str(tmp_path))
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    creds = IOConfig(http=HTTPConfig(headers=(("X-Api-Key", "k"), ("Cookie", "c=1")),
                                     bearer_token="t"))
    secret = {"authorization", "x-api-key", "cookie"}
    with FaultServer(ssl_context=context) as secure:
        secure.add("s.bin", DATA)
        assert secure.base_url.startswith("https://")
        assert fetch(secure.url("files/s.bin"), io_config=creds) == DATA  # https, same origin
        assert {k.lower() for k in secure.received("files/s.bin")[0]} >= secret
        url = server.goto(secure.goto(server.url("files/fetch.bin")))
        assert fetch(url, io_config=creds) == DATA
        (hop,) = secure.received("goto")
        assert {k.lower() for k in hop} & secret == set()
    assert {k.lower() for k in server.received("goto")[0]} >= secret  # the first hop: its own
    (back,) = server.received("files/fetch.bin")
    assert back.get("User-Agent") == "mmbeam" and {k.lower() for k in back} & secret == set()


def test_a_body_over_max_bytes_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match=r"Content-Length 102400 bytes is over max_bytes=1000"):
        fetch(server.url("files/fetch.bin"), max_bytes=1000)
    with pytest.raises(DownloadError, match=r"body passed max_bytes=100000"):
        fetch(server.url("endless"), max_bytes=100_000, retries=0)
    path = tmp_path / "big.bin"
    path.write_bytes(DATA)
    with pytest.raises(DownloadError, match=r"102400 bytes is over max_bytes=1000"):
        fetch(str(path), max_bytes=1000)
    assert fetch(str(path), max_bytes=len(DATA)) == DATA


def test_max_bytes_defaults_to_256_mib_in_fetcher_and_frame(server):
    """Without max_bytes a huge Content-Length is refused at once (the server would trickle it)."""
    import mmbeam
    from mmbeam import col

    over = 256 * 2**20 + 1
    with pytest.raises(DownloadError, match=rf"Content-Length {over} bytes is over "
                                            rf"max_bytes={256 * 2**20}"):
        fetch(server.url(f"huge/{over}"), retries=0, timeout_s=30)
    assert fetch(server.url("files/fetch.bin")) == DATA
    if _FORM["name"] == "loop":
        import time

        frame = mmbeam.from_pydict({"url": [server.url(f"huge/{over}")]})
        start = time.monotonic()
        out = frame.with_column("d", col("url").url.download(on_error="null", timeout_s=30,
                                                              retries=0))
        assert out.to_pydict()["d"] == [None]
        assert time.monotonic() - start < 20  # refused by its length, not timed out at 30 s


def test_allowed_schemes_refuses_other_schemes_and_local_paths(server, tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(DATA)
    web = ("http", "https")
    with pytest.raises(UnsupportedSchemeError, match="is a local path, which is not allowed"):
        fetch(str(path), allowed_schemes=web)
    with pytest.raises(UnsupportedSchemeError, match="scheme 'file'"):
        fetch(f"file://{path}", allowed_schemes=web)
    assert fetch(server.url("files/fetch.bin"), allowed_schemes=web) == DATA
    assert fetch(str(path), allowed_schemes=("file",)) == DATA
    with pytest.raises(UnsupportedSchemeError, match="'https' is not followed"):
        fetch(server.goto("https://127.0.0.1:1/x"), allowed_schemes=("http", "file"))
    with pytest.raises(ConfigError, match="unknown scheme 'ftp'"):
        Fetcher(allowed_schemes=("ftp",))


def test_the_deadline_bounds_a_dripping_body(server):
    import time

    server.add("drip.bin", bytes(100))
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out after 1 s"):
        fetch(server.url("drip/0.2/drip.bin"), timeout_s=1, retries=0)
    assert time.monotonic() - start < 10  # a per-read timeout would take 20 s


def test_a_cancelled_download_stops_reading_at_once(server):
    import asyncio
    import time

    from fsspec.asyn import get_loop

    if _FORM["name"] == "blocking":
        pytest.skip("cancellation is the event-loop form's")
    server.add("cancel.bin", bytes(1000))  # 100 s of drip: a thread still reading holds it
    fetcher = Fetcher(timeout_s=60, retries=0)

    async def give_up():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fetcher.fetch(server.url("drip/0.1/cancel.bin")), 0.5)

    asyncio.run_coroutine_threadsafe(give_up(), get_loop()).result(timeout=30)
    deadline = time.monotonic() + 10
    while server.active_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.active_requests == 0  # the drip lost its reader well before its 100 s


@pytest.mark.parametrize("store", ["mmbeam_s3", "mmbeam_gcs"])
def test_max_bytes_applies_to_object_stores_from_metadata(store, request, mmbeam_bucket_name):
    srv = request.getfixturevalue(store)
    bucket = srv.make_bucket(mmbeam_bucket_name)
    url = f"{bucket.rstrip('/')}/big.bin"
    srv.put(url, DATA)
    with pytest.raises(DownloadError, match=r"big.bin is too large: 102400 bytes is over "
                                            r"max_bytes=1000"):
        fetch(url, io_config=srv.io_config(), max_bytes=1000)
    assert fetch(url, io_config=srv.io_config(), max_bytes=len(DATA)) == DATA
    with pytest.raises(UnsupportedSchemeError, match="not allowed"):
        fetch(url, io_config=srv.io_config(), allowed_schemes=("http", "https"))
