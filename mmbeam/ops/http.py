"""Plain HTTP(S) GETs on a pool of kept-alive connections, run on I/O threads.

Measured on this 2-core machine (256 camera JPEGs of ~1.8 MB, 50 ms latency), aiohttp on one
event-loop thread took 10-17 s and 2.8-5.4 CPU-s where kept-alive ``http.client`` connections on
32 threads took 3.6-4.7 s and 1.6 CPU-s: the single loop thread copies every body in Python and
becomes the bottleneck. So :class:`~mmbeam.ops.fetch.Fetcher` sends ``http(s)://`` reads here,
through :func:`io_pool`, while the row coroutines still run on fsspec's loop; ``s3://`` and
``gs://`` keep their async clients. Redirects are followed; statuses come back as
:class:`HTTPStatusError` (404 as FileNotFoundError, 401/403 as PermissionError) so the Fetcher's
retry rules apply unchanged.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import threading
from urllib.parse import urljoin, urlsplit

__all__ = ["HTTPStatusError", "http_get", "io_pool"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_idle: dict[tuple, list[http.client.HTTPConnection]] = {}
_idle_lock = threading.Lock()
_idle_pid = [os.getpid()]
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


class HTTPStatusError(Exception):
    """A response other than 200 (and not a redirect): ``status``, ``reason``, ``headers``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str]):
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason, self.headers = status, reason, headers


def io_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide pool of blocking I/O threads (each keeps its own connections)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="mmbeam-io")
            _pool_pid = os.getpid()
        return _pool


def http_get(url: str, headers: dict[str, str], timeout_s: float) -> bytes:
    """The body of ``url`` after redirects; raises HTTPStatusError, FileNotFoundError,
    PermissionError, ConnectionError, TimeoutError or http.client errors (truncated body)."""
    for _ in range(_MAX_REDIRECTS + 1):
        status, reason, got, body = _request(url, headers, timeout_s)
        if status == 200:
            return body
        if status in _REDIRECTS and got.get("location"):
            url = urljoin(url, got["location"])
            continue
        if status in (404, 410):
            raise FileNotFoundError(f"HTTP {status} {reason}: {url}")
        if status in (401, 403):
            raise PermissionError(f"HTTP {status} {reason}: {url}")
        raise HTTPStatusError(status, reason, got)
    raise HTTPStatusError(310, f"more than {_MAX_REDIRECTS} redirects", {})


def _request(url: str, headers: dict[str, str], timeout_s: float):
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = (parts.scheme, parts.hostname, parts.port)
    while True:  # ends: each stale kept-alive connection is dropped, then a fresh one is made
        conn, reused = _checkout(key, timeout_s)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if reused:
                continue  # the server closed this kept-alive connection: try the next one
            raise
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            _checkin(key, conn)
        return response.status, response.reason, {k.lower(): v for k, v in
                                                   response.getheaders()}, body


def _checkout(key, timeout_s: float):
    """An idle kept-alive connection to ``key`` (scheme, host, port), the most recently used
    first (so a server sees one connection finish before it is reused), or a new one."""
    with _idle_lock:
        if _idle_pid[0] != os.getpid():
            _idle.clear()
            _idle_pid[0] = os.getpid()
        stack = _idle.get(key)
        conn = stack.pop() if stack else None
    if conn is not None and conn.sock is not None:
        conn.sock.settimeout(timeout_s)
        return conn, True
    scheme, host, port = key
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout_s)
    try:
        conn.connect()
    except TimeoutError:
        conn.close()
        raise
    except OSError as exc:
        conn.close()
        raise ConnectionError(f"Cannot connect to host {host}:{port} ({exc})") from exc
    return conn, False


def _checkin(key, conn) -> None:
    with _idle_lock:
        _idle.setdefault(key, []).append(conn)
