"""``Download``: URLs in, bytes out, with bounded concurrent requests per worker."""

from __future__ import annotations

import functools

from mmbeam.io.config import IOConfig
from mmbeam.ops.fetch import Fetcher
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
    busy. Transient failures (429, 5xx, reset, truncated body, timeout) are retried
    ``retries`` times with exponential backoff; redirects are followed.
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
        keyed: bool = False,
        label: str | None = None,
    ):
        super().__init__(on_error=on_error, keyed=keyed, label=label)
        self.max_connections = check_connections(max_connections)
        self.fetcher = Fetcher(io_config, timeout_s=timeout_s, retries=retries)

    def step(self, nullable):
        return Step(self.stage, "io", functools.partial(_fetch, self.fetcher), nullable,
                    self.max_connections, functools.partial(_fetch_blocking, self.fetcher))
