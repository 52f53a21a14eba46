"""Session-wide engines for the runner tests: a 2-worker LocalCluster and a 2-CPU local Ray."""

from __future__ import annotations

import importlib
import logging

import pytest

from mmbeam.runners import DaskRunner, RayRunner, local_runner


@pytest.fixture(scope="session")
def dask_cluster():
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.WARNING)
    from distributed import Client

    with Client(cluster, set_as_default=False) as client:  # import Beam in the workers once
        client.run(importlib.import_module, "mmbeam.runners.worker")
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from mmbeam.testing import init_local_ray

    started = not ray.is_initialized()
    if started:
        init_local_ray(num_cpus=2)  # retried: a loaded host can miss Ray's agent deadline
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(params=["local", pytest.param("dask", marks=pytest.mark.slow),
                        pytest.param("ray", marks=pytest.mark.slow)])
def runner_name(request) -> str:
    """The runner kind; dask and ray are also marked ``distributed`` (tests/conftest.py)."""
    return request.param


@pytest.fixture
def make_runner(runner_name, request):
    """A factory of fresh runners of the parametrised kind (engines started once a session)."""
    if runner_name == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        return lambda: DaskRunner(cluster.scheduler_address)
    if runner_name == "ray":
        request.getfixturevalue("ray_session")
        return lambda: RayRunner()
    return local_runner
