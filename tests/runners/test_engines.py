"""The image pipeline and the frame facade on the Dask and Ray runners, a worker killed mid-run,
and the engine lifecycle (clients and clusters closed, typed errors for what is unsupported)."""

from __future__ import annotations

import os
import signal
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import userstate
from PIL import Image

import mmbeam
from mmbeam import transforms as mt
from mmbeam.errors import UnsupportedError
from mmbeam.runners import DaskRunner, RayRunner, local_runner
from mmbeam.testing import FaultServer, run_collect, sample_images

N_IMAGES = 24


@pytest.fixture(scope="module")
def image_server():
    """A FaultServer with some latency, so the image pipeline runs long enough to be hurt."""
    with FaultServer(latency_s=0.2) as server:
        names = sorted(sample_images(N_IMAGES, min_size=40, max_size=160, seed=7).items())
        server.urls = [(name, server.add(name, data)) for name, data in names]
        yield server


def _thumbnails(out: str):
    return (mt.Download(max_connections=2, keyed=True) | mt.DecodeImage(keyed=True)
            | mt.ResizeImage(24, 24, keyed=True) | mt.EncodeImage("PNG", keyed=True)
            | mt.Upload(out, keyed=True))


def _run_images(runner, urls, out):
    return run_collect(lambda p: p | beam.Create(urls) | _thumbnails(out), runner=runner)


def _files(folder) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


def test_image_pipeline_same_files_as_in_process(image_server, make_runner, tmp_path):
    local_out, out = tmp_path / "local", tmp_path / "runner"
    _run_images(local_runner(), image_server.urls, str(local_out))
    got = _run_images(make_runner(), image_server.urls, str(out))
    assert len(got.outputs) == N_IMAGES
    assert got.counter("Upload", "succeeded") == N_IMAGES
    assert _files(out) == _files(local_out)


def test_frame_facade_same_rows_as_in_process(make_runner, runner_name):
    frame = (mmbeam.from_pydict({"id": list(range(50)), "name": [f"n{i}" for i in range(50)]})
             .with_column("label", mmbeam.col("name") + "-" + mmbeam.col("name"))
             .where(mmbeam.col("id") % 3 != 0))
    expected = frame.collect().to_pydict()
    address = None
    if runner_name == "dask":
        address = make_runner().address
        mmbeam.context.set_runner_dask(address)
    elif runner_name == "ray":
        make_runner()
        mmbeam.context.set_runner_ray()
    got = frame.collect().to_pydict()
    order = np.argsort(got["id"])
    assert {k: [v[i] for i in order] for k, v in got.items()} == expected
    assert len(expected["id"]) == 33


def _run_killing_one_worker(runner, urls, pid: int, tmp_path):
    """Run the image pipeline on ``runner``, SIGKILL worker process ``pid`` once two thumbnails
    are written, and check that the run completes with every thumbnail written once and the
    committed outputs (WriteToText's transactional files) and counters holding each key once.
    (A DoFn's own side effects may run again for a retried bundle, as on any Beam runner.)"""
    out, listing = tmp_path / "thumbs", tmp_path / "listing"
    out.mkdir()
    killed: dict = {}

    def kill_when_started():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "pid" not in killed:
            done = len(os.listdir(out))
            if done >= 2:
                killed.update(pid=pid, done_before=done)
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    pipeline = beam.Pipeline(runner=runner)
    _ = (pipeline | beam.Create(urls) | _thumbnails(str(out))
         | beam.MapTuple(lambda key, path: key) | beam.io.WriteToText(str(listing)))
    result = pipeline.run()
    killer.join()
    assert killed and killed["done_before"] < N_IMAGES, killed
    names = sorted(name for name, _ in urls)
    assert sorted(n for n in os.listdir(out) if not n.endswith(".tmp")) == names
    for name in names:
        assert Image.open(out / name).size == (24, 24)
    keys = [line for f in tmp_path.glob("listing*") for line in f.read_text().splitlines()]
    assert sorted(keys) == names
    (ok,) = result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace("Upload").with_name("succeeded"))["counters"]
    assert ok.committed == N_IMAGES
    return result


@pytest.mark.slow
def test_killed_dask_worker_process_every_output_exactly_once(image_server, dask_cluster,
                                                              tmp_path):
    """The killed worker is the one the runner places its first task on (its slots are the
    workers in address order), so it holds the Create stage's randomly keyed output: Dask
    recomputes that differently, and the runner must recover by re-running stages."""
    from distributed import Client

    with Client(dask_cluster.scheduler_address, set_as_default=False) as client:
        first = sorted(client.run(os.getpid).items())[0][1]
    result = _run_killing_one_worker(DaskRunner(dask_cluster.scheduler_address),
                                     image_server.urls, first, tmp_path)
    assert result.recoveries >= 1


@pytest.mark.slow
def test_killed_ray_worker_process_every_output_exactly_once(image_server, ray_session, tmp_path):
    """A Ray actor process (one of the runner's worker slots) is killed mid-run. Ray restarts
    the actor and retries its tasks itself (the data lives in the node's object store, not in
    the killed process), so the run needs no stage re-run here (``result.recoveries`` may be
    0); what must hold is that every output is there exactly once."""
    from mmbeam.runners.ray_runner import RayBackend

    backend = RayBackend()  # the actor pool the next run in this process reuses
    pids = ray_session.get([actor.pid.remote() for actor in backend.actors])
    _run_killing_one_worker(RayRunner(), image_server.urls, pids[0], tmp_path)
    after = ray_session.get([actor.pid.remote() for actor in backend.actors], timeout=120)
    assert pids[0] not in after and len(set(after)) == len(pids)  # the killed slot restarted


class _TimerFn(beam.DoFn):
    STATE = userstate.ReadModifyWriteStateSpec("n", VarIntCoder())
    TIMER = userstate.TimerSpec("flush", userstate.TimeDomain.WATERMARK)

    def process(self, kv, state=beam.DoFn.StateParam(STATE),
                timer=beam.DoFn.TimerParam(TIMER)):
        state.write((state.read() or 0) + 1)
        timer.set(100)
        return []

    @userstate.on_timer(TIMER)
    def flush(self, key=beam.DoFn.KeyParam, state=beam.DoFn.StateParam(STATE)):
        yield key, state.read()


def test_timers_are_refused_with_a_typed_error_not_wrong_output(make_runner, runner_name):
    def build(p):
        return p | beam.Create([("a", 1), ("a", 2), ("b", 3)]) | beam.ParDo(_TimerFn())

    if runner_name == "local":
        assert sorted(run_collect(build, runner=make_runner()).outputs) == [("a", 2), ("b", 1)]
        return
    with pytest.raises(UnsupportedError, match="timers"):
        run_collect(build, runner=make_runner())


def test_dask_client_is_closed_after_the_run(dask_cluster):
    from distributed import Client

    with Client(dask_cluster.scheduler_address, set_as_default=False) as watcher:
        def clients():
            return watcher.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.clients))

        before = clients()
        runner = DaskRunner(dask_cluster.scheduler_address)
        run_collect(lambda p: p | beam.Create([1, 2, 3]) | beam.Map(abs), runner=runner)
        deadline = time.monotonic() + 30
        while clients() != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert clients() == before


def test_a_recomputed_input_unlike_the_committed_one_is_refused_not_used():
    """What lets the runner recover: a list the engine recomputed after a worker died is used
    only if it equals what its producer committed (same length and digest), else LostDataError."""
    from mmbeam.errors import LostDataError
    from mmbeam.runners import worker

    committed = [b"\x01a", b"\x01b", b"\x01c"]
    promise = [(len(committed), worker.digest(committed))]
    worker.check_inputs("stage 'S'", (list(committed),), promise)  # the same list: accepted
    for recomputed in ([b"\x01c", b"\x01a", b"\x01b"], committed[:2], [*committed, b"\x01d"]):
        with pytest.raises(LostDataError, match=r"stage 'S': input list 0 has \d elements"):
            worker.check_inputs("stage 'S'", (recomputed,), promise)
