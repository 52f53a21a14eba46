"""``Download``: URLs in, bytes out, with bounded concurrent requests per worker."""

from __future__ import annotations

from mmbeam.io.config import IOConfig
from mmbeam.ops.fetch import Fetcher
from mmbeam.transforms._base import ElementFn, ElementTransform, check_connections

__all__ = ["Download"]


class _DownloadFn(ElementFn):
    def __init__(self, fetcher: Fetcher, max_connections: int, **policy):
        super().__init__("Download", window=max_connections, **policy)
        self.fetcher = fetcher

    def submit(self, url, key):
        return self.fetcher.submit(url)


class Download(ElementTransform):
    """Read each URL (``http(s)://``, ``s3://``, ``gs://``, ``file://``, local path) as bytes.

    Up to ``max_connections`` requests are in flight per worker; results stream out as they
    complete. Transient failures (429, 5xx, reset, truncated body, timeout) are retried
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

    def make_fn(self):
        return _DownloadFn(
            self.fetcher,
            self.max_connections,
            on_error=self.on_error,
            keyed=self.keyed,
            failures=self._failures,
        )
