"""RowChain: per-row fused steps on the I/O loop and the CPU pool, with errors located per step."""

import functools
import pickle
import time

import numpy as np
import pytest

from mmbeam.errors import DecodeError, DownloadError, StageError
from mmbeam.ops.decode import decode_image
from mmbeam.ops.encode import encode_image
from mmbeam.ops.fetch import Fetcher
from mmbeam.ops.resize import resize_image
from mmbeam.ops.rowchain import RowChain, Step, value_bytes
from mmbeam.testing.http_server import FaultServer


async def _fetch(fetcher, url, key):
    return await fetcher.fetch(url)


def _cpu(kernel, value, key):
    return kernel(value)


def thumbnail_chain(limit=4, null_decode=False):
    return RowChain([
        Step("download", "io", functools.partial(_fetch, Fetcher(retries=0)), limit=limit),
        Step("decode", "cpu", functools.partial(_cpu, functools.partial(
            decode_image, min_size=(32, 32))), nullable=null_decode),
        Step("resize", "cpu", functools.partial(_cpu, functools.partial(
            resize_image, width=32, height=32))),
        Step("encode", "cpu", functools.partial(_cpu, functools.partial(
            encode_image, format="PNG"))),
    ])


@pytest.fixture(scope="module")
def served(mmbeam_http, serve_jpegs):
    urls = serve_jpegs("rc", [(200 + 8 * i, 150) for i in range(6)])
    return mmbeam_http, dict(enumerate(urls.values()))


def test_chain_matches_the_ops_called_one_by_one(served):
    server, urls = served
    chain = thumbnail_chain()
    outcomes = [chain.submit(u).result(timeout=30) for u in urls.values()]
    for url, out in zip(urls.values(), outcomes):
        data = Fetcher().submit(url).result()
        expected = encode_image(resize_image(decode_image(data, min_size=(32, 32)), 32, 32), "PNG")
        assert out.error is None and out.nulled is None and out.value == expected
        assert out.io_seconds > 0 and out.cpu_seconds > 0
        assert out.peak_bytes >= len(data)  # at least the downloaded bytes were held


def test_failure_is_located_at_its_stage_and_names_the_row(served):
    server, urls = served
    server.add("rc/junk.jpg", b"<html>junk</html>")
    chain = thumbnail_chain()
    missing = server.url("files/rc/missing.jpg")
    out = chain.submit(missing).result(timeout=30)
    assert isinstance(out.error, DownloadError) and out.error.stage == "download"
    assert "missing.jpg" in str(out.error) and out.value is None
    junk = server.url("files/rc/junk.jpg")
    out = chain.submit(junk, name="row 7").result(timeout=30)
    assert isinstance(out.error, DecodeError) and out.error.stage == "decode"
    assert "decode failed for 'row 7': not an image" in str(out.error)


def test_nullable_step_nulls_the_row_and_later_steps_skip_it(served):
    server, _ = served
    server.add("rc/junk2.jpg", b"junk")
    out = thumbnail_chain(null_decode=True).submit(server.url("files/rc/junk2.jpg")).result(30)
    assert out.value is None and out.error is None and out.nulled == "decode"
    assert thumbnail_chain().submit(None).result(30) == (None, None, None, 0.0, 0.0, 0, (), None)


def test_a_plain_exception_becomes_a_located_stage_error():
    def boom(value, key):
        raise RuntimeError(f"bad {value}")

    out = RowChain([Step("explode", "cpu", boom)]).submit(3, name="row 3").result(30)
    assert type(out.error) is StageError and str(out.error) == "explode failed for 'row 3': RuntimeError: bad 3"


def test_io_limit_bounds_rows_in_the_io_step_while_cpu_overlaps():
    with FaultServer(latency_s=0.05) as slow:
        urls = [slow.add(f"p{i}.bin", bytes([i]) * 100) for i in range(24)]
        def work(value, key):  # CPU step that runs while other rows still download
            time.sleep(0.01)
            return len(value)

        chain = RowChain([Step("download", "io", functools.partial(_fetch, Fetcher()), limit=3),
                          Step("work", "cpu", work)])
        futures = [chain.submit(u) for u in urls]
        assert [f.result(30).value for f in futures] == [100] * 24
        assert 1 < slow.peak_concurrency <= 3


def test_pickles_and_runs_after(served):
    _, urls = served
    clone = pickle.loads(pickle.dumps(thumbnail_chain()))
    assert clone.stages == ("download", "decode", "resize", "encode")
    assert clone.submit(urls[0]).result(30).value.startswith(b"\x89PNG")


def test_value_bytes_and_bad_steps():
    assert value_bytes(b"abc") == 3 and value_bytes(np.zeros((2, 3), np.uint8)) == 6
    assert value_bytes("text") == 0
    with pytest.raises(ValueError, match="kind must be"):
        RowChain([Step("x", "gpu", _cpu)])
    with pytest.raises(ValueError, match="at least one step"):
        RowChain([])


def _fetch_blocking(fetcher, url, key):
    return fetcher.fetch_blocking(url)


def threaded_chain(limit=4, null_download=False):
    """thumbnail_chain whose download can block: rows run on threads, not on the I/O loop."""
    fetcher = Fetcher(retries=0)
    download = Step("download", "io", functools.partial(_fetch, fetcher), null_download, limit,
                    functools.partial(_fetch_blocking, fetcher))
    return RowChain([download, *thumbnail_chain().steps[1:]])


def test_threaded_rows_give_what_the_loop_gives(served):
    _, urls = served
    chain = threaded_chain()
    assert chain._threaded and not thumbnail_chain()._threaded
    threaded = [chain.submit(u).result(timeout=30) for u in urls.values()]
    looped = [thumbnail_chain().submit(u).result(timeout=30) for u in urls.values()]
    for a, b in zip(threaded, looped):
        assert a.error is None and a.nulled is None and a.value == b.value
        assert a.io_seconds > 0 and a.cpu_seconds > 0 and a.peak_bytes >= b.peak_bytes // 2
    clone = pickle.loads(pickle.dumps(chain))
    assert clone.submit(urls[0]).result(30).value == threaded[0].value


def test_threaded_failures_are_located_and_nulls_pass_through(served):
    server, urls = served
    server.add("rc/junk3.jpg", b"<html>junk</html>")
    missing = server.url("files/rc/missing3.jpg")
    out = threaded_chain().submit(missing).result(timeout=30)
    assert isinstance(out.error, DownloadError) and out.error.stage == "download"
    assert "missing3.jpg" in str(out.error) and out.value is None
    out = threaded_chain().submit(server.url("files/rc/junk3.jpg"), name="row 9").result(30)
    assert isinstance(out.error, DecodeError) and out.error.stage == "decode"
    assert "decode failed for 'row 9'" in str(out.error)
    out = threaded_chain(null_download=True).submit(missing).result(30)
    assert out.value is None and out.error is None and out.nulled == "download"
    assert threaded_chain().submit(None).result(30) == (None, None, None, 0.0, 0.0, 0, (), None)


def test_threaded_io_limit_bounds_rows_in_the_io_step():
    with FaultServer(latency_s=0.05) as slow:
        urls = [slow.add(f"t{i}.bin", bytes([i]) * 100) for i in range(24)]
        fetcher = Fetcher()
        chain = RowChain([
            Step("download", "io", functools.partial(_fetch, fetcher), limit=3,
                 blocking=functools.partial(_fetch_blocking, fetcher)),
            Step("size", "cpu", lambda value, key: len(value))])
        futures = [chain.submit(u) for u in urls]
        assert [f.result(30).value for f in futures] == [100] * 24
        assert 1 < slow.peak_concurrency <= 3


@pytest.mark.parametrize("make", [thumbnail_chain, threaded_chain], ids=["loop", "threads"])
def test_outcome_gives_each_steps_output_bytes_and_the_value_a_step_failed_on(served, make):
    server, urls = served
    data = Fetcher().submit(urls[1]).result()
    out = make().submit(urls[1]).result(30)
    decoded = decode_image(data, min_size=(32, 32))
    assert out.sizes == (len(data), decoded.nbytes, 32 * 32 * 3, len(out.value))
    server.add("rc/junk4.jpg", b"<html>junk</html>")
    out = make().submit(server.url("files/rc/junk4.jpg")).result(30)
    assert out.sizes == (len(b"<html>junk</html>"),)  # decode, step 1, failed
    assert out.failed_input == b"<html>junk</html>"
    out = make().submit(server.url("files/rc/missing4.jpg")).result(30)
    assert out.sizes == () and out.failed_input == server.url("files/rc/missing4.jpg")


def test_cpu_only_outcome_gives_sizes_and_failed_input():
    def half(value, key):
        if value % 2:
            raise ValueError("odd")
        return bytes(value // 2)

    chain = RowChain([Step("bytes", "cpu", lambda v, k: bytes(v)), Step("len", "cpu", lambda v, k: len(v)),
                      Step("half", "cpu", half)])
    assert chain.submit(8).result(30).sizes == (8, 0, 4)
    out = chain.submit(7).result(30)
    assert out.sizes == (7, 0) and out.failed_input == 7 and out.error.stage == "half"


def test_async_only_io_step_honours_nullable_on_the_event_loop():
    """An I/O step with no blocking form runs on the I/O loop; its failure nulls the row when
    the step is nullable (later steps skip it) and is a located StageError when it is not."""
    async def lookup(value, key):
        if value == "missing":
            raise FileNotFoundError(f"no such object: {value}")
        return value.encode()

    def chain(nullable):
        return RowChain([Step("lookup", "io", lookup, nullable, limit=2),
                         Step("size", "cpu", lambda value, key: len(value))])

    nullable = chain(True)
    assert not nullable._threaded
    outs = [nullable.submit(v).result(30) for v in ("abc", "missing", "de")]
    assert [(o.value, o.error, o.nulled) for o in outs] == [
        (3, None, None), (None, None, "lookup"), (2, None, None)]
    assert outs[1].sizes == ()
    out = chain(False).submit("missing", name="row 4").result(30)
    assert out.value is None and out.nulled is None and out.error.stage == "lookup"
    assert str(out.error) == "lookup failed for 'row 4': FileNotFoundError: no such object: missing"
