"""``S3Server``: moto's S3 server on loopback, for testing ``s3://`` pipelines through s3fs.

moto, boto3 and s3fs are imported only when a server starts, so importing this module is cheap.
No AWS environment variable is set: the keys travel in :meth:`S3Server.io_config` and in the
clients this module creates. moto keeps its state per process, so two ``S3Server`` objects in
one process see the same buckets; use a fresh bucket name per test or call :meth:`reset`.
"""

from __future__ import annotations

import logging
import urllib.request
from typing import TYPE_CHECKING, Any

from mmbeam.io.config import IOConfig, S3Config

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["S3Server"]

KEY_ID = "testing"
ACCESS_KEY = "testing"
REGION = "us-east-1"


class S3Server:
    """A running moto S3 server on ``127.0.0.1`` and a free port.

    Use it as a context manager (``with S3Server() as s3:``) or call :meth:`start` and
    :meth:`close`. :meth:`put`, :meth:`get` and :meth:`ls` use boto3, a client independent of the
    s3fs code under test, so a test can write with one and check with the other.
    """

    def __init__(self) -> None:
        self._server: Any = None
        self._client: Any = None
        self.endpoint_url: str = ""

    def start(self) -> Self:
        """Start the server (idempotent); the first start imports moto (about 0.5 s)."""
        if self._server is None:
            from moto.server import ThreadedMotoServer

            logger = logging.getLogger("werkzeug")  # one INFO line per request otherwise
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            self._server, self.endpoint_url = server, f"http://{host}:{port}"
        return self

    def close(self) -> None:
        """Stop the server (it answers no more requests; moto's in-process state stays)."""
        server, self._server, self._client = self._server, None, None
        if server is not None:
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def io_config(self, endpoint_url: str | None = None) -> IOConfig:
        """An :class:`~mmbeam.io.config.IOConfig` pointing ``s3://`` at this server (at
        ``endpoint_url`` instead when given: a :class:`~mmbeam.testing.FaultProxy` before it)."""
        self._require()
        return IOConfig(
            s3=S3Config(
                endpoint_url=endpoint_url or self.endpoint_url, key_id=KEY_ID,
                access_key=ACCESS_KEY, region_name=REGION,
            )
        )

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs keyword arguments for this server (the endpoint is part of them, so
        s3fs's instance cache never hands out a filesystem for another server)."""
        return self.io_config().s3.storage_options()

    def filesystem(self) -> Any:
        """A new ``s3fs.S3FileSystem`` for this server (not shared through fsspec's cache)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (no error if it exists) and return ``"s3://<name>"``."""
        client = self._boto()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"

    def put(self, url: str, data: bytes) -> None:
        """Write ``data`` to ``s3://bucket/key`` (the bucket must exist)."""
        bucket, key = _split(url)
        self._boto().put_object(Bucket=bucket, Key=key, Body=bytes(data))

    def get(self, url: str) -> bytes:
        """Read ``s3://bucket/key``; raises boto's ``NoSuchKey`` if it is missing."""
        bucket, key = _split(url)
        return self._boto().get_object(Bucket=bucket, Key=key)["Body"].read()

    def ls(self, url: str) -> list[str]:
        """Every ``s3://bucket/key`` URL under a bucket or prefix URL, sorted."""
        bucket, prefix = _split(url, need_key=False)
        paginator = self._boto().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
        return sorted(f"s3://{bucket}/{o['Key']}" for p in pages for o in p.get("Contents", []))

    def reset(self) -> None:
        """Delete every bucket and object in moto (all moto state of this process)."""
        self._require()
        request = urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def _boto(self) -> Any:
        self._require()
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, aws_access_key_id=KEY_ID,
                aws_secret_access_key=ACCESS_KEY, region_name=REGION,
            )
        return self._client

    def _require(self) -> None:
        if self._server is None:
            raise RuntimeError("S3Server is not running; call start() or use it in a `with`")


def _split(url: str, need_key: bool = True) -> tuple[str, str]:
    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket or (need_key and not key):
        raise ValueError(f"expected an s3://bucket/key URL, got {url!r}")
    return bucket, key
