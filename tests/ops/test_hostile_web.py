"""Hostile web input through every download surface, each surface in its own subprocess
(hostile_child.py) so wall time and peak RSS (VmHWM) are the client's alone: a dripping body hits
the deadline, an endless or huge body hits the size cap, redirects leave no credential at another
origin and never reach ftp:// or file://, and a scheme restriction refuses local paths.

Bounds are generous (the machine may be loaded): timeout_s=2 must end within 10 s; a body cut at
8 MiB must grow peak RSS by less than 150 MB (reading it whole would be 2 GB or unbounded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest

import mmbeam
from mmbeam import col
from mmbeam import transforms as mt
from mmbeam.io.config import HTTPConfig, IOConfig
from mmbeam.testing.collect import run_collect

CHILD = Path(__file__).with_name("hostile_child.py")
SURFACES = ("transform", "frame", "async")
SECRETS = ("key-123", "sid=c00k", "tok-456")
CHILD_TIMEOUT_S = 180
# one pytest-xdist worker runs this module: its `reports` fixture (~11 s) then runs once
pytestmark = pytest.mark.xdist_group("hostile_web")


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    """Every surface's report (the children run at the same time)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(mmbeam.__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)}
    procs = {s: subprocess.Popen([sys.executable, str(CHILD), s], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for s in SURFACES}
    out = {}
    try:
        for surface, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)
            assert proc.returncode == 0, f"{surface} child failed:\n{stdout}\n{stderr[-3000:]}"
            out[surface] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for proc in procs.values():  # a hung child (a deadline that never fires) is stopped
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def _failed_everywhere(case: dict) -> None:
    assert case["values"] == [] and all(case["nulled"]) and case["nulled"], case


@pytest.mark.parametrize("surface", SURFACES)
def test_dripping_body_fails_at_the_deadline(reports, surface):
    case = reports[surface]["drip"]
    _failed_everywhere(case)
    assert case["seconds"] < 10 * (2 if surface == "transform" else 1)  # transform: 2 runs
    assert case["still_served"] == 0  # the client stopped reading: the server saw it leave
    if surface == "transform":
        assert case["stages"] == ["Download"]
        assert "timed out after 2 s" in case["errors"][0] and case["url"] in case["errors"][0]


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("name, words", [("endless", "passed max_bytes=8388608"),
                                         ("huge", "Content-Length 2000000000")])
def test_oversized_body_is_cut_at_max_bytes(reports, surface, name, words):
    case = reports[surface][name]
    _failed_everywhere(case)
    assert case["hwm_growth_mb"] < 150, case
    assert case["seconds"] < 30
    assert case["still_served"] == 0
    if surface == "transform":
        assert words in case["errors"][0] and "max_bytes" in case["errors"][0]


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("name", ["ftp", "file"])
def test_redirect_to_other_schemes_is_a_clear_error(reports, surface, name):
    case = reports[surface][name]
    _failed_everywhere(case)
    assert case["seconds"] < 10
    if surface == "transform":
        assert f"scheme {name!r} is not followed" in case["errors"][0]


@pytest.mark.parametrize("surface", SURFACES)
def test_credentials_stay_with_their_origin(reports, surface):
    case = reports[surface]["cross"]
    assert case["values"] == [len(b"other origin")] and case["nulled"] == [False]
    first = case["first_hop"][0]
    assert first["Authorization"] == "Bearer tok-456" and first["X-Api-Key"] == "key-123"
    assert case["other_origin"], "the redirect was not followed"
    for headers in case["other_origin"]:
        assert headers.get("User-Agent") == "mmbeam"
        assert not any(s in json.dumps(headers) for s in SECRETS), headers


@pytest.mark.parametrize("surface", SURFACES)
def test_allowed_schemes_refuses_local_paths(reports, surface):
    case = reports[surface]["local"]
    _failed_everywhere(case)
    if surface == "transform":
        assert "'/etc/hostname' is a local path, which is not allowed" in case["errors"][0]


# M11: configured headers and the bearer token reach the server, on both surfaces


def _creds() -> IOConfig:
    return IOConfig(http=HTTPConfig(headers=(("X-Api-Key", "k-1"),), bearer_token="t-2",
                                    user_agent="mmbeam-test"))


def _assert_sent(server, path):
    (headers,) = server.received(path)
    assert headers["X-Api-Key"] == "k-1"
    assert headers["Authorization"] == "Bearer t-2"
    assert headers["User-Agent"] == "mmbeam-test"


def test_http_config_reaches_the_server_from_download(mmbeam_http):
    url = mmbeam_http.add("m11-transform.bin", b"abc")
    out = run_collect(lambda p: p | beam.Create([url]) | mt.Download(io_config=_creds())).outputs
    assert out == [b"abc"]
    _assert_sent(mmbeam_http, url)


def test_http_config_reaches_the_server_from_the_frame(mmbeam_http):
    url = mmbeam_http.add("m11-frame.bin", b"xyz")
    out = mmbeam.from_pydict({"url": [url]}).with_column(
        "data", col("url").url.download(io_config=_creds())).to_pydict()
    assert out["data"] == [b"xyz"]
    _assert_sent(mmbeam_http, url)


# the frame's url.download takes Download's options


def test_url_download_checks_its_options_when_built():
    from mmbeam.errors import ConfigError

    with pytest.raises(ConfigError, match="max_bytes"):
        col("url").url.download(max_bytes=0)
    with pytest.raises(ConfigError, match="unknown scheme 'ftp'"):
        col("url").url.download(allowed_schemes=("ftp",))
    with pytest.raises(ConfigError, match="timeout_s"):
        col("url").url.download(timeout_s=0)
    with pytest.warns(DeprecationWarning, match="use_native_downloader.*does nothing"):
        col("url").url.download(use_native_downloader=True)


def test_url_download_passes_retries_and_max_bytes(mmbeam_http):
    mmbeam_http.add("frame-opts.bin", bytes(5000))
    flaky = mmbeam_http.url("flaky/1/frame-opts.bin")
    frame = mmbeam.from_pydict({"url": [flaky, mmbeam_http.url("files/frame-opts.bin")]})
    out = frame.with_column("data", col("url").url.download(
        on_error="null", retries=0, max_bytes=4000)).to_pydict()
    assert out["data"] == [None, None]  # a 500 with no retry; 5000 bytes over the cap
    assert mmbeam_http.hits("flaky/1/frame-opts.bin") == 1
    out = frame.with_column("data", col("url").url.download(retries=1)).to_pydict()
    assert out["data"] == [bytes(5000)] * 2


def test_url_download_bounds_requests_in_flight_with_max_connections():
    from mmbeam.testing.http_server import FaultServer

    with FaultServer(latency_s=0.2) as srv:
        urls = [srv.add(f"conn-{i}.bin", bytes([i]) * 10) for i in range(12)]
        frame = mmbeam.from_pydict({"url": urls})
        out = frame.with_column("d", col("url").url.download(max_connections=2)).to_pydict()
        assert out["d"] == [bytes([i]) * 10 for i in range(12)]
        assert 1 <= srv.peak_concurrency <= 2
        srv.reset_stats()
        frame.with_column("d", col("url").url.download(max_connections=8)).to_pydict()
        assert srv.peak_concurrency > 2  # the option, not something else, held it at 2
