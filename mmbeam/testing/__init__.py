"""Test support for mmbeam pipelines: sample images and real servers on loopback, no mocks.

``FaultServer`` (HTTP with faults), ``S3Server`` (moto), ``GCSServer`` (gcp-storage-emulator),
``RayHead`` and ``init_local_ray`` (a real local Ray), Dask/Ray/Beam-pool clusters whose workers
run as on another machine (``NamespacedDask``, ``NamespacedRay``, ``NamespacedBeamPool``), sample
and broken images, and pytest fixtures in :mod:`mmbeam.testing.plugin`. Names load on first
use, so ``import mmbeam.testing`` (done by the pytest plugin in every run) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmbeam.testing.collect import Collected, run_collect
    from mmbeam.testing.gcs import GCSServer
    from mmbeam.testing.http_server import FaultServer
    from mmbeam.testing.images import (
        decompression_bomb,
        encode_sample,
        make_image,
        sample_images,
        truncated,
    )
    from mmbeam.testing.namespaced import NamespacedBeamPool, NamespacedDask, NamespacedRay
    from mmbeam.testing.proxy import FaultProxy
    from mmbeam.testing.ray_cluster import RayHead, init_local_ray
    from mmbeam.testing.s3 import S3Server
    from mmbeam.testing.tls import loopback_tls

__all__ = [
    "Collected",
    "FaultProxy",
    "FaultServer",
    "GCSServer",
    "NamespacedBeamPool",
    "NamespacedDask",
    "NamespacedRay",
    "RayHead",
    "S3Server",
    "decompression_bomb",
    "encode_sample",
    "init_local_ray",
    "loopback_tls",
    "make_image",
    "run_collect",
    "sample_images",
    "truncated",
]

_HOME = {
    "FaultServer": "http_server",
    "FaultProxy": "proxy",
    "GCSServer": "gcs",
    "S3Server": "s3",
    "NamespacedBeamPool": "namespaced",
    "NamespacedDask": "namespaced",
    "NamespacedRay": "namespaced",
    "RayHead": "ray_cluster",
    "init_local_ray": "ray_cluster",
    "loopback_tls": "tls",
    "Collected": "collect",
    "run_collect": "collect",
    "decompression_bomb": "images",
    "encode_sample": "images",
    "make_image": "images",
    "sample_images": "images",
    "truncated": "images",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'mmbeam.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mmbeam.testing.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
