"""Pools and streaming on the Dask and Ray runners: the model on its own pool with the
preparation on every worker, bytes queued between streamed stages under the limit, an
autoscaling pool growing and shrinking, model batches whole across task boundaries, and every
output exactly once with a worker killed in either stage."""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from mmbeam.runners import DaskRunner, RayRunner
from mmbeam.testing import run_collect
from mmbeam.transforms import RunModel

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(params=["ray", "dask"])
def engine(request):
    """``(name, make a runner)`` on the session's 2-worker Dask cluster or 2-CPU Ray."""
    if request.param == "dask":
        cluster = request.getfixturevalue("dask_cluster")
        return "dask", lambda: DaskRunner(cluster.scheduler_address)
    request.getfixturevalue("ray_session")
    return "ray", RayRunner


def _prep(value, delay=0.0, payload=0, marks=None):
    """A preparation step: tags the value with its process, optionally slow and bulky."""
    if marks:
        with open(os.path.join(marks, f"prep-{os.getpid()}"), "a") as f:
            f.write("x")
    time.sleep(delay)
    return value, os.getpid(), b"x" * payload


class Model:
    """A model costing ``delay`` seconds per element; writes its pid when it loads."""

    def __init__(self, delay=0.002, marks=None):
        self.delay, self.marks = delay, marks
        if marks:
            open(os.path.join(marks, f"model-{os.getpid()}"), "w").close()

    def __call__(self, batch):
        time.sleep(self.delay * len(batch))
        if self.marks:
            for value, _, _ in batch:
                open(os.path.join(self.marks, f"done-{value}"), "w").close()
        return [(value, prep_pid, os.getpid()) for value, prep_pid, _ in batch]


def _run(runner, n, model, flags=(), **prep):
    got = run_collect(lambda p: {"out": p | beam.Create(list(range(n)))
                                 | beam.Map(_prep, **prep) | model},
                      runner=runner, options=PipelineOptions(list(flags)))
    values = sorted(v for v, _, _ in got.outputs["out"])
    assert values == list(range(n))  # every element exactly once
    return got


def _model_pool(result, name="RunModel"):
    (report,) = [r for stage, r in result.pools.items() if name in stage]
    return report


def test_model_has_its_own_pool_and_preparation_runs_on_every_worker(engine):
    _, runner = engine
    got = _run(runner(), 48, RunModel(Model, num_cpus=1, concurrency=1, batch_size=4),
               delay=0.02)
    rows = got.outputs["out"]
    prep_pids, model_pids = {r[1] for r in rows}, {r[2] for r in rows}
    assert len(prep_pids) > 1, prep_pids  # preparation ran on more than one worker process
    assert len(model_pids) == 1  # one model process: the pool of concurrency=1
    assert not prep_pids & model_pids, (prep_pids, model_pids)  # a process of its own
    report = _model_pool(got.result)
    assert "pool" in report.pool or "model processes" in report.pool, report.pool
    assert report.sizes[0][1] == 1 and report.batch_sizes


def _thread_state(value):
    """(value, this thread's niceness, its process's, Beam's state sampling period)."""
    from apache_beam.runners.worker import statesampler

    return (value, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
            os.getpriority(os.PRIO_PROCESS, os.getpid()),
            statesampler.get_current_tracker().sampling_period_ms)


class _ThreadStateModel:
    def __call__(self, batch):
        return [(prep, _thread_state(None)[1:]) for prep in batch]


def test_preparation_yields_the_cpu_to_the_model_and_tasks_end_without_a_long_sample(engine):
    """Preparation threads run at the lowest priority by default (``--preparation_nice=19``
    steps below their process's, at most 19), and the model's thread at its process's
    niceness; a task's end waits for Beam's state sampler at most its short period, not
    Beam's 200 ms."""
    from mmbeam.runners.worker import STATE_SAMPLING_MS

    _, runner = engine
    got = run_collect(lambda p: {"out": p | beam.Create(list(range(16)))
                                 | beam.Map(_thread_state)
                                 | RunModel(_ThreadStateModel, num_cpus=1, concurrency=1)},
                      runner=runner())
    rows = got.outputs["out"]
    assert len(rows) == 16
    for (_, prep_nice, _, prep_period), (model_nice, model_base, model_period) in rows:
        assert model_nice == model_base, rows
        assert prep_nice == 19, rows
        assert prep_period == model_period == STATE_SAMPLING_MS, rows


_YIELD_IN_A_NICED_PROCESS = """
import os, sys, threading
os.nice(int(sys.argv[1]))  # the process starts niced, as Ray starts its workers
from mmbeam.runners.worker import yield_cpu
seen = []
def task():
    yield_cpu(2)
    seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
task()  # on the main thread, as a Ray actor runs its tasks: the process's niceness changes
task()
thread = threading.Thread(target=task)
thread.start()
thread.join()
print(seen)
"""


@pytest.mark.parametrize("start", [0, 15])
def test_preparation_nice_is_relative_to_the_process_and_does_not_drift(start):
    """``yield_cpu(2)`` lowers a thread to 2 steps below the niceness its process started
    with, however many tasks ran before (not 2 below the main thread's, which the first task
    on it lowered)."""
    out = subprocess.run([sys.executable, "-c", _YIELD_IN_A_NICED_PROCESS, str(start)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == str([start + 2] * 3), out.stderr


@pytest.fixture(scope="module")
def gpu_dask():
    """A LocalCluster of two plain workers and one declaring ``GPU=1`` (a label here: the
    model's num_gpus request must land on it, and only on it)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.WARNING)
    spec = copy.deepcopy(cluster.new_spec)
    spec["options"]["resources"] = {"GPU": 1}
    cluster.worker_spec["gpu"] = spec
    cluster.sync(cluster._correct_state)
    with Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(3, timeout=120)
        gpu = [info["id"] for info in client.scheduler_info()["workers"].values()
               if info.get("resources", {}).get("GPU")]
        pids = client.run(os.getpid)
        gpu_pid = [pids[a] for a, info in client.scheduler_info()["workers"].items()
                   if info.get("resources", {}).get("GPU")]
    assert gpu
    yield cluster, gpu_pid[0]
    cluster.close()


def test_dask_model_with_num_gpus_runs_on_the_workers_declaring_gpus(gpu_dask):
    cluster, gpu_pid = gpu_dask
    got = _run(DaskRunner(cluster.scheduler_address), 48,
               RunModel(Model, num_gpus=1, batch_size=4), delay=0.02)
    rows = got.outputs["out"]
    assert {r[2] for r in rows} == {gpu_pid}
    assert len({r[1] for r in rows}) > 1  # preparation on more than one worker
    assert "GPU" in _model_pool(got.result).pool


def test_dask_num_gpus_without_gpu_workers_names_the_step_and_resources(dask_cluster):
    from mmbeam.errors import ResourceUnavailableError

    with pytest.raises(ResourceUnavailableError, match=r"'Gpu model'.*num_gpus=1.*resources"):
        _run(DaskRunner(dask_cluster.scheduler_address), 8,
             RunModel(Model, num_gpus=1, label="Gpu model"))


def test_slow_model_behind_fast_preparation_keeps_the_queue_under_the_limit(engine):
    """1 KB per prepared element, 200 elements, a model at 10 ms each: without backpressure
    the whole 200 KB would queue between the stages; the limit is 24 KB."""
    _, runner = engine
    limit = 24_000
    got = _run(runner(), 200, RunModel(Model, init_kwargs={"delay": 0.01}, num_cpus=1,
                                       concurrency=1),
               flags=[f"--max_queued_bytes={limit}"], payload=1000)
    report = _model_pool(got.result)
    assert report.queue_limit == limit
    assert 0 < report.max_queued_bytes <= limit, report.queued_bytes
    # the queue did fill up to a good share of the limit: preparation was held back, not slow
    assert report.max_queued_bytes >= limit // 4, report.queued_bytes


def test_autoscaling_pool_grows_under_load_and_shrinks_when_idle(engine, tmp_path, request):
    """The first 40 prepared elements come at once and the model (40 ms each) falls behind:
    the pool grows from 1 to 2. The other 12 are held back (the model idles) until the pool
    has shrunk: until the second slot was taken and given back (on Ray in Ray's own CPU
    accounting, on Dask in the model pool's slots). Without a shrink they would be held 30 s
    and the test fails."""
    name, runner = engine
    marks = str(tmp_path)
    stop = threading.Event()

    pools: list = []  # the Dask model pool, seen through a runner that keeps its backend

    class PoolWatchingDaskRunner(DaskRunner):
        def make_backend(self, options):
            backend = super().make_backend(options)
            for_stage = backend.for_stage

            def watched(stage_name, resources):
                pool = for_stage(stage_name, resources)
                if pool is not backend and pool not in pools:
                    pools.append(pool)
                return pool

            backend.for_stage = watched
            return backend

    if name == "dask":
        runner = lambda: PoolWatchingDaskRunner(request.getfixturevalue(  # noqa: E731
            "dask_cluster").scheduler_address)

    def model_slots() -> int:
        return pools[0].slots if pools else 0

    def cpus() -> float:
        import ray

        return ray.available_resources().get("CPU", 0)

    def mark(stage: str, until) -> bool:
        while not stop.wait(0.05):
            if until():
                open(os.path.join(marks, stage), "w").close()
                return True
        return False

    def watch():
        if name == "dask":
            if mark("grown", lambda: model_slots() == 2):
                mark("shrunk", lambda: model_slots() == 1)
        elif mark("grown", lambda: cpus() < 1):
            mark("shrunk", lambda: cpus() >= 1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        got = run_collect(
            lambda p: {"out": p | beam.Create(list(range(52))) | beam.Map(_phased, marks)
                       | RunModel(Model, init_kwargs={"delay": 0.04}, num_cpus=1,
                                  concurrency=(1, 2), batch_size=2)},
            runner=runner(), options=PipelineOptions(["--pool_idle_seconds=0.4"]))
    finally:
        stop.set()
        watcher.join()
    assert sorted(v for v, _, _ in got.outputs["out"]) == list(range(52))
    sizes = [n for _, n in _model_pool(got.result).sizes]
    assert sizes[0] == 1 and max(sizes) == 2, sizes
    assert 1 in sizes[sizes.index(2):], sizes  # back to its min once idle


def _phased(value, marks):
    """The first 40 elements prepared (counted across processes in a file) pass at once, the
    others wait for the ``shrunk`` mark (30 s at most), outside Dask's worker thread pool."""
    with open(os.path.join(marks, "count"), "a") as f:
        f.write("x")
    if os.path.getsize(os.path.join(marks, "count")) > 40:
        on_dask = _leave_dask_thread_pool()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(marks, "shrunk")) and time.monotonic() < deadline:
            time.sleep(0.02)
        if on_dask:
            from distributed import rejoin

            rejoin()
    return value, os.getpid(), b""


def _leave_dask_thread_pool() -> bool:
    """On a Dask worker, ``secede`` (Dask's way for a task that blocks on something outside
    it: the model's tasks must still get a worker thread); False elsewhere."""
    try:
        from distributed import get_worker, secede

        get_worker()
    except (ImportError, ValueError):
        return False
    secede()
    return True


def test_model_batches_reach_their_size_across_task_boundaries(engine):
    """Tasks of the stage controller alone would hold one or two elements
    (``--bundle_target_seconds=0.001``); the model's autotuned batches still reach 16."""
    _, runner = engine
    got = _run(runner(), 160, RunModel(Model, init_kwargs={"delay": 0.001}, num_cpus=1,
                                       concurrency=1, max_batch_size=16),
               flags=["--bundle_target_seconds=0.001"])
    sizes = _model_pool(got.result).batch_sizes
    assert sum(sizes) == 160 and max(sizes) == 16
    assert sizes.count(16) >= len(sizes) // 2, sizes


@pytest.mark.parametrize("stage", ["prep", "model"])
def test_a_worker_killed_in_either_stage_keeps_every_output_exactly_once(engine, stage,
                                                                         tmp_path):
    _, runner = engine
    marks = str(tmp_path)
    killed: dict = {}

    def kill_when_started():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "pid" not in killed:
            names = os.listdir(marks)
            done = sum(n.startswith("done-") for n in names)
            model = {int(n[6:]) for n in names if n.startswith("model-")}
            prep = {int(n[5:]) for n in names if n.startswith("prep-")} - model
            targets = model if stage == "model" else prep
            if done >= 4 and targets:
                killed.update(pid=min(targets), done_before=done)
                os.kill(min(targets), signal.SIGKILL)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    pipeline = beam.Pipeline(runner=runner())
    _ = (pipeline | beam.Create(list(range(80))) | beam.Map(_prep, delay=0.01, marks=marks)
         | RunModel(Model, init_kwargs={"delay": 0.03, "marks": marks}, num_cpus=1,
                    concurrency=1, batch_size=2)
         | beam.Map(lambda row: str(row[0]))
         | beam.io.WriteToText(str(tmp_path / "out" / "values")))  # commits one attempt
    result = pipeline.run()
    killer.join()
    assert killed and killed["done_before"] < 80, killed
    lines = [line for f in (tmp_path / "out").glob("values*") for line in
             f.read_text().splitlines()]
    assert sorted(map(int, lines)) == list(range(80))  # every output exactly once
    (written,) = result.metrics().query(beam.metrics.MetricsFilter().with_name(
        "succeeded").with_namespace("RunModel[Model]"))["counters"]
    assert written.committed == 80  # the metrics of one attempt per stage


def test_frame_udf_pool_shows_in_explain_after_a_run(ray_session, capsys):
    import mmbeam
    from mmbeam import DataType, col

    @mmbeam.udf(return_dtype=DataType.int64(), concurrency=(1, 2), num_cpus=1)
    class Double:
        def __call__(self, values):
            return [2 * v for v in values]

    frame = mmbeam.from_pydict({"v": list(range(40))}).with_column("w", Double(col("v")))
    mmbeam.context.set_runner_ray()
    try:
        out = frame.collect().to_pydict()
        frame.explain(show_all=True)
    finally:
        mmbeam.context.set_runner_local()
    assert sorted(out["w"]) == [2 * v for v in range(40)]
    text = capsys.readouterr().out
    assert "udf Double: its own batched stage, on its own pool on Dask/Ray " \
           "(concurrency=(1, 2), num_cpus=1)" in text
    pools = text[text.index("== Pools"):]
    assert "Udf[Double]" in pools and "Ray actor pool (num_cpus=1, num_gpus=0), 1..2" in pools
