"""``Download``: URLs in, bytes out, with bounded concurrent requests per worker."""

from __future__ import annotations

import functools

from mmbeam.io.config import IOConfig
from mmbeam.ops.fetch import DEFAULT_MAX_BYTES, Fetcher
from mmbeam.ops.rowchain import Step
from mmbeam.transforms._base import ElementTransform, check_connections

__all__ = ["Download"]


async def _fetch(fetcher: Fetcher, url, key) -> bytes:
    return await fetcher.fetch(url)


def _fetch_blocking(fetcher: Fetcher, url, key) -> bytes:
    return fetcher.fetch_blocking(url)


class Download(ElementTransform):
    """Read each URL (``http(s)://``, ``s3://``, ``gs://``, ``file://``, local path) as bytes.

    Up to ``max_connections`` requests are in flight per worker; results stream out as they
    complete, and finished downloads wait (up to the autotuned window) while later stages are
    busy. ``timeout_s`` bounds each attempt as a whole; transient failures (408, 425, 429, 5xx,
    reset, truncated body, timeout) are retried ``retries`` times with exponential backoff.
    A body over ``max_bytes`` (default 256 MiB) fails without being read further. Redirects
    are followed to http(s) only, and configured headers go to the URL's own origin only.
    ``allowed_schemes`` (e.g. ``("http", "https")``) refuses other URLs, local paths
    included: see the README's "Untrusted URLs".
    """

    stage = "Download"
    value_type = bytes

    def __init__(
        self,
        max_connections: int = 32,
        on_error: str = "raise",
        io_config: IOConfig | None = None,
        timeout_s: float = 60.0,
        retries: int = 3,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allowed_schemes: tuple[str, ...] | None = None,
        keyed: bool = False,
        label: str | None = None,
    ):
        super().__init__(on_error=on_error, keyed=keyed, label=label)
        self.max_connections = check_connections(max_connections)
        self.fetcher = Fetcher(io_config, timeout_s=timeout_s, retries=retries,
                               max_bytes=max_bytes, allowed_schemes=allowed_schemes)

    def step(self, nullable):
        return Step(self.stage, "io", functools.partial(_fetch, self.fetcher), nullable,
                    self.max_connections, functools.partial(_fetch_blocking, self.fetcher))
