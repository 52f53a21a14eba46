"""Read URLs concurrently on fsspec's I/O loop, with timeouts and retries.

One :class:`Fetcher` serves a whole worker: its coroutines run on fsspec's shared event loop (the
same loop the async filesystems' sessions live on), so callers on any thread get a
``concurrent.futures.Future`` back from :meth:`Fetcher.submit` and bound their own window of
in-flight requests. Transient failures (429, 5xx, reset, truncated body, timeout) are retried with
exponential backoff; permanent ones (404, 403, bad scheme) fail at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import random
import sys
import time
from collections.abc import Sequence

from fsspec.asyn import get_loop

from mmbeam.errors import ConfigError, DownloadError, MmbeamError
from mmbeam.io.config import IOConfig
from mmbeam.io.filesystems import filesystem_for, is_async, split_protocol
from mmbeam.ops.http import HTTPStatusError, http_get, io_pool

__all__ = ["Fetcher", "fetch_all", "ON_ERROR_CHOICES", "check_on_error"]

ON_ERROR_CHOICES = ("raise", "null")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def check_on_error(on_error: str) -> str:
    """Validate an ``on_error`` argument when the pipeline is built."""
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error


class Fetcher:
    """Downloads URLs (http, https, s3, gs, file, local paths) as bytes.

    ``timeout_s`` bounds each attempt; ``retries`` is the number of extra attempts after a
    transient failure, ``backoff_s`` the first wait (doubled each time, with jitter).
    """

    def __init__(
        self,
        io_config: IOConfig | None = None,
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ):
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ConfigError(
                f"timeout_s must be > 0 and retries, backoff_s >= 0; "
                f"got timeout_s={timeout_s}, retries={retries}, backoff_s={backoff_s}"
            )
        self.io_config = io_config or IOConfig()
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def submit(self, url: str) -> concurrent.futures.Future:
        """Start reading ``url``; the future's result is its bytes or a DownloadError."""
        return asyncio.run_coroutine_threadsafe(self.fetch(url), get_loop())

    async def fetch(self, url: str) -> bytes:
        """Read one URL, retrying transient failures; raises DownloadError with the cause."""
        protocol, path = split_protocol(url)
        web = protocol in ("http", "https")
        fs = None if web else filesystem_for(protocol, self.io_config)
        headers = self.io_config.storage_options("http")["headers"] if web else None
        attempt = 0
        while True:
            try:
                if web:  # blocking kept-alive connections on I/O threads: see ops/http.py
                    coro = asyncio.get_running_loop().run_in_executor(
                        io_pool(), http_get, path, headers, self.timeout_s)
                elif is_async(fs):
                    coro = fs._cat_file(path)
                else:
                    coro = asyncio.to_thread(fs.cat_file, path)
                return await asyncio.wait_for(coro, self.timeout_s)
            except MmbeamError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                delay = self._backoff(exc, attempt)
                attempt += 1
                await asyncio.sleep(delay)

    def fetch_blocking(self, url: str) -> bytes:
        """:meth:`fetch` on the calling thread: ``http(s)://`` directly on a kept-alive
        connection (the socket timeout bounds each wait), other schemes through the I/O loop."""
        protocol, path = split_protocol(url)
        if protocol not in ("http", "https"):
            return asyncio.run_coroutine_threadsafe(self.fetch(url), get_loop()).result()
        headers = self.io_config.storage_options("http")["headers"]
        attempt = 0
        while True:
            try:
                return http_get(path, headers, self.timeout_s)
            except MmbeamError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                delay = self._backoff(exc, attempt)
                attempt += 1
                time.sleep(delay)

    def _backoff(self, exc: Exception, attempt: int) -> float:
        """Seconds to wait before retrying after ``exc``, or DownloadError when it is permanent
        or the retries are used up."""
        retry_after = _retry_delay(exc)
        if retry_after is None or attempt >= self.retries:
            error = DownloadError(_describe(exc, attempt + 1, self.timeout_s))
            error.attempts = attempt + 1  # the failures table's attempts column
            raise error from exc
        delay = min(self.max_backoff_s, max(retry_after, self.backoff_s * 2**attempt))
        return delay * (0.5 + random.random() / 2)


class _NoAiohttp(Exception):
    """Stands in for aiohttp's exception classes while aiohttp is not imported (it is only
    imported by the s3/gs/fsspec-http clients, so no exception can come from it before)."""


def _aiohttp(name: str) -> type[BaseException]:
    module = sys.modules.get("aiohttp")
    return getattr(module, name) if module is not None else _NoAiohttp


def _retry_delay(exc: BaseException) -> float | None:
    """Seconds to wait before retrying ``exc`` (0 = backoff only), or None if it is permanent."""
    if isinstance(exc, (_aiohttp("ClientResponseError"), HTTPStatusError)):
        if exc.status not in _RETRY_STATUS:
            return None
        headers = exc.headers or {}
        try:
            return float(headers.get("Retry-After", headers.get("retry-after", 0)))
        except ValueError:
            return 0.0
    status = getattr(exc, "code", None) or getattr(exc, "status", None)  # gcsfs HttpError
    if isinstance(status, int):
        return 0.0 if status in _RETRY_STATUS else None
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return None
    if isinstance(exc, (asyncio.TimeoutError, _aiohttp("ClientError"), ConnectionError,
                        http.client.HTTPException)):
        return 0.0
    return None


def _describe(exc: BaseException, attempts: int, timeout_s: float) -> str:
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    if isinstance(exc, _aiohttp("ClientResponseError")):
        return f"HTTP {exc.status} {exc.message}{tries}"
    if isinstance(exc, HTTPStatusError):
        return f"{exc}{tries}"
    if isinstance(exc, http.client.IncompleteRead):
        got = len(exc.partial)
        return (f"payload truncated: got {got} of {got + (exc.expected or 0)} bytes "
                f"(Content-Length){tries}")
    if isinstance(exc, FileNotFoundError):
        return "not found (HTTP 404 or no such object/file)"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"timed out after {timeout_s:g} s{tries}; raise timeout_s if the source is slow"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}{tries}"


def fetch_all(
    urls: Sequence[str | None],
    *,
    io_config: IOConfig | None = None,
    max_connections: int = 32,
    timeout_s: float = 60.0,
    retries: int = 3,
    on_error: str = "raise",
) -> list[bytes | None]:
    """Download every URL with at most ``max_connections`` in flight; None in gives None out.

    ``on_error="raise"`` raises the first DownloadError (naming its URL); ``"null"`` gives None for
    each URL that failed.
    """
    check_on_error(on_error)
    fetcher = Fetcher(io_config, timeout_s=timeout_s, retries=retries)

    async def run() -> list[bytes | None]:
        gate = asyncio.Semaphore(max(1, max_connections))

        async def one(url: str | None) -> bytes | None:
            if url is None:
                return None
            async with gate:
                try:
                    return await fetcher.fetch(url)
                except DownloadError as err:
                    if on_error == "null":
                        return None
                    raise err.located("url.download", url) from err.__cause__

        return list(await asyncio.gather(*(one(u) for u in urls)))

    return asyncio.run_coroutine_threadsafe(run(), get_loop()).result()
