"""Run in a subprocess by test_hostile_web.py: each hostile URL through one surface, reporting
wall time, peak-RSS growth (VmHWM), the outcome and what the other origin received, as JSON.

``python hostile_child.py SURFACE`` with SURFACE one of ``transform`` (``Download`` on the local
Beam runner, with ``.with_exception_handling()`` and with ``on_error="null"``), ``frame``
(``url.download(on_error="null")``) or ``async`` (``fetch_all(on_error="null")`` on the event
loop). The servers run here too, so the child can see whether a request is still being served
after the client gave up.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

MIB = 2**20
RSS_KILL_MB = 1500  # a client that reads an endless body is stopped before it hurts the machine


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _rss_guard() -> None:
    while True:
        if _status("VmRSS") > RSS_KILL_MB * MIB:
            print(json.dumps({"killed": f"RSS over {RSS_KILL_MB} MB"}), flush=True)
            os._exit(3)
        time.sleep(0.05)


def _transform(url: str, opts: dict) -> dict:
    import apache_beam as beam

    from mmbeam import transforms as mt
    from mmbeam.testing.collect import run_collect

    good, failed = run_collect(lambda p: p | beam.Create([url])
                               | mt.Download(**opts).with_exception_handling()).outputs
    nulled = run_collect(lambda p: p | beam.Create([url])
                         | mt.Download(on_error="null", **opts)).outputs
    return {"values": [len(v) for v in good], "errors": [r.error for r in failed],
            "stages": [r.stage for r in failed], "nulled": [v is None for v in nulled]}


def _frame(url: str, opts: dict) -> dict:
    import mmbeam
    from mmbeam import col

    out = mmbeam.from_pydict({"url": [url]}).with_column(
        "data", col("url").url.download(on_error="null", **opts)).to_pydict()
    return {"values": [len(v) for v in out["data"] if v is not None],
            "nulled": [v is None for v in out["data"]]}


def _async(url: str, opts: dict) -> dict:
    from mmbeam.ops.fetch import fetch_all

    out = fetch_all([url], on_error="null", **opts)
    return {"values": [len(v) for v in out if v is not None], "nulled": [v is None for v in out]}


def main(surface: str) -> None:
    threading.Thread(target=_rss_guard, daemon=True).start()
    from mmbeam.io.config import HTTPConfig, IOConfig
    from mmbeam.testing.http_server import FaultServer

    run = {"transform": _transform, "frame": _frame, "async": _async}[surface]
    creds = IOConfig(http=HTTPConfig(headers=(("X-Api-Key", "key-123"), ("Cookie", "sid=c00k")),
                                     bearer_token="tok-456"))
    with FaultServer() as srv, FaultServer() as other:
        srv.add("drip.bin", bytes(1000))
        srv.add("ok.bin", b"fine")
        other.add("x.bin", b"other origin")
        cases = {
            "drip": (srv.url("drip/0.5/drip.bin"), {"timeout_s": 2, "retries": 0}),
            "endless": (srv.url("endless"), {"max_bytes": 8 * MIB, "retries": 0}),
            "huge": (srv.url("huge/2000000000"), {"max_bytes": 8 * MIB, "timeout_s": 60}),
            "ftp": (srv.goto("ftp://127.0.0.1/x.bin"), {"io_config": creds}),
            "file": (srv.goto("file:///etc/hostname"), {"io_config": creds}),
            "cross": (srv.goto(other.url("files/x.bin")), {"io_config": creds}),
            "local": ("/etc/hostname", {"allowed_schemes": ("http", "https")}),
        }
        run(srv.url("files/ok.bin"), {})  # warm up: imports, pools, the runner
        results = {}
        for name, (url, opts) in cases.items():
            srv.reset_stats()
            other.reset_stats()
            before, start = _status("VmHWM"), time.monotonic()
            out = run(url, opts)
            elapsed = time.monotonic() - start
            for _ in range(100):  # the server sees the client leave within a few seconds
                if srv.active_requests == 0:
                    break
                time.sleep(0.05)
            results[name] = {**out, "seconds": elapsed, "url": url,
                             "hwm_growth_mb": (_status("VmHWM") - before) / MIB,
                             "still_served": srv.active_requests,
                             "first_hop": srv.received(), "other_origin": other.received()}
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
