"""``FaultServer``: a real HTTP/1.1 server on loopback that serves files and misbehaves on request.

Routes (``<name>`` is a file added with :meth:`FaultServer.add`)::

    /files/<name>            200 with the bytes (Range supported), 404 if unknown
    /status/<code>           that status with a short body
    /flaky/<n>/<name>        the first n requests of this exact path answer 500, then the file
    /throttle/<n>/<name>     the same with 429 and ``Retry-After: 0``
    /slow/<seconds>/<name>   sleeps (at most 30 s), then serves the file
    /truncated/<name>        full Content-Length, half the body, then the connection closes
    /reset/<name>            the connection is reset (TCP RST) before any response
    /redirect/<name>         302 to /files/<name>; /redirect/<k>/<name> chains k redirects
    /drip/<seconds>/<name>   full Content-Length, then one byte of the file every <seconds>
    /endless                 a chunked body of zeros that never ends (until the client leaves)
    /huge/<bytes>            declares Content-Length <bytes>, then sends zeros slowly (64 KiB
                             every 50 ms) until the client leaves
    /goto?to=<url>           302 (or ``&status=301|303|307|308``) to any URL: another server's,
                             ``ftp://...``, ``file:///...``

``/status/<code>`` and ``/throttle/...`` take ``?retry_after=N`` (default 0) for their
``Retry-After`` header. Every request's headers are recorded: :meth:`FaultServer.received`.

Connections are kept alive, so pooled clients (aiohttp, fsspec) reuse them; ``latency_s`` and
``max_connections`` make it behave like a remote server with limited capacity in benchmarks.
``ssl_context`` (a server context, e.g. from :func:`mmbeam.testing.tls.loopback_tls`) serves
``https://`` instead.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import socket
import ssl
import struct
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote, urlsplit

from mmbeam.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FaultServer"]

log = logging.getLogger(__name__)

_MAX_SLEEP_S = 30.0
_MAX_QUEUE_WAIT_S = 60.0  # a request waiting for a max_connections slot gives up with 503
_IDLE_TIMEOUT_S = 30.0  # a kept-alive connection with no new request is closed after this
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_KEEP_REQUESTS = 10_000  # request headers remembered (the oldest are forgotten)
_STREAM_CHUNK = 64 * 1024


class FaultServer:
    """A threaded HTTP server on ``127.0.0.1`` with a free port; see the module doc for routes.

    Use it as a context manager (``with FaultServer() as srv:``) or call :meth:`start` and
    :meth:`close`. ``latency_s`` is slept before every response; ``max_connections`` caps the
    requests served at once (the others wait for a slot).
    """

    def __init__(self, latency_s: float = 0.0, max_connections: int | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if latency_s < 0 or (max_connections is not None and max_connections < 1):
            raise ConfigError(f"FaultServer: need latency_s >= 0 and max_connections None or >= 1, "
                             f"got {latency_s!r} and {max_connections!r}")
        self.latency_s = float(latency_s)
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self._files: dict[str, tuple[bytes, str]] = {}
        self._hits: Counter[str] = Counter()
        self._received: deque[tuple[str, dict[str, str]]] = deque(maxlen=_KEEP_REQUESTS)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections) if max_connections else None
        self._closing = threading.Event()
        self._active = 0
        self._peak = 0
        self._connections = 0
        self._open: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread (idempotent)."""
        if self._httpd is None:
            self._closing.clear()
            self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"FaultServer:{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, cut open connections and wake sleeping handlers; returns promptly."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._closing.set()
        httpd.shutdown()
        self._drop_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._httpd is None:
            raise RuntimeError("FaultServer is not running; call start() or use it in a `with`")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/`` (``https://`` with an ``ssl_context``)"""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` (for example ``"files/cat.jpg"``) on this server."""
        return self.base_url + path.lstrip("/")

    def add(self, name: str, data: bytes, content_type: str | None = None) -> str:
        """Serve ``data`` as ``name`` on every file route; returns its ``/files/<name>`` URL
        (just ``"files/<name>"`` while the server is not started)."""
        if content_type is None:
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        with self._lock:
            self._files[name] = (bytes(data), content_type)
        return self.url("files/" + name) if self._httpd is not None else "files/" + name

    def goto(self, target: str, status: int = 302) -> str:
        """The URL of a redirect (``status``) from this server to ``target`` (any URL)."""
        return self.url(f"goto?to={quote(target, safe='')}&status={status}")

    def received(self, path: str | None = None) -> list[dict[str, str]]:
        """The headers of each request for ``path`` (a path or URL; None: every request),
        oldest first, names as the client sent them."""
        with self._lock:
            got = list(self._received)
        key = None if path is None else _key(path)
        return [headers for p, headers in got if key is None or p == key]

    def hits(self, path: str) -> int:
        """How many requests were made for ``path`` (a path like ``"flaky/2/a.jpg"`` or a URL)."""
        return self._hits[_key(path)]

    @property
    def peak_concurrency(self) -> int:
        """The largest number of requests that were being served at the same time."""
        return self._peak

    @property
    def active_requests(self) -> int:
        """How many requests are being served right now (sleeping ones included)."""
        return self._active

    @property
    def connections_opened(self) -> int:
        """How many TCP connections were accepted (lower than requests when kept alive)."""
        return self._connections

    def reset_stats(self) -> None:
        """Forget hit counts (so flaky routes fail again), the peak and the connection count."""
        with self._lock:
            self._hits.clear()
            self._received.clear()
            self._peak = self._connections = 0

    def _record(self, path: str, headers: dict[str, str]) -> int:
        key = _key(path)
        with self._lock:
            self._received.append((key, headers))
            self._hits[key] += 1
            return self._hits[key]

    def _file(self, name: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._files.get(name)

    def _sleep(self, seconds: float) -> bool:
        """Sleep (woken early by close()); True if the server is still open afterwards."""
        if seconds > 0:
            self._closing.wait(min(seconds, _MAX_SLEEP_S))
        return not self._closing.is_set()

    def _enter_slot(self) -> bool:
        if self._slots is not None:
            deadline = time.monotonic() + _MAX_QUEUE_WAIT_S
            while not self._slots.acquire(timeout=0.05):
                if self._closing.is_set() or time.monotonic() > deadline:
                    return False
        with self._lock:
            self._active += 1
            self._peak = max(self._peak, self._active)
        return True

    def _leave_slot(self) -> None:
        with self._lock:
            self._active -= 1
        if self._slots is not None:
            self._slots.release()

    def _drop_connections(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:  # wakes handler threads waiting for a kept-alive request
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _key(path: str) -> str:
    return unquote(urlsplit(path).path).lstrip("/")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, owner: FaultServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def get_request(self):  # type: ignore[override]
        sock, address = super().get_request()
        if self.owner.ssl_context is not None:  # the handshake runs on the request's thread
            sock = self.owner.ssl_context.wrap_socket(sock, server_side=True,
                                                      do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request, client_address) -> None:  # type: ignore[override]
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(_IDLE_TIMEOUT_S)
            request.do_handshake()
        super().finish_request(request, client_address)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        with self.owner._lock:
            self.owner._open.add(request)
            self.owner._connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[override]
        with self.owner._lock:
            self.owner._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        # socketserver calls this inside its ``except``, so exc_info is the live exception
        log.debug("FaultServer: error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stall
    server_version = "mmbeam-FaultServer"
    timeout = _IDLE_TIMEOUT_S
    server: _Server
    _head = False

    def log_message(self, format: str, *args: object) -> None:
        log.debug("FaultServer: " + format, *args)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:  # count, wait for a slot and the latency, route
        self._head, owner = head, self.server.owner
        count = owner._record(self.path, dict(self.headers.items()))
        if not owner._enter_slot():
            self._send(503, b"busy\n", extra={"Retry-After": "0"})
            return
        try:
            if owner._sleep(owner.latency_s):
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                self._route(unquote(parts.path), count, query)
            else:
                self.close_connection = True
        finally:
            owner._leave_slot()

    def _route(self, path: str, count: int, query: dict[str, str]) -> None:
        owner = self.server.owner
        kind, _, rest = path.lstrip("/").partition("/")
        number, _, name = rest.partition("/") if _has_number(rest) else ("", "", rest)
        retry_after = query.get("retry_after", "0")
        if kind == "files":
            self._send_file(rest)
        elif kind == "status" and rest.isdigit() and 200 <= int(rest) <= 599:
            retry = {"Retry-After": retry_after} if rest in ("429", "503") else {}
            self._send(int(rest), f"status {rest}\n".encode(), extra=retry)
        elif kind == "redirect" and name:
            k = int(float(number or 1))
            target = f"redirect/{k - 1}/{name}" if k > 1 else f"files/{name}"
            self._send(302, b"", extra={"Location": owner.url(target)})
        elif kind == "slow" and number:
            if owner._sleep(float(number)):
                self._send_file(name)
            else:  # closed while sleeping: drop the connection without an answer
                self.close_connection = True
        elif kind in ("flaky", "throttle") and number:
            if count > int(float(number)):
                self._send_file(name)
            elif kind == "flaky":
                self._send(500, f"flaky {count}/{number}\n".encode())
            else:
                self._send(429, f"throttle {count}/{number}\n".encode(),
                           extra={"Retry-After": retry_after})
        elif kind == "truncated" and (found := owner._file(rest)) is not None:
            data, ctype = found
            self._send(200, data[: len(data) // 2], ctype=ctype, length=len(data))
            self.close_connection = True
        elif kind == "reset":  # close now with SO_LINGER 0: an RST, and no FIN before it
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
            self.close_connection = True
        elif kind == "goto" and query.get("to"):
            status = int(query.get("status", "302"))
            self._send(status if status in (301, 302, 303, 307, 308) else 302, b"",
                       extra={"Location": query["to"]})
        elif kind == "drip" and (found := owner._file(name)) is not None and number:
            self._drip(found[0], float(number))
        elif kind == "endless":
            self._endless()
        elif kind == "huge" and rest.isdigit():
            self._huge(int(rest))
        else:
            self._send(404, f"no route for {path!r}\n".encode())

    def _drip(self, data: bytes, interval: float) -> None:
        """The whole Content-Length, then one byte every ``interval`` seconds."""
        self._head_only(200, {"Content-Length": str(len(data))})
        for i in range(len(data)):
            if not self.server.owner._sleep(interval):
                break
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
        self.close_connection = True

    def _endless(self) -> None:
        """Chunks of zeros until the client goes away (the write fails) or the server closes."""
        self._head_only(200, {"Transfer-Encoding": "chunked"})
        chunk = b"%x\r\n" % _STREAM_CHUNK + bytes(_STREAM_CHUNK) + b"\r\n"
        while not self.server.owner._closing.is_set():
            self.wfile.write(chunk)
        self.close_connection = True

    def _huge(self, declared: int) -> None:
        """Declares ``declared`` bytes, then trickles zeros (64 KiB per 50 ms) until the client
        goes away, the server closes or the declared size is sent."""
        self._head_only(200, {"Content-Length": str(declared)})
        sent = 0
        while sent < declared and self.server.owner._sleep(0.05):
            part = min(_STREAM_CHUNK, declared - sent)
            self.wfile.write(bytes(part))
            sent += part
        self.close_connection = True

    def _head_only(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.flush()

    def _send_file(self, name: str) -> None:
        found = self.server.owner._file(name)
        if found is None:
            self._send(404, f"no file {name!r}\n".encode())
            return
        data, ctype = found
        size, match = len(data), _RANGE.match(self.headers.get("Range", "").strip())
        if not (match and (match[1] or match[2]) and data):
            self._send(200, data, ctype=ctype, extra={"Accept-Ranges": "bytes"})
        elif not match[1]:  # "bytes=-N": the last N bytes
            self._send_range(data, ctype, max(size - int(match[2]), 0), size - 1)
        else:
            self._send_range(data, ctype, int(match[1]), min(int(match[2] or size - 1), size - 1))

    def _send_range(self, data: bytes, ctype: str, start: int, end: int) -> None:
        if start > end:
            self._send(416, b"", extra={"Content-Range": f"bytes */{len(data)}"})
        else:
            extra = {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"}
            self._send(206, data[start : end + 1], ctype=ctype, extra=extra)

    def _send(
        self, code: int, body: bytes, *, ctype: str = "text/plain",
        extra: dict[str, str] | None = None, length: int | None = None,
    ) -> None:
        self.send_response(code)
        if code in (204, 304):  # never a body; the keep-alive stream would be corrupted
            body, length = b"", None
        if code != 204:  # the one status that must not send a Content-Length
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not self._head and body:
            self.wfile.write(body)


def _has_number(rest: str) -> bool:
    number, sep, name = rest.partition("/")
    return bool(sep and name) and re.fullmatch(r"\d+(\.\d+)?", number) is not None
