"""Credentials and endpoints for the storage backends, in the shape Daft users know.

``IOConfig(s3=S3Config(endpoint_url=...), gcs=GCSConfig(...), http=HTTPConfig(...))`` is a plain,
picklable value: it travels with the pipeline to the workers, where
:func:`mmbeam.io.filesystems.filesystem_for` turns it into fsspec ``storage_options``.

Secrets (S3 secret key and session token, GCS token, the HTTP bearer token and every configured
header value) print as ``'***'`` in ``repr``/``str``, so a config in a plan, a log line or an
error message never shows them; equality, hashing and pickling use the real values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["GCSConfig", "HTTPConfig", "IOConfig", "S3Config"]

MASK = "***"
#: GCS ``token`` values that name an authentication method rather than hold a credential
_GCS_METHODS = ("anon", "browser", "cache", "cloud", "google_default")


def _masked_repr(config: Any, masked: dict[str, Any]) -> str:
    """``Name(field=value, ...)`` like a dataclass repr, with ``masked`` values shown instead."""
    parts = []
    for f in fields(config):
        if f.repr:
            value = getattr(config, f.name)
            parts.append(f"{f.name}={masked.get(f.name, value)!r}")
    return f"{type(config).__name__}({', '.join(parts)})"


def _mask(value: Any) -> Any:
    return None if value is None else MASK


@dataclass(frozen=True)
class S3Config:
    """S3 (or any S3-compatible store such as MinIO or moto): endpoint, region and keys."""

    endpoint_url: str | None = None
    region_name: str | None = None
    key_id: str | None = None
    access_key: str | None = None
    session_token: str | None = None
    anonymous: bool = False
    #: attempts botocore makes per request (None: botocore's default); mmbeam's own retries
    #: (``Download(retries=...)``) come on top of these
    num_tries: int | None = None

    def storage_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"anon": self.anonymous}
        if self.num_tries is not None:
            opts["config_kwargs"] = {"retries": {"total_max_attempts": self.num_tries,
                                                 "mode": "standard"}}
        if self.key_id is not None:
            opts["key"] = self.key_id
        if self.access_key is not None:
            opts["secret"] = self.access_key
        if self.session_token is not None:
            opts["token"] = self.session_token
        client: dict[str, Any] = {}
        if self.endpoint_url is not None:
            client["endpoint_url"] = self.endpoint_url
        if self.region_name is not None:
            client["region_name"] = self.region_name
        if client:
            opts["client_kwargs"] = client
        return opts

    def __repr__(self) -> str:  # the key id names the key (not secret, as in AWS's own tools)
        return _masked_repr(self, {"access_key": _mask(self.access_key),
                                   "session_token": _mask(self.session_token)})


@dataclass(frozen=True)
class GCSConfig:
    """Google Cloud Storage (or the GCS emulator): endpoint, project and token."""

    endpoint_url: str | None = None
    project_id: str | None = None
    token: Any = None
    anonymous: bool = False

    def storage_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.endpoint_url is not None:
            opts["endpoint_url"] = self.endpoint_url
        if self.project_id is not None:
            opts["project"] = self.project_id
        if self.anonymous:
            opts["token"] = "anon"
        elif self.token is not None:
            opts["token"] = self.token
        return opts

    def __repr__(self) -> str:
        method = isinstance(self.token, str) and self.token in _GCS_METHODS
        return _masked_repr(self, {} if method else {"token": _mask(self.token)})


@dataclass(frozen=True)
class HTTPConfig:
    """HTTP(S): extra request headers and an optional bearer token."""

    headers: tuple[tuple[str, str], ...] = ()
    bearer_token: str | None = None
    user_agent: str = "mmbeam"

    def storage_options(self) -> dict[str, Any]:
        headers = {"User-Agent": self.user_agent, **dict(self.headers)}
        if self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        return {"headers": headers}

    def __repr__(self) -> str:  # header names stay readable; any value may be a credential
        return _masked_repr(self, {"headers": tuple((k, MASK) for k, _ in self.headers),
                                   "bearer_token": _mask(self.bearer_token)})


@dataclass(frozen=True)
class IOConfig:
    """Per-backend settings; a missing part means that backend's defaults."""

    s3: S3Config = field(default_factory=S3Config)
    gcs: GCSConfig = field(default_factory=GCSConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)

    def storage_options(self, protocol: str) -> dict[str, Any]:
        """fsspec keyword arguments for one protocol (``s3``, ``gs``, ``http``, ``file``)."""
        if protocol in ("s3", "s3a"):
            return self.s3.storage_options()
        if protocol in ("gs", "gcs"):
            return self.gcs.storage_options()
        if protocol in ("http", "https"):
            return self.http.storage_options()
        return {}
