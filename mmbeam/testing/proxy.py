"""``FaultProxy``: a loopback HTTP proxy in front of a real server that fails chosen requests.

Object-store clients (s3fs, gcsfs) talk to their emulator through it; :meth:`FaultProxy.fail`
makes the next ``times`` requests whose path contains a string answer with an error status (503
``SlowDown`` by default, in S3's XML error shape) before the request reaches the server, so
tests see how transient store errors are retried; :meth:`FaultProxy.before` runs a test's
callback before chosen requests are forwarded, so a test can look at the server between a
client's requests (what a reader sees while an upload is under way). Everything else is forwarded
unchanged.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["FaultProxy"]

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "host",
                         "proxy-connection", "te", "trailer", "upgrade"})


class FaultProxy:
    """Forwards to ``target`` (``http://host:port``); ``url`` is the proxy's own address.

    ``requests`` counts what arrived, by ``(method, path)`` (path without the query).
    """

    def __init__(self, target: str):
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.requests: Counter = Counter()
        self._faults: list[list] = []  # [method or None, path substring, times, status, code]
        self._hooks: list[tuple] = []  # (method or None, path substring, callback)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def fail(self, path_contains: str, times: int, status: int = 503,
             code: str = "SlowDown", method: str | None = None) -> None:
        """Answer the next ``times`` requests (of ``method``, None: any) whose path contains
        ``path_contains`` with ``status`` (and an S3-style error ``code``), not forwarding them."""
        with self._lock:
            self._faults.append([method, path_contains, times, status, code])

    def before(self, path_contains: str, callback: Callable[[str, str], None],
               method: str | None = None) -> None:
        """Call ``callback(method, path)`` before each request (of ``method``, None: any) whose
        path, query included, contains ``path_contains`` is forwarded; the client waits for it."""
        with self._lock:
            self._hooks.append((method, path_contains, callback))

    def count(self, method: str, path_contains: str) -> int:
        """How many ``method`` requests with ``path_contains`` in their path arrived."""
        with self._lock:
            return sum(n for (m, p), n in self.requests.items()
                       if m == method and path_contains in p)

    def close(self) -> None:
        """Stop the proxy."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _fault_for(self, method: str, path: str) -> tuple[int, str] | None:
        with self._lock:
            self.requests[(method, path.split("?", 1)[0])] += 1
            for fault in self._faults:
                if fault[0] in (None, method) and fault[1] in path and fault[2] > 0:
                    fault[2] -= 1
                    return fault[3], fault[4]
        return None

    def _run_hooks(self, method: str, path: str) -> None:
        with self._lock:
            hooks = [h for h in self._hooks if h[0] in (None, method) and h[1] in path]
        for _, _, callback in hooks:
            callback(method, path)


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = proxy._fault_for(self.command, self.path)
            if fault is not None:
                status, code = fault
                payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                           f"<Message>injected by FaultProxy</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(b"" if self.command == "HEAD" else payload)
                return
            proxy._run_hooks(self.command, self.path)
            upstream = http.client.HTTPConnection(*proxy.target, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP}
                headers["Host"] = f"{proxy.target[0]}:{proxy.target[1]}"
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            self.send_response(response.status, response.reason)
            head = self.command == "HEAD"  # keeps the object's Content-Length, sends no body
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP and (head or key.lower() != "content-length"):
                    self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any  # noqa: N815 - http.server names

    return Handler
