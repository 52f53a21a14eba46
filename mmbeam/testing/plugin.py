"""pytest plugin (registered as ``mmbeam`` under the ``pytest11`` entry point): real local servers.

Fixtures::

    mmbeam_http            a FaultServer for the whole session (404/500/slow/truncated/reset/...)
    mmbeam_s3              an S3Server (moto) for the whole session
    mmbeam_gcs             a GCSServer (gcp-storage-emulator) for the whole session
    mmbeam_sample_images   a fresh dict of eight small JPEGs by name, per test
    mmbeam_bucket_name     a new bucket name per test, valid for S3 and GCS
    mmbeam_namespaced_dask a Dask scheduler + 2 workers, each worker "on another machine"
    mmbeam_namespaced_ray  a Ray head (no CPUs) + a 2-CPU node "on another machine"
    mmbeam_namespaced_beam_pool  Beam's worker pool "on another machine" (PortableRunner EXTERNAL)

The namespaced clusters (:mod:`mmbeam.testing.namespaced`) last the session; they skip, with the
reason, where ``unshare --mount`` is refused.

pytest imports this module in every run of a project where mmbeam is installed, so it imports
nothing heavy: the servers (and moto, boto3, gcsfs) load only when a fixture is used.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mmbeam.testing.gcs import GCSServer
    from mmbeam.testing.http_server import FaultServer
    from mmbeam.testing.namespaced import NamespacedBeamPool, NamespacedDask, NamespacedRay
    from mmbeam.testing.s3 import S3Server

__all__ = [
    "mmbeam_bucket_name",
    "mmbeam_gcs",
    "mmbeam_http",
    "mmbeam_namespaced_beam_pool",
    "mmbeam_namespaced_dask",
    "mmbeam_namespaced_ray",
    "mmbeam_s3",
    "mmbeam_sample_images",
]

# gcsfs reads this once, on import; a test module that imports gcsfs at its top runs after this.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@pytest.fixture(scope="session")
def mmbeam_http() -> Iterator[FaultServer]:
    """A FaultServer shared by the session; add files under names unique to your test."""
    from mmbeam.testing.http_server import FaultServer

    with FaultServer() as server:
        yield server


@pytest.fixture(scope="session")
def mmbeam_s3() -> Iterator[S3Server]:
    """A moto S3 server shared by the session; make a bucket with ``mmbeam_bucket_name``."""
    from mmbeam.testing.s3 import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def mmbeam_gcs() -> Iterator[GCSServer]:
    """An in-memory GCS emulator shared by the session."""
    from mmbeam.testing.gcs import GCSServer

    with GCSServer() as server:
        yield server


@pytest.fixture(scope="session")
def _mmbeam_sample_images_cached() -> dict[str, bytes]:
    from mmbeam.testing.images import sample_images

    return sample_images(8, min_size=32, max_size=128, seed=1234)


@pytest.fixture
def mmbeam_sample_images(_mmbeam_sample_images_cached: dict[str, bytes]) -> dict[str, bytes]:
    """Eight small JPEGs (32..128 px a side) by name (``img_0000.jpg``...), a copy per test."""
    return dict(_mmbeam_sample_images_cached)


@pytest.fixture
def mmbeam_bucket_name() -> str:
    """A bucket name no other test uses (lowercase, 3..63 characters, S3 and GCS rules)."""
    return f"mmbeam-test-{uuid.uuid4().hex[:16]}"


def _namespaced(cluster_class: str) -> Iterator:
    from mmbeam.testing import namespaced

    reason = namespaced.namespace_refusal()
    if reason:
        pytest.skip(f"cannot run workers in their own mount namespace: {reason}")
    with getattr(namespaced, cluster_class)() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def mmbeam_namespaced_dask() -> Iterator[NamespacedDask]:
    """``dask scheduler`` here plus two ``dask worker --nthreads 1``, each with a private /tmp;
    ``.address`` for ``DaskRunner`` / ``set_runner_dask``."""
    yield from _namespaced("NamespacedDask")


@pytest.fixture(scope="session")
def mmbeam_namespaced_ray() -> Iterator[NamespacedRay]:
    """A Ray head with no CPUs here plus a 2-CPU node with a private /tmp; ``.address`` for
    ``ray.init`` / ``RayRunner`` / ``set_runner_ray``."""
    yield from _namespaced("NamespacedRay")


@pytest.fixture(scope="session")
def mmbeam_namespaced_beam_pool() -> Iterator[NamespacedBeamPool]:
    """Beam's worker pool with a private /tmp; ``.options(temp_location)`` for the
    ``PortableRunner``."""
    yield from _namespaced("NamespacedBeamPool")
