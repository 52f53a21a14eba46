"""``GCSServer``: the gcp-storage-emulator on loopback, for testing ``gs://`` pipelines via gcsfs.

Importing this module sets ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (unless already set):
gcsfs reads it when it is first imported, and with the experimental mode on it spends minutes
probing the emulator over gRPC. The helpers talk to the emulator's JSON API with urllib, a client
independent of the gcsfs code under test.

Checked with gcsfs 2026.10 and the emulator 2026.7: ``pipe_file``, ``cat_file`` (with ranges),
``cat_ranges``, ``ls``, ``find``, ``exists``, ``info``, ``rm``, ``open("wb")`` (also resumable,
above gcsfs's block size) and ``mkdir`` of a bucket all work. Quirks: ``ls("")`` lists buckets
with a trailing slash (``"bkt/"``); the emulator serves one request at a time (it is a
single-threaded ``http.server``), so it is correct under concurrency but not fast.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import warnings
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mmbeam.io.config import GCSConfig, IOConfig

if TYPE_CHECKING:
    from typing_extensions import Self

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

__all__ = ["GCSServer"]

PROJECT = "test"
_TIMEOUT_S = 30.0


class GCSServer:
    """A running in-memory GCS emulator on ``127.0.0.1`` and a free port.

    Use it as a context manager (``with GCSServer() as gcs:``) or call :meth:`start` and
    :meth:`close`. Unlike moto, each server has its own storage.
    """

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint_url: str = ""

    def start(self) -> Self:
        """Start the emulator in a daemon thread (idempotent)."""
        if self._server is None:
            _warn_if_gcsfs_experimental()
            from gcp_storage_emulator.server import create_server

            server = create_server("127.0.0.1", 0, in_memory=True)
            server._api.daemon = True  # its thread is not a daemon: never block interpreter exit
            server.start()
            try:
                httpd = server._api._httpd  # the emulator does not expose the bound port
            except AttributeError as err:  # pragma: no cover - emulator internals changed
                server.stop()
                raise RuntimeError("cannot find the GCS emulator's port (new version?)") from err
            httpd.socket.listen(128)  # its default backlog of 5 drops bursts of connections
            self._server = server
            self.endpoint_url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return self

    def close(self) -> None:
        """Stop the emulator (its in-memory data is dropped with it)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def io_config(self, endpoint_url: str | None = None) -> IOConfig:
        """An :class:`~mmbeam.io.config.IOConfig` pointing ``gs://`` at this emulator (at
        ``endpoint_url`` instead when given: a :class:`~mmbeam.testing.FaultProxy` before it)."""
        self._require()
        gcs = GCSConfig(endpoint_url=endpoint_url or self.endpoint_url, project_id=PROJECT,
                        anonymous=True)
        return IOConfig(gcs=gcs)

    def storage_options(self) -> dict[str, Any]:
        """fsspec/gcsfs keyword arguments for this emulator (includes the endpoint)."""
        return self.io_config().gcs.storage_options()

    def filesystem(self) -> Any:
        """A new ``gcsfs.GCSFileSystem`` for this emulator (not shared through fsspec's cache)."""
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(skip_instance_cache=True, **self.storage_options())

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (no error if it exists) and return ``"gs://<name>"``."""
        try:
            body = json.dumps({"name": name}).encode()
            self._call("POST", f"/storage/v1/b?project={PROJECT}", body, "application/json")
        except urllib.error.HTTPError as err:
            if err.code != 409:  # 409: it already exists
                raise
        return f"gs://{name}"

    def put(self, url: str, data: bytes) -> None:
        """Write ``data`` to ``gs://bucket/key`` (the bucket must exist)."""
        bucket, key = _split(url)
        query = f"uploadType=media&name={quote(key, safe='')}"
        self._call("POST", f"/upload/storage/v1/b/{quote(bucket)}/o?{query}", bytes(data),
                   "application/octet-stream")

    def get(self, url: str) -> bytes:
        """Read ``gs://bucket/key``; raises ``urllib.error.HTTPError`` (404) if it is missing."""
        bucket, key = _split(url)
        path = f"/download/storage/v1/b/{quote(bucket)}/o/{quote(key, safe='')}?alt=media"
        return self._call("GET", path)

    def ls(self, url: str) -> list[str]:
        """Every ``gs://bucket/key`` URL under a bucket or prefix URL, sorted."""
        bucket, prefix = _split(url, need_key=False)
        names: list[str] = []
        token = ""
        for _ in range(10_000):  # pages; bounded so a misbehaving server cannot loop us forever
            query = f"prefix={quote(prefix, safe='')}"
            if token:
                query += f"&pageToken={quote(token, safe='')}"
            page = json.loads(self._call("GET", f"/storage/v1/b/{quote(bucket)}/o?{query}"))
            names += [f"gs://{bucket}/{item['name']}" for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                break
        return sorted(names)

    def wipe(self) -> None:
        """Delete every bucket and object in this emulator."""
        self._require()
        self._server.wipe()

    def _call(
        self, method: str, path: str, body: bytes | None = None, ctype: str | None = None
    ) -> bytes:
        self._require()
        headers = {"Content-Type": ctype} if ctype else {}
        request = urllib.request.Request(
            self.endpoint_url + path, data=body, headers=headers, method=method
        )
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return response.read()

    def _require(self) -> None:
        if self._server is None:
            raise RuntimeError("GCSServer is not running; call start() or use it in a `with`")


def _split(url: str, need_key: bool = True) -> tuple[str, str]:
    rest = url.split("://", 1)[1] if url.startswith(("gs://", "gcs://")) else url
    bucket, _, key = rest.partition("/")
    if not bucket or (need_key and not key):
        raise ValueError(f"expected a gs://bucket/key URL, got {url!r}")
    return bucket, key


def _warn_if_gcsfs_experimental() -> None:
    gcsfs = sys.modules.get("gcsfs")
    if gcsfs is not None and gcsfs.GCSFileSystem.__name__ != "GCSFileSystem":
        warnings.warn(
            "gcsfs was imported with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT on, so fsspec's 'gs' "
            "filesystem probes the emulator over gRPC for minutes; set "
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false before gcsfs is imported",
            RuntimeWarning,
            stacklevel=3,
        )
