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
def _local_ray():
    """The session's local 2-CPU Ray (its GCS address once started), shut down at the end."""
    import ray

    local: dict[str, str] = {}
    yield local
    if local and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_session(_local_ray):
    """This process connected to the session's local 2-CPU Ray. Started on first use, and again
    only when a test before left the process on another cluster (a Ray Client connection to a
    namespaced one): tests on clusters do not restore it each, the next test that needs it
    does."""
    import ray
    import ray.util.client

    from mmbeam.testing import init_local_ray

    on_local = (ray.is_initialized() and not ray.util.client.ray.is_connected()
                and ray.get_runtime_context().gcs_address == _local_ray.get("address"))
    if not on_local:
        if ray.is_initialized():
            ray.shutdown()
        init_local_ray(num_cpus=2)  # retried: a loaded host can miss Ray's agent deadline
        _local_ray["address"] = ray.get_runtime_context().gcs_address
    return ray


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
