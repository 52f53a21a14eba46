"""The test-support package itself: sample images and every fault of the real loopback servers."""

from __future__ import annotations

import asyncio
import errno
import http.client
import io
import socket
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import fsspec
import gcsfs
import numpy as np
import pytest
from PIL import Image

import mmbeam.testing as mt
from mmbeam.errors import ConfigError
from mmbeam.testing import FaultServer

# -- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "shape"), [("RGB", (30, 40, 3)), ("RGBA", (30, 40, 4)), ("L", (30, 40))])
def test_make_image_shape_dtype_and_determinism(mode, shape):
    a = mt.make_image(40, 30, mode, seed=3)
    assert a.shape == shape and a.dtype == np.uint8
    assert np.array_equal(a, mt.make_image(40, 30, mode, seed=3))
    assert not np.array_equal(a, mt.make_image(40, 30, mode, seed=4))


def test_make_image_is_smooth_and_compresses_like_a_photo():
    a = mt.make_image(256, 256, seed=1).astype(np.int16)
    step = np.abs(np.diff(a, axis=1)).mean()
    assert step < 4, f"neighbouring pixels differ by {step} on average: looks like noise"
    assert a.std() > 20, "an almost flat image cannot show resize mistakes"
    assert len(mt.encode_sample(a.astype(np.uint8), "JPEG", quality=90)) < 256 * 256 * 3 / 8


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_encode_sample_writes_each_format(fmt):
    pixels = mt.make_image(48, 32, seed=2)
    image = Image.open(io.BytesIO(mt.encode_sample(pixels, fmt)))
    assert image.format == fmt and image.size == (48, 32)
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)


def test_encode_sample_animation_and_exif_orientation():
    pixels = mt.make_image(40, 20, seed=5)
    gif = Image.open(io.BytesIO(mt.encode_sample(pixels, "GIF", frames=3)))
    assert gif.n_frames == 3
    jpeg = Image.open(io.BytesIO(mt.encode_sample(pixels, "JPEG", exif_orientation=6)))
    assert jpeg.getexif()[0x0112] == 6
    assert 0x0112 not in Image.open(io.BytesIO(mt.encode_sample(pixels, "JPEG"))).getexif()
    with pytest.raises(ConfigError, match="exif_orientation"):
        mt.encode_sample(pixels, "JPEG", exif_orientation=9)


def test_sample_images_names_sizes_and_determinism():
    images = mt.sample_images(5, format="PNG", min_size=20, max_size=40, seed=7)
    assert list(images) == [f"img_{i:04d}.png" for i in range(5)]
    for data in images.values():
        assert all(20 <= side <= 40 for side in Image.open(io.BytesIO(data)).size)
    assert images == mt.sample_images(5, format="PNG", min_size=20, max_size=40, seed=7)


def test_decompression_bomb_is_small_but_declares_a_huge_size(monkeypatch):
    bomb = mt.decompression_bomb()
    assert len(bomb) < 64 * 1024
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert Image.open(io.BytesIO(bomb)).size == (20000, 20000)
    small = Image.open(io.BytesIO(mt.decompression_bomb(300, 200)))
    small.load()  # the pixel data is complete and valid, not just a header
    assert small.size == (300, 200) and small.getextrema() == (0, 0)


def test_truncated_image_fails_to_load():
    data = mt.encode_sample(mt.make_image(64, 64), "JPEG")
    cut = mt.truncated(data, keep=0.5)
    assert cut == data[: len(data) // 2]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(cut)).load()


# -- HTTP fault server ------------------------------------------------------------------------


def _get(srv: FaultServer, path: str, conn: http.client.HTTPConnection | None = None, **headers):
    c = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request("GET", "/" + path, headers=headers)
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read()


def test_files_route_serves_bytes_and_404s(mmbeam_http):
    mmbeam_http.add("files-a.jpg", b"\xff\xd8jpeg")
    status, headers, body = _get(mmbeam_http, "files/files-a.jpg")
    assert (status, headers["Content-Type"], body) == (200, "image/jpeg", b"\xff\xd8jpeg")
    assert _get(mmbeam_http, "files/missing.jpg")[0] == 404
    status, headers, body = _get(mmbeam_http, "files/files-a.jpg", Range="bytes=2-5")
    assert (status, body, headers["Content-Range"]) == (206, b"jpeg", "bytes 2-5/6")


@pytest.mark.parametrize("code", [400, 403, 404, 500, 503])
def test_status_route(mmbeam_http, code):
    status, _, body = _get(mmbeam_http, f"status/{code}")
    assert status == code and str(code).encode() in body


def test_status_without_body_keeps_the_connection_usable(mmbeam_http):
    conn = http.client.HTTPConnection("127.0.0.1", mmbeam_http.port, timeout=10)
    assert [_get(mmbeam_http, p, conn)[:3:2] for p in ("status/204", "status/304", "status/200")] == [
        (204, b""), (304, b""), (200, b"status 200\n")
    ]
    assert _get(mmbeam_http, "status/99")[0] == 404


def test_flaky_route_fails_n_times_then_serves(mmbeam_http):
    mmbeam_http.add("flaky-a.png", b"png!")
    conn = http.client.HTTPConnection("127.0.0.1", mmbeam_http.port, timeout=10)
    statuses = [_get(mmbeam_http, "flaky/2/flaky-a.png", conn)[0] for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    assert _get(mmbeam_http, "flaky/2/flaky-a.png")[2] == b"png!"
    assert mmbeam_http.hits("flaky/2/flaky-a.png") == 5
    assert mmbeam_http.hits(mmbeam_http.url("/flaky/2/flaky-a.png")) == 5


def test_throttle_route_sends_429_with_retry_after(mmbeam_http):
    mmbeam_http.add("throttle-a.gif", b"gif")
    status, headers, _ = _get(mmbeam_http, "throttle/1/throttle-a.gif")
    assert status == 429 and headers["Retry-After"] == "0"
    assert _get(mmbeam_http, "throttle/1/throttle-a.gif")[:3:2] == (200, b"gif")


def test_slow_route_delays_the_answer(mmbeam_http):
    mmbeam_http.add("slow-a.jpg", b"slow")
    start = time.monotonic()
    assert _get(mmbeam_http, "slow/0.3/slow-a.jpg")[2] == b"slow"
    assert time.monotonic() - start >= 0.3
    with pytest.raises(TimeoutError):
        urllib.request.urlopen(mmbeam_http.url("slow/2/slow-a.jpg"), timeout=0.2).read()


def test_truncated_route_sends_half_the_promised_body(mmbeam_http):
    mmbeam_http.add("trunc-a.jpg", bytes(range(200)))
    conn = http.client.HTTPConnection("127.0.0.1", mmbeam_http.port, timeout=10)
    conn.request("GET", "/truncated/trunc-a.jpg")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") == "200"
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert info.value.partial == bytes(range(100))

    async def fetch() -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.get(mmbeam_http.url("truncated/trunc-a.jpg")) as r:
                return await r.read()

    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(fetch())


def test_reset_route_resets_the_connection(mmbeam_http):
    mmbeam_http.add("reset-a.jpg", b"never sent")
    with socket.create_connection(("127.0.0.1", mmbeam_http.port), timeout=10) as sock:
        sock.sendall(b"GET /reset/reset-a.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with pytest.raises(ConnectionResetError) as info:  # a FIN would read b"" instead
            sock.recv(1024)
    assert info.value.errno == errno.ECONNRESET
    with pytest.raises(ConnectionResetError):  # http.client sees it too (not a bare close)
        _get(mmbeam_http, "reset/reset-a.jpg")


def test_redirect_routes(mmbeam_http):
    mmbeam_http.add("redir-a.jpg", b"target")
    status, headers, _ = _get(mmbeam_http, "redirect/redir-a.jpg")
    assert status == 302 and headers["Location"] == mmbeam_http.url("files/redir-a.jpg")
    assert urllib.request.urlopen(mmbeam_http.url("redirect/3/redir-a.jpg"), timeout=10).read() == b"target"
    assert [mmbeam_http.hits(f"redirect/{k}/redir-a.jpg") for k in (3, 2, 1)] == [1, 1, 1]


def test_keep_alive_reuses_one_connection_with_aiohttp():
    async def fetch_all(srv: FaultServer) -> list[bytes]:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            out = []
            for _ in range(5):
                async with session.get(srv.url("files/k.bin")) as r:
                    out.append(await r.read())
            return out

    with FaultServer() as srv:
        srv.add("k.bin", b"k" * 5000)
        assert asyncio.run(fetch_all(srv)) == [b"k" * 5000] * 5
        assert srv.hits("files/k.bin") == 5 and srv.connections_opened == 1


def test_latency_and_max_connections_limit_concurrency():
    with FaultServer(latency_s=0.1, max_connections=2) as srv:
        srv.add("c.bin", b"c")
        start = time.monotonic()
        bodies: list[bytes] = []
        threads = [
            threading.Thread(target=lambda: bodies.append(_get(srv, "files/c.bin")[2]))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert bodies == [b"c"] * 6
        assert srv.peak_concurrency == 2
        assert time.monotonic() - start >= 0.3  # three waves of two, 0.1 s each


def test_close_stops_promptly_with_a_request_in_flight():
    srv = FaultServer().start()
    srv.add("s.bin", b"s")
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            urllib.request.urlopen(srv.url("slow/30/s.bin"), timeout=40).read()
        except (OSError, http.client.HTTPException) as err:
            errors.append(err)

    client = threading.Thread(target=slow)
    client.start()
    for _ in range(200):  # wait (bounded) until the request is being served
        if srv.hits("slow/30/s.bin"):
            break
        time.sleep(0.01)
    thread = srv._thread
    srv.close()
    client.join(timeout=10)
    assert thread is not None and not thread.is_alive()
    for _ in range(200):  # the handler's sleep is cut short too, not left running for 30 s
        if srv.active_requests == 0:
            break
        time.sleep(0.01)
    assert srv.active_requests == 0
    assert not client.is_alive() and len(errors) == 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{thread.name.split(':')[1]}/files/s.bin", timeout=2)


# -- S3 and GCS -------------------------------------------------------------------------------


def test_s3_round_trip_through_s3fs(mmbeam_s3, mmbeam_bucket_name):
    bucket = mmbeam_s3.make_bucket(mmbeam_bucket_name)
    assert mmbeam_s3.io_config().storage_options("s3") == mmbeam_s3.storage_options()
    fs = mmbeam_s3.filesystem()
    fs.pipe_file(f"{mmbeam_bucket_name}/in/a.jpg", b"written by s3fs")
    assert mmbeam_s3.get(f"{bucket}/in/a.jpg") == b"written by s3fs"
    mmbeam_s3.put(f"{bucket}/in/b.jpg", b"written by boto3")
    assert fs.cat_file(f"{mmbeam_bucket_name}/in/b.jpg") == b"written by boto3"
    assert mmbeam_s3.ls(bucket) == [f"{bucket}/in/a.jpg", f"{bucket}/in/b.jpg"]
    assert fs.ls(f"{mmbeam_bucket_name}/in") == [f"{mmbeam_bucket_name}/in/{n}" for n in ("a.jpg", "b.jpg")]


def test_gcs_round_trip_through_gcsfs(mmbeam_gcs, mmbeam_bucket_name):
    bucket = mmbeam_gcs.make_bucket(mmbeam_bucket_name)
    opts = mmbeam_gcs.storage_options()
    assert opts == {"endpoint_url": mmbeam_gcs.endpoint_url, "project": "test", "token": "anon"}
    fs = fsspec.filesystem("gs", skip_instance_cache=True, **opts)  # the path mmbeam.io takes
    assert type(fs) is gcsfs.core.GCSFileSystem, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT is not off"
    fs.pipe_file(f"{mmbeam_bucket_name}/in/a.jpg", b"written by gcsfs")
    assert mmbeam_gcs.get(f"{bucket}/in/a.jpg") == b"written by gcsfs"
    mmbeam_gcs.put(f"{bucket}/in/b c.jpg", b"written over HTTP")
    assert fs.cat_file(f"{mmbeam_bucket_name}/in/b c.jpg") == b"written over HTTP"
    assert fs.exists(f"{mmbeam_bucket_name}/in/a.jpg")
    assert not fs.exists(f"{mmbeam_bucket_name}/in/none.jpg")
    assert fs.ls(f"{mmbeam_bucket_name}/in") == [f"{mmbeam_bucket_name}/in/{n}" for n in ("a.jpg", "b c.jpg")]
    assert mmbeam_gcs.ls(f"{bucket}/in/") == [f"{bucket}/in/a.jpg", f"{bucket}/in/b c.jpg"]
    with pytest.raises(urllib.error.HTTPError):
        mmbeam_gcs.get(f"{bucket}/in/none.jpg")


# -- plugin fixtures --------------------------------------------------------------------------


def test_fixtures_give_images_and_unique_bucket_names(mmbeam_sample_images, mmbeam_bucket_name):
    assert len(mmbeam_sample_images) == 8
    for name, data in mmbeam_sample_images.items():
        assert name.endswith(".jpg") and Image.open(io.BytesIO(data)).format == "JPEG"
    assert 3 <= len(mmbeam_bucket_name) <= 63 and mmbeam_bucket_name == mmbeam_bucket_name.lower()


# -- FaultServer: hostile routes and recorded headers -------------------------------------------


def _raw(srv: FaultServer, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/" + path, headers={"X-Probe": "p-1"})
    return conn.getresponse()


def test_fault_server_records_request_headers():
    with FaultServer() as srv:
        srv.add("h.bin", b"x")
        _raw(srv, "files/h.bin").read()
        _raw(srv, "status/404").read()
        assert [h["X-Probe"] for h in srv.received("files/h.bin")] == ["p-1"]
        assert len(srv.received()) == 2
        srv.reset_stats()
        assert srv.received() == []


def test_fault_server_retry_after_per_route():
    with FaultServer() as srv:
        srv.add("t.bin", b"x")
        assert _raw(srv, "status/503?retry_after=7").getheader("Retry-After") == "7"
        assert _raw(srv, "throttle/1/t.bin?retry_after=3").getheader("Retry-After") == "3"
        assert _raw(srv, "status/429").getheader("Retry-After") == "0"


def test_fault_server_goto_redirects_anywhere():
    with FaultServer() as srv:
        for target in ("ftp://example.invalid/a", "file:///etc/hostname", "http://127.0.0.1:1/x"):
            response = _raw(srv, srv.goto(target, 307).split("/", 3)[3])
            assert response.status == 307 and response.getheader("Location") == target


def test_fault_server_drip_endless_and_huge_bodies():
    with FaultServer() as srv:
        srv.add("d.bin", b"abc")
        start = time.monotonic()
        assert _raw(srv, "drip/0.2/d.bin").read() == b"abc"
        assert time.monotonic() - start >= 0.5  # three bytes, 0.2 s apart
        endless = _raw(srv, "endless")
        assert endless.getheader("Transfer-Encoding") == "chunked"
        assert len(endless.read(1_000_000)) == 1_000_000  # more than any file here, still going
        huge = _raw(srv, "huge/2000000000")
        assert huge.getheader("Content-Length") == "2000000000"
        assert huge.read(10) == bytes(10)
