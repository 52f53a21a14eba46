"""Read URLs concurrently on fsspec's I/O loop, with timeouts and retries.

One :class:`Fetcher` serves a whole worker: its coroutines run on fsspec's shared event loop (the
same loop the async filesystems' sessions live on), so callers on any thread get a
``concurrent.futures.Future`` back from :meth:`Fetcher.submit` and bound their own window of
in-flight requests. Transient failures (408, 425, 429, 5xx, reset, truncated body, timeout) are
retried with exponential backoff; permanent ones (other 4xx, an invalid URL, a bad scheme or
redirect, a body over ``max_bytes``) fail at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import random
import sys
import time
from collections.abc import Callable, Sequence

from fsspec.asyn import get_loop

from mmbeam.errors import ConfigError, DownloadError, MmbeamError, UnsupportedSchemeError
from mmbeam.io.config import IOConfig
from mmbeam.io.filesystems import (
    SCHEME_ALIASES,
    SUPPORTED_PROTOCOLS,
    filesystem_for,
    is_async,
    split_protocol,
)
from mmbeam.ops.http import Guard, HTTPStatusError, http_get, io_pool

__all__ = ["DEFAULT_MAX_BYTES", "Fetcher", "fetch_all", "ON_ERROR_CHOICES", "check_on_error",
           "check_schemes"]

ON_ERROR_CHOICES = ("raise", "null")
DEFAULT_MAX_BYTES = 256 * 2**20
_WEB = ("http", "https")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def check_on_error(on_error: str) -> str:
    """Validate an ``on_error`` argument when the pipeline is built."""
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error


class Fetcher:
    """Downloads URLs (http, https, s3, gs, file, local paths) as bytes.

    ``timeout_s`` bounds each attempt as a whole (connect, headers, body); ``retries`` is the
    number of extra attempts after a transient failure, ``backoff_s`` the first wait (doubled
    each time, with jitter, at most ``max_backoff_s``; a ``Retry-After`` is honoured, and one
    longer than ``max_backoff_s`` ends the retries). ``max_bytes`` caps a body (default 256
    MiB); ``allowed_schemes`` (None: all) limits the schemes a URL may use, ``"file"``
    standing for local paths too. ``sleep`` (default ``time.sleep``; tests inject a recorder)
    waits between attempts.
    """

    def __init__(
        self,
        io_config: IOConfig | None = None,
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allowed_schemes: Sequence[str] | None = None,
        sleep: Callable[[float], None] | None = None,
    ):
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ConfigError(
                f"timeout_s must be > 0 and retries, backoff_s, max_backoff_s >= 0; "
                f"got timeout_s={timeout_s}, retries={retries}, backoff_s={backoff_s}, "
                f"max_backoff_s={max_backoff_s}"
            )
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.io_config = io_config or IOConfig()
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_bytes = max_bytes
        self.allowed_schemes = check_schemes(allowed_schemes)
        self.sleep = sleep

    def submit(self, url: str) -> concurrent.futures.Future:
        """Start reading ``url``; the future's result is its bytes or a DownloadError."""
        return asyncio.run_coroutine_threadsafe(self.fetch(url), get_loop())

    async def fetch(self, url: str) -> bytes:
        """Read one URL, retrying transient failures; raises DownloadError with the cause."""
        protocol, path = self._split(url)
        attempt = 0
        while True:
            try:
                if protocol in _WEB:  # blocking pooled connections on I/O threads: ops/http.py
                    return await self._http_async(path)
                return await asyncio.wait_for(self._read_object(protocol, path), self.timeout_s)
            except MmbeamError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                delay = self._backoff(exc, attempt)
                attempt += 1
                if self.sleep is not None:
                    self.sleep(delay)
                    delay = 0
                await asyncio.sleep(delay)

    def fetch_blocking(self, url: str) -> bytes:
        """:meth:`fetch` on the calling thread: ``http(s)://`` directly on a pooled
        connection (the attempt's guard bounds it), other schemes through the I/O loop."""
        protocol, path = self._split(url)
        if protocol not in _WEB:
            return asyncio.run_coroutine_threadsafe(self.fetch(url), get_loop()).result()
        attempt = 0
        while True:
            try:
                return self._http(path, Guard(self.timeout_s))
            except MmbeamError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                delay = self._backoff(exc, attempt)
                attempt += 1
                (self.sleep or time.sleep)(delay)

    def _split(self, url: str) -> tuple[str, str]:
        protocol, path = split_protocol(url)
        if self.allowed_schemes is not None and protocol not in self.allowed_schemes:
            what = "a local path" if "://" not in url else f"scheme {protocol!r}"
            raise UnsupportedSchemeError(
                f"{url!r} is {what}, which is not allowed here "
                f"(allowed_schemes={self.allowed_schemes})")
        return protocol, path

    def _http(self, url: str, guard: Guard) -> bytes:
        allowed = self.allowed_schemes or _WEB
        return http_get(url, self.io_config.storage_options("http")["headers"], guard,
                        self.max_bytes, frozenset(_WEB).intersection(allowed))

    async def _http_async(self, url: str) -> bytes:
        guard = Guard(self.timeout_s)
        future = asyncio.get_running_loop().run_in_executor(io_pool(), self._http, url, guard)
        try:
            return await future
        except asyncio.CancelledError:  # stop the I/O thread's read now and free its buffer
            guard.cancel()
            raise

    async def _read_object(self, protocol: str, path: str) -> bytes:
        """An object or file, refused before it is read when its size is over the cap."""
        fs = filesystem_for(protocol, self.io_config)
        if is_async(fs):
            self._check_size(protocol, path, (await fs._info(path)).get("size"))
            data = await fs._cat_file(path)
        else:
            self._check_size(protocol, path, (await asyncio.to_thread(fs.info, path)).get("size"))
            data = await asyncio.to_thread(fs.cat_file, path)
        self._check_size(protocol, path, len(data))
        return data

    def _check_size(self, protocol: str, path: str, size: int | None) -> None:
        if size is not None and size > self.max_bytes:
            raise DownloadError(f"{protocol}://{path} is too large: {size} bytes is over "
                                f"max_bytes={self.max_bytes}; raise max_bytes to read it")

    def _backoff(self, exc: Exception, attempt: int) -> float:
        """Seconds to wait before retrying after ``exc``, or DownloadError when it is permanent,
        the retries are used up, or the server asks for a wait over ``max_backoff_s``."""
        retry_after = _retry_delay(exc)
        if retry_after is None or attempt >= self.retries:
            raise _attempted(DownloadError(_describe(exc, attempt + 1, self.timeout_s)),
                             attempt + 1) from exc
        if retry_after > self.max_backoff_s:
            raise _attempted(DownloadError(
                f"{_describe(exc, attempt + 1, self.timeout_s)}; the server asked to retry "
                f"after {retry_after:g} s, more than max_backoff_s={self.max_backoff_s:g}"),
                attempt + 1) from exc
        backoff = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return max(retry_after, backoff * (0.5 + random.random() / 2))


def _attempted(error: DownloadError, attempts: int) -> DownloadError:
    """``error`` with the number of requests made (the failures table's ``attempts``)."""
    error.attempts = attempts
    return error


def check_schemes(schemes: Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate an ``allowed_schemes`` argument: None (all) or names of supported schemes
    (``"file"`` also allows local paths); returns the canonical names, sorted."""
    if schemes is None:
        return None
    if isinstance(schemes, str) or not all(isinstance(s, str) for s in schemes) or not schemes:
        raise ConfigError(f"allowed_schemes must be a non-empty sequence of scheme names such as "
                          f"('http', 'https'), or None; got {schemes!r}")
    names = set()
    for scheme in schemes:
        name = SCHEME_ALIASES.get(scheme.lower(), scheme.lower())
        if name not in SUPPORTED_PROTOCOLS:
            raise ConfigError(f"allowed_schemes: unknown scheme {scheme!r}; "
                              f"supported: {', '.join(SUPPORTED_PROTOCOLS)}")
        names.add(name)
    return tuple(sorted(names))


class _NoAiohttp(Exception):  # noqa: N818 - stands in for aiohttp classes
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
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        return _retry_after(headers.get("retry-after"))
    status = _store_status(exc)
    if status is not None:
        return 0.0 if status in _RETRY_STATUS else None
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return None
    if isinstance(exc, (TimeoutError, _aiohttp("ClientError"), ConnectionError)):
        return 0.0
    return None


def _store_status(exc: BaseException) -> int | None:
    """The HTTP status behind an object store's error: gcsfs's ``HttpError.code``, or the
    botocore ``ClientError`` that s3fs turned into an ``OSError`` (503 SlowDown becomes
    ``OSError(EBUSY)``, kept as its ``__cause__``)."""
    for err in (exc, exc.__cause__):
        status = getattr(err, "code", None) or getattr(err, "status", None)
        if isinstance(status, int):
            return status
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
    return None


def _retry_after(value: str | None) -> float:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date; 0 if absent)."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 0.0


def _describe(exc: BaseException, attempts: int, timeout_s: float) -> str:
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    if isinstance(exc, _aiohttp("ClientResponseError")):
        return f"HTTP {exc.status} {exc.message}{tries}"
    if isinstance(exc, HTTPStatusError):
        return f"{exc}{tries}"
    if isinstance(exc, FileNotFoundError):
        return "not found (HTTP 404 or no such object/file)"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc}"
    if isinstance(exc, TimeoutError):
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
    max_bytes: int = DEFAULT_MAX_BYTES,
    allowed_schemes: Sequence[str] | None = None,
) -> list[bytes | None]:
    """Download every URL with at most ``max_connections`` in flight; None in gives None out.

    ``on_error="raise"`` raises the first DownloadError (naming its URL); ``"null"`` gives None for
    each URL that failed. The other options are :class:`Fetcher`'s.
    """
    check_on_error(on_error)
    fetcher = Fetcher(io_config, timeout_s=timeout_s, retries=retries, max_bytes=max_bytes,
                      allowed_schemes=allowed_schemes)

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
                    raise err.located("Download", url) from err.__cause__

        return list(await asyncio.gather(*(one(u) for u in urls)))

    return asyncio.run_coroutine_threadsafe(run(), get_loop()).result()
