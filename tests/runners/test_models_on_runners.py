"""Models on the cluster runners: one load per worker process (grouped by PID) on Dask and Ray,
and on Ray a step's ``concurrency``/``num_cpus``/``num_gpus`` as its own actor pool."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import mmbeam
from mmbeam import DataType, col
from mmbeam.errors import ResourceUnavailableError
from mmbeam.runners import DaskRunner, RayRunner
from mmbeam.testing import run_collect
from mmbeam.transforms import RunModel

pytestmark = pytest.mark.slow  # a model per worker process, on Dask and Ray (~1 min in all)

N = 48
#: instances built in this process, by model name (a module global: one per worker process)
_LOADS: collections.Counter = collections.Counter()


def _assigned() -> str:
    try:
        import ray

        if ray.is_initialized():
            got = ray.get_runtime_context().get_assigned_resources()
            return ",".join(f"{k}={v:g}" for k, v in sorted(got.items()))
    except ImportError:  # pragma: no cover - ray is an extra
        pass
    return ""


class Tagger:
    """Tags each value with (pid, instance, load number in this process, assigned resources)."""

    def __init__(self):
        _LOADS["Tagger"] += 1
        self.load = _LOADS["Tagger"]
        self.resources = _assigned()

    def __call__(self, batch):
        tag = (os.getpid(), id(self), self.load, self.resources)
        return [(v, *tag) for v in batch]


def _tagged(runner, model: RunModel, options=None) -> list[tuple]:
    out = run_collect(lambda p: {"out": p | beam.Create(list(range(N))) | beam.Reshuffle()
                                 | model}, runner=runner, options=options).outputs["out"]
    assert sorted(r[0] for r in out) == list(range(N))  # every element once
    return out


def _one_instance_per_pid(rows) -> dict[int, set]:
    by_pid: dict[int, set] = collections.defaultdict(set)
    for row in rows:
        by_pid[row[1]].add(row[2:])  # (instance, load number, assigned resources)
    for pid, instances in by_pid.items():
        assert instances == {next(iter(instances))} and next(iter(instances))[1] == 1, (
            f"process {pid} built {len(instances)} instances: {instances}")
    return by_pid


@pytest.fixture(params=["dask", "ray"])
def cluster_runner(request):
    if request.param == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        return lambda: DaskRunner(cluster.scheduler_address)
    request.getfixturevalue("ray_session")
    return RayRunner


def test_run_model_loads_once_per_worker_process(cluster_runner):
    rows = _tagged(cluster_runner(), RunModel(Tagger, batch_size=4))
    by_pid = _one_instance_per_pid(rows)
    assert os.getpid() not in by_pid  # ran on the workers, not in the driver
    assert 1 <= len(by_pid) <= 2  # the two worker processes of the session's engine


@pytest.mark.parametrize("concurrency, num_cpus", [(2, 1), (3, None)])
def test_run_model_on_ray_gets_an_actor_pool_of_concurrency(ray_session, concurrency, num_cpus):
    model = RunModel(Tagger, batch_size=2, concurrency=concurrency, num_cpus=num_cpus)
    by_pid = _one_instance_per_pid(_tagged(RayRunner(), model,
                                           PipelineOptions(["--ray_keep_pool_seconds=0"])))
    assert len(by_pid) == concurrency  # one actor per unit of concurrency, each loads once
    resources = {r for instances in by_pid.values() for _, _, r in instances}
    assert resources == {f"CPU={num_cpus:g}" if num_cpus else ""}
    # not kept for a next run: its actors are gone (their CPUs free) once the run ends
    assert _cpus_free_within(ray_session, 10) < 10


def _cpus_free_within(ray, seconds: float) -> float:
    """Seconds until the session's two CPUs are free again (``seconds`` if they are not)."""
    start = time.monotonic()
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < start + seconds:
        time.sleep(0.1)
    return time.monotonic() - start


def _pids(rows) -> set[int]:
    return {row[1] for row in rows}


def test_ray_model_actors_are_kept_for_the_next_run_and_then_stopped(ray_session):
    """On the caller's Ray a finished run's model actors serve the next run asking the same
    CPUs (no new process to start), make way for a pool asking other resources, and are
    stopped ``--ray_keep_pool_seconds`` after the last run."""
    def run(keep: float, num_cpus: int = 1, concurrency: int = 2) -> list[tuple]:
        return _tagged(RayRunner(), RunModel(Tagger, batch_size=2, num_cpus=num_cpus,
                                             concurrency=concurrency),
                       PipelineOptions([f"--ray_keep_pool_seconds={keep}",
                                        "--ray_actor_start_timeout=30"]))

    first = _pids(run(keep=60))
    assert len(first) == 2 and ray_session.available_resources().get("CPU", 0) == 0
    again = _pids(run(keep=60))
    assert again == first  # the same two actors took the second run
    # a pool asking both CPUs per actor still starts: the kept ones make way
    wide = _pids(run(keep=2, num_cpus=2, concurrency=1))
    assert not wide & first
    assert ray_session.available_resources().get("CPU", 0) == 0  # kept, for 2 s
    waited = _cpus_free_within(ray_session, 20)
    assert 0.5 < waited < 20, waited  # then stopped, its CPUs free


def test_unsatisfiable_num_gpus_fails_with_a_typed_error_not_a_hang(ray_session):
    model = RunModel(Tagger, batch_size=2, num_gpus=1, label="Gpu model")
    started = time.monotonic()
    with pytest.raises(ResourceUnavailableError, match=r"num_gpus=1.*within 3 s") as info:
        _tagged(RayRunner(), model, options=PipelineOptions(["--ray_actor_start_timeout=3"]))
    assert "Gpu model" in str(info.value)
    assert time.monotonic() - started < 60


def _mark_prepared(value, folder):
    open(os.path.join(folder, str(value)), "w").close()
    return value


def test_preparation_runs_while_the_model_pool_starts(ray_session, tmp_path):
    """The model's actors start while the stages before it run: here they never can (no GPU),
    and every element was prepared before the run failed at the pool's start deadline (the
    driver used to wait for the pool before submitting any preparation task)."""
    model = RunModel(Tagger, batch_size=2, num_gpus=1, label="Gpu model")
    with pytest.raises(ResourceUnavailableError, match=r"num_gpus=1.*within 3 s"):
        run_collect(lambda p: {"out": p | beam.Create(list(range(N)))
                               | beam.Map(_mark_prepared, str(tmp_path)) | model},
                    runner=RayRunner(), options=PipelineOptions(["--ray_actor_start_timeout=3"]))
    assert sorted(int(name) for name in os.listdir(tmp_path)) == list(range(N))


def test_frame_udf_concurrency_on_ray_is_its_actor_pool(ray_session):
    @mmbeam.udf(return_dtype=DataType.string(), batch_size=3, concurrency=2, num_cpus=1)
    class Where:
        def __init__(self):
            _LOADS["Where"] += 1
            self.tag = f"{os.getpid()}:{id(self)}:{_LOADS['Where']}:{_assigned()}"

        def __call__(self, values):
            return [self.tag] * len(values)

    mmbeam.context.set_execution_config(batch_rows=4)
    mmbeam.context.set_runner_ray()
    out = (mmbeam.from_pydict({"v": list(range(N))}).with_column("w", Where(col("v")))
           .collect().to_pydict())
    assert sorted(out["v"]) == list(range(N))
    tags = collections.defaultdict(set)
    for tag in out["w"]:
        pid, instance, load, resources = tag.split(":")
        tags[pid].add((instance, load, resources))
    assert len(tags) == 2 and all(len(v) == 1 for v in tags.values()), tags
    assert {next(iter(v))[1:] for v in tags.values()} == {("1", "CPU=1")}


def test_frame_udf_loads_once_per_dask_worker_process(dask_cluster):
    @mmbeam.udf(return_dtype=DataType.string(), batch_size=3)
    class Where:
        def __init__(self):
            _LOADS["WhereDask"] += 1
            self.tag = f"{os.getpid()}:{id(self)}:{_LOADS['WhereDask']}"

        def __call__(self, values):
            return [self.tag] * len(values)

    mmbeam.context.set_execution_config(batch_rows=4)
    mmbeam.context.set_runner_dask(dask_cluster.scheduler_address)
    out = (mmbeam.from_pydict({"v": list(range(N))}).with_column("w", Where(col("v")))
           .collect().to_pydict())
    tags = collections.defaultdict(set)
    for tag in out["w"]:
        pid, instance, load = tag.split(":")
        tags[pid].add((instance, load))
    assert str(os.getpid()) not in tags
    assert 1 <= len(tags) <= 2 and all(v == {(next(iter(v))[0], "1")} for v in tags.values())


_KEEP_THEN_SHUT_DOWN = """
import time
import apache_beam as beam
import ray
from apache_beam.options.pipeline_options import PipelineOptions
from mmbeam.runners import RayRunner
from mmbeam.testing import run_collect
from mmbeam.transforms import RunModel


class Double:
    def __call__(self, batch):
        return [2 * v for v in batch]


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
got = run_collect(lambda p: {"out": p | beam.Create(list(range(8)))
                             | RunModel(Double, num_cpus=1, concurrency=1)},
                  runner=RayRunner(), options=PipelineOptions(["--ray_keep_pool_seconds=1"]))
assert sorted(got.outputs["out"]) == [2 * v for v in range(8)]
ray.shutdown()
time.sleep(3)  # the kept actor's time ends after the shutdown
print(ray.is_initialized())
"""


def test_kept_model_actors_ending_after_ray_shut_down_do_not_start_ray_again():
    """The caller shut Ray down while a run's model actor was kept: when its time ends nothing
    is called on Ray (a call from that timer thread started a new Ray session, which failed to
    reach the old cluster and ended the process a minute later)."""
    out = subprocess.run([sys.executable, "-c", _KEEP_THEN_SHUT_DOWN], capture_output=True,
                         text=True, timeout=180, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
