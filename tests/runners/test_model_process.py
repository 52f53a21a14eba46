"""A Dask worker's model process (:mod:`mmbeam.runners.model_process`): calls run in a child of
their own, results and errors come back, and the child never outlives its worker nor the worker a
dead child. Worker processes are stood in for by Python subprocesses, killed for real."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import apache_beam as beam
import pytest

from mmbeam.runners import DaskRunner, dask_worker
from mmbeam.runners.model_process import ModelProcess
from mmbeam.testing import run_collect
from mmbeam.transforms import RunModel


class _UnpicklableError(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle this error")


def _fail(kind: str):
    if kind == "value":
        raise ValueError("bad row 7")
    if kind == "result":
        return _UnpicklableError("returned, not raised")
    raise _UnpicklableError("odd failure")


def _echo_big(data: bytes, times: int) -> tuple[int, bytes]:
    return os.getpid(), data * times


@pytest.fixture
def child():
    process = ModelProcess()
    yield process
    process.close()


def test_calls_run_in_a_child_process_and_large_values_cross_whole(child):
    data = os.urandom(1 << 20)
    pid, back = child.call(_echo_big, data, 12)
    assert pid != os.getpid()
    assert back == data * 12
    assert child.call(os.getpid) == pid  # one process, kept between calls


def test_an_error_comes_back_with_its_type_and_the_childs_traceback(child):
    with pytest.raises(ValueError, match="bad row 7") as caught:
        child.call(_fail, "value")
    (note,) = caught.value.__notes__
    assert "in mmbeam's model process" in note and "_fail" in note
    with pytest.raises(RuntimeError, match="odd failure"):  # not picklable: its traceback
        child.call(_fail, "unpicklable")
    with pytest.raises(RuntimeError, match="result cannot be pickled"):
        child.call(_fail, "result")
    assert child.call(int, "5") == 5  # the child goes on after each


_WORKER = """
import os, sys, threading, time
sys.path[:0] = {path!r}
from mmbeam.runners import dask_worker
child = dask_worker.model_thread().submit(dask_worker._start_model_process).result()
print(child.call(os.getpid), flush=True)
{then}
"""


def _worker(then: str) -> tuple[subprocess.Popen, int]:
    """A stand-in worker process that started its model process; its model process's pid."""
    code = _WORKER.format(path=sys.path, then=then)
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    return worker, int(worker.stdout.readline())


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True  # dead, waiting for its (gone) parent's reaper
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_the_model_process_dies_with_its_worker_even_in_a_long_call():
    worker, child_pid = _worker("threading.Thread(target=child.call, args=(time.sleep, 60))"
                                ".start()\ntime.sleep(60)")
    assert child_pid != worker.pid and not _gone(child_pid, 1.0)  # the call has begun
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    assert _gone(child_pid, 10)


def test_a_model_process_that_dies_ends_its_worker_with_a_logged_cause():
    worker, child_pid = _worker("child.call(os._exit, 3)\nprint('survived')")
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 70, (out, err)
    assert "survived" not in out
    assert f"model process {child_pid} exited (code 3)" in err


def test_everywhere_runs_in_the_worker_and_in_its_model_process(tmp_path, monkeypatch):
    monkeypatch.setattr(dask_worker, "_children", {})
    marks = tmp_path / "marks"
    marks.mkdir()

    def mark():
        (marks / str(os.getpid())).touch()
        return os.getpid()

    assert asyncio.run(dask_worker.everywhere(mark)) == os.getpid()
    assert {p.name for p in marks.iterdir()} == {str(os.getpid())}  # no model process yet
    child = dask_worker.model_thread().submit(dask_worker._start_model_process).result()
    try:
        child_pid = child.call(os.getpid)
        asyncio.run(dask_worker.everywhere(mark))
        assert {p.name for p in marks.iterdir()} == {str(os.getpid()), str(child_pid)}
    finally:
        child.close()


def _model_process_pids() -> list[int]:
    return [child._process.pid for child in dask_worker._children.values()]


def _started_within(client, seconds: float, count: int) -> dict[str, list[int]]:
    """Each worker's model process pids, once ``count`` have started (they start without
    being waited for) or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while True:
        started = client.run(_model_process_pids)
        if sum(map(len, started.values())) >= count or time.monotonic() > deadline:
            return started
        time.sleep(0.05)


@pytest.mark.distributed
@pytest.mark.xdist_group("engines")
def test_a_dask_model_pool_starts_its_model_processes_when_made_and_grown():
    """The driver has a pool's workers start their model processes with the pool (the child's
    imports overlap the preparation), a grown slot's worker when it is added, no other."""
    from mmbeam.runners.dask_runner import DaskBackend
    from mmbeam.transforms.resources import StepResources

    backend = DaskBackend(None, n_workers=2)
    try:
        pool = backend.for_stage("model", StepResources(concurrency=(1, 2), num_cpus=1))
        started = _started_within(backend.client, 10, count=1)
        assert sorted(map(len, started.values())) == [0, 1], started
        assert started[pool._slots[0]], started
        pool.grow()
        assert all(_started_within(backend.client, 10, count=2).values())
    finally:
        backend.close()


class _Double:
    def __call__(self, batch):
        return [2 * x for x in batch]


def _runs_held() -> int:
    from mmbeam.runners import worker

    return len(worker._runs)


def _runs_held_by_model_processes() -> list[int]:
    return [child.call(_runs_held) for child in dask_worker._children.values()]


def test_a_dask_run_ends_its_dofns_in_the_model_process_too(dask_cluster):
    """The run's end (``end_run`` on every worker) reaches the model processes: their DoFns
    are torn down and the run's state dropped, as in the workers."""
    from distributed import Client

    got = run_collect(lambda p: {"out": p | beam.Create(list(range(20)))
                                 | RunModel(_Double, num_cpus=1, concurrency=1)},
                      runner=DaskRunner(dask_cluster.scheduler_address))
    assert sorted(got.outputs["out"]) == [2 * x for x in range(20)]
    with Client(dask_cluster, set_as_default=False) as client:
        held = [n for per in client.run(_runs_held_by_model_processes).values() for n in per]
    assert held and not any(held), held  # a model process ran the model, and holds no run
