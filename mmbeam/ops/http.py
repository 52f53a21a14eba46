"""HTTP(S) GETs through urllib3's connection pools, run on I/O threads, with mmbeam's policy for
untrusted URLs: a deadline per attempt, a size cap, credentials for their own origin only and
redirects only to http(s).

urllib3 does the protocol (pooled kept-alive connections, chunked bodies, URL parsing and
percent-encoding of non-ASCII paths and spaces). Measured on this 2-core machine (256 camera
JPEGs of ~1.8 MB, 50 ms latency), aiohttp on one event-loop thread took 10-17 s and 2.8-5.4 CPU-s
where kept-alive connections on 32 threads took 3.6-4.7 s and 1.6 CPU-s: the single loop thread
copies every body in Python and becomes the bottleneck. So :class:`~mmbeam.ops.fetch.Fetcher`
sends ``http(s)://`` reads here, through :func:`io_pool`, while the row coroutines still run on
fsspec's loop; ``s3://`` and ``gs://`` keep their async clients.

What is mmbeam's own (and so written here): redirects are followed by :func:`http_get` itself
(urllib3's are off) so that each hop's scheme is checked and configured headers are dropped once
a hop leaves the URL's origin; and a :class:`Guard` per attempt, expired by one watchdog thread
at the deadline or cancelled by the caller, shuts the attempt's socket down, so a blocked
connect, header or body read returns at once (socket timeouts bound each wait, not the attempt).
Statuses come back as :class:`HTTPStatusError` (404/410 as FileNotFoundError, 401/403 as
PermissionError) so the Fetcher's retry rules apply.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import http.client
import itertools
import os
import socket
import threading
import time
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from mmbeam.errors import DownloadError, UnsupportedSchemeError

__all__ = ["Guard", "HTTPStatusError", "MAX_REDIRECTS", "http_get", "io_pool", "origin"]

MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 256 * 1024
_DRAIN_LIMIT = 64 * 1024  # a redirect's body up to this is read so the connection is reused
_PUBLIC_HEADERS = frozenset({"user-agent"})  # the only configured header sent to other origins
_state: dict[str, object] = {}
_state_lock = threading.Lock()
_current = threading.local()


class HTTPStatusError(Exception):
    """A response other than 200 (and not a redirect): ``status``, ``reason``, ``headers``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str]):
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason, self.headers = status, reason, headers


class Guard:
    """One attempt's deadline and cancel switch: :meth:`cancel` (or the watchdog, at the
    deadline) shuts the attempt's socket down, so the thread reading it stops at once and the
    connection is dropped, never returned to the pool."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.reason: str | None = None  # "timeout" or "cancelled" once stopped
        self._sock: socket.socket | None = None
        self._done = False
        self._lock = threading.Lock()
        _watchdog().watch(self)

    def remaining(self) -> float:
        return max(0.001, self.deadline - time.monotonic())

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._done or self.reason is not None:
                return
            self.reason = reason
            if self._sock is not None:  # under the lock: never a socket already given back
                _shutdown(self._sock)

    def attach(self, sock: socket.socket | None) -> None:
        """The socket the attempt now uses (shut down at once if already stopped)."""
        with self._lock:
            self._sock = sock
            if self.reason is not None and sock is not None:
                _shutdown(sock)

    def finish(self) -> None:
        """The attempt is over: later cancels leave the (pooled) socket alone."""
        with self._lock:
            self._done, self._sock = True, None

    def check(self) -> None:
        if self.reason == "timeout":
            raise TimeoutError(f"timed out after {self.timeout_s:g} s")
        if self.reason is not None:
            raise ConnectionAbortedError("download cancelled")


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """One daemon thread that expires guards at their deadlines (a heap, earliest first)."""

    def __init__(self):
        self._heap: list[tuple[float, int, Guard]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        threading.Thread(target=self._run, name="mmbeam-http-watchdog", daemon=True).start()

    def watch(self, guard: Guard) -> None:
        with self._wake:
            heapq.heappush(self._heap, (guard.deadline, next(self._seq), guard))
            if self._heap[0][2] is guard:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(wait)
                _, _, guard = heapq.heappop(self._heap)
            guard.cancel("timeout")


def _attach(sock) -> None:
    guard = getattr(_current, "guard", None)
    if guard is not None:
        guard.attach(sock)


class _Guarded:
    """Hands each connection's socket to the calling thread's guard (a mixin for urllib3's
    connection classes)."""

    def connect(self):
        super().connect()
        _attach(self.sock)

    def request(self, *args, **kwargs):
        if self.sock is not None:  # a kept-alive connection: its socket is this attempt's now
            _attach(self.sock)
        return super().request(*args, **kwargs)


class _GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


def _process_state(key: str, make):
    with _state_lock:
        if _state.get("pid") != os.getpid():  # forked: the parent's threads and sockets are gone
            _state.clear()
            _state["pid"] = os.getpid()
        if key not in _state:
            _state[key] = make()
        return _state[key]


def _watchdog() -> _Watchdog:
    return _process_state("watchdog", _Watchdog)


def _pools() -> urllib3.PoolManager:
    def make():
        manager = urllib3.PoolManager(num_pools=256, maxsize=128, block=False, retries=False)
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager

    return _process_state("pools", make)


def io_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide pool of blocking I/O threads (the connections are shared, per host)."""
    return _process_state("io", lambda: concurrent.futures.ThreadPoolExecutor(
        64, thread_name_prefix="mmbeam-io"))


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of a URL, the port filled in for http and https."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def http_get(url: str, headers: dict[str, str], guard: Guard, max_bytes: int,
             schemes: frozenset[str] = frozenset({"http", "https"})) -> bytes:
    """The body of ``url`` after redirects (only to a scheme in ``schemes``, at most
    MAX_REDIRECTS); headers other than User-Agent go only to the URL's own origin, never over
    http after an https hop. A body over ``max_bytes`` is refused (by its Content-Length before
    it is read, else when the cap is reached). Raises DownloadError (permanent), HTTPStatusError,
    FileNotFoundError, PermissionError, TimeoutError (the guard's deadline) or ConnectionError."""
    home, seen_https = origin(url), False
    _current.guard = guard
    try:
        for _ in range(MAX_REDIRECTS + 1):
            seen_https = seen_https or url.lower().startswith("https:")
            trusted = origin(url) == home and not (seen_https and url.lower().startswith("http:"))
            sent = headers if trusted else {k: v for k, v in headers.items()
                                            if k.lower() in _PUBLIC_HEADERS}
            response = _open(url, sent, guard)
            if response.status in _REDIRECTS and response.headers.get("location"):
                _discard(response, guard)
                url = _redirect_target(url, response.headers["location"], schemes)
                continue
            try:
                return _body(url, response, guard, max_bytes)
            finally:
                _discard(response, guard)
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects, the last to {url}")
    finally:
        _current.guard = None
        guard.finish()


def _open(url: str, headers: dict[str, str], guard: Guard):
    remaining = guard.remaining()
    try:
        return _pools().urlopen(
            "GET", url, headers=headers, redirect=False, retries=False, preload_content=False,
            decode_content=False, timeout=urllib3.Timeout(connect=remaining, read=remaining))
    except urllib3.exceptions.LocationParseError as exc:
        raise DownloadError(f"invalid URL {url!r}: {exc}") from None
    except urllib3.exceptions.SSLError as exc:
        raise DownloadError(f"TLS error for {url}: {exc}") from exc
    except urllib3.exceptions.NewConnectionError as exc:
        guard.check()
        _, host, port = origin(url)
        raise ConnectionError(f"Cannot connect to host {host}:{port} "
                              f"({str(exc).split(': ', 1)[-1]})") from exc
    except urllib3.exceptions.TimeoutError as exc:  # a socket wait ran to the deadline
        raise TimeoutError(f"timed out after {guard.timeout_s:g} s") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        guard.check()
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc


def _redirect_target(url: str, location: str, schemes: frozenset[str]) -> str:
    target = urljoin(url, location.strip())
    scheme = urlsplit(target).scheme.lower()
    if scheme not in schemes:
        raise UnsupportedSchemeError(
            f"{url} redirects to {target!r}: scheme {scheme!r} is not followed "
            f"(redirects may go to {', '.join(sorted(schemes))} only)")
    return target


def _body(url: str, response, guard: Guard, max_bytes: int) -> bytes:
    status = response.status
    if status != 200:
        reason = response.reason or ""
        if status in (404, 410):
            raise FileNotFoundError(f"HTTP {status} {reason}: {url}")
        if status in (401, 403):
            raise PermissionError(f"HTTP {status} {reason}: {url}")
        raise HTTPStatusError(status, reason, dict(response.headers))
    declared = response.length_remaining
    if declared is not None and declared > max_bytes:
        raise DownloadError(f"{url} is too large: Content-Length {declared} bytes is over "
                            f"max_bytes={max_bytes}; raise max_bytes to read it")
    try:
        if declared is not None:  # a known length within the cap: one read of exactly that
            return response.read(decode_content=False)
        chunks, total = [], 0
        while chunk := response.read1(_CHUNK, decode_content=False):
            total += len(chunk)
            if total > max_bytes:
                raise DownloadError(f"{url} is too large: the body passed max_bytes={max_bytes} "
                                    f"bytes and was cut there; raise max_bytes to read it")
            chunks.append(chunk)
        return b"".join(chunks)
    except urllib3.exceptions.TimeoutError as exc:
        raise TimeoutError(f"timed out after {guard.timeout_s:g} s") from exc
    except urllib3.exceptions.HTTPError as exc:
        guard.check()
        short = [e for e in (exc, *exc.args) if isinstance(e, http.client.IncompleteRead)]
        if short:
            got, more = short[0].partial, short[0].expected
            got = got if isinstance(got, int) else len(got)
            raise ConnectionError(f"payload truncated: got {got} of {got + more} bytes "
                                  f"(Content-Length)") from exc
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
    except OSError:
        guard.check()
        raise


def _discard(response, guard: Guard) -> None:
    """Give the connection back when the response was read in full (or its rest is short),
    otherwise close it: nothing more is read from a body nobody wants. The guard lets go of
    the socket first, so it can never shut down a connection another request is using."""
    left = response.length_remaining
    complete = response.isclosed() or (
        left is not None and left <= _DRAIN_LIMIT and _drained(response))
    guard.attach(None)
    if not (complete and guard.reason is None):
        response.close()
    response.release_conn()


def _drained(response) -> bool:
    try:
        response.drain_conn()
        return True
    except (urllib3.exceptions.HTTPError, OSError):
        return False
