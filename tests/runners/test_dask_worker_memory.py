"""The DaskRunner's worker plugin: Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``, which makes
every image-sized buffer a fresh mapping; after the runner connects, the workers reuse them."""

from __future__ import annotations

import logging
import resource

import pytest

from mmbeam.runners.dask_runner import DaskBackend

pytestmark = pytest.mark.distributed

CYCLES = 20
BUFFER = 8 << 20  # a decoded 1.6-megapixel RGB image, about


def _page_faults_of_reused_buffers() -> int:
    """Minor page faults of this thread while it makes and frees a zeroed 8 MiB buffer CYCLES
    times (a fresh mapping each time faults in ~2,000 pages; a reused heap buffer, none).
    ``bytearray``: plain malloc, where numpy would ask for transparent huge pages."""
    bytearray(BUFFER)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(CYCLES):
        bytearray(BUFFER)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


def test_workers_reuse_image_sized_buffers_once_the_runner_connected():
    from distributed import Client, LocalCluster

    pages = BUFFER // resource.getpagesize()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.WARNING) as cluster, \
            Client(cluster, set_as_default=False) as client:
        environ = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(environ.values()) == {"65536"}  # what Dask's nanny gives its workers
        (before,) = client.run(_page_faults_of_reused_buffers).values()
        assert before >= CYCLES * pages // 2, before
        DaskBackend(cluster.scheduler_address).close()
        (after,) = client.run(_page_faults_of_reused_buffers).values()
        assert after < pages, (before, after)
        cluster.scale(2)  # a worker that joins later gets the plugin too
        client.wait_for_workers(2)
        late = client.run(_page_faults_of_reused_buffers)
        assert all(n < pages for n in late.values()), late
