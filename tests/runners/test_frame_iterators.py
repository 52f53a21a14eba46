"""Frame iterators stream on mmbeam's Dask and Ray runners (issue 16): the first batch arrives
while the run still goes on, every row comes exactly once (after a killed worker too), leaving
the loop early stops the run and releases the engine, a consumer holding its batch holds the run
(backpressure), a UDF's error reaches the consumer.

"Before the run ends" is shown without timing: the last row's UDF waits for a gate file the test
writes only once it holds its first batch (a run that handed rows back only at its end would
wait for the gate in vain and fail after a bounded wait instead of hanging). One row only is
gated, so it holds one worker slot at most and the other slot's tasks finish.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import mmbeam
from mmbeam import col
from mmbeam.errors import UdfError
from mmbeam.frame import context
from mmbeam.types import DataType

pytestmark = pytest.mark.distributed  # every test runs on Dask and on Ray (the engine fixture)

#: how long a gated row waits for its gate before failing the run
GATE_SECONDS = 60.0


@mmbeam.udf(return_dtype=DataType.int64(), batch_size=1)
def gated_double(ids, gate, gated_from, marks=None):
    """2 × id; rows from ``gated_from`` on wait for the file ``gate``; with ``marks``, one
    marker file per row computed."""
    out = []
    for i in ids:
        if i >= gated_from:
            deadline = time.monotonic() + GATE_SECONDS
            while not os.path.exists(gate):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"row {i}: the gate never opened (no batch reached the "
                                       "consumer while the run went on)")
                time.sleep(0.02)
        if marks is not None:
            time.sleep(0.02)
            Path(marks, f"{i}.{os.getpid()}.{time.monotonic_ns()}").touch()
        out.append(2 * i)
    return out


@mmbeam.udf(return_dtype=DataType.int64(), batch_size=1)
def fails_on_seven(ids):
    if 7 in ids:
        raise ValueError("seven is not allowed")
    return list(ids)


@pytest.fixture(params=["dask", "ray"])
def engine(request):
    """Frames run on the session's Dask cluster or Ray (one row per batch, so many tasks)."""
    if request.param == "dask":
        address = request.getfixturevalue("dask_cluster").scheduler_address
        context.set_runner_dask(address, max_bundle_size=4)
    else:
        request.getfixturevalue("ray_session")
        context.set_runner_ray(max_bundle_size=4)
    context.set_execution_config(batch_rows=1)
    yield request.param


def _ids(n: int) -> mmbeam.Frame:
    return mmbeam.from_pydict({"id": list(range(n))})


def _computed(marks: Path, stable_for: float, within: float) -> tuple[int, bool]:
    """Rows computed so far, once their count held still for ``stable_for`` seconds (or
    ``within`` seconds passed: then the second value is False)."""
    end = time.monotonic() + within
    count, since = -1, time.monotonic()
    while time.monotonic() < end:
        now = len(os.listdir(marks))
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= stable_for:
            return count, True
        time.sleep(0.1)
    return count, False


def _engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mmbeam-engine-run"]


def test_first_batch_arrives_while_the_run_goes_on_and_every_row_once(engine, tmp_path):
    n = 40
    gate = tmp_path / "gate"
    df = _ids(n).with_column("d", gated_double(col("id"), str(gate), n - 1))
    got = []
    for batch in df.iter_batches(batch_size=None):
        if not gate.exists():  # the first batch: the gated row is still waiting
            assert n - 1 not in batch.column("id").to_pylist()
            gate.touch()
        got.extend(zip(batch.column("id").to_pylist(), batch.column("d").to_pylist(),
                       strict=True))
    assert sorted(got) == [(i, 2 * i) for i in range(n)]
    ops = {row["operator"] for row in df.metrics.to_pylist()}  # done() after the run ended
    assert any("gated_double" in op for op in ops), ops
    assert not _engine_threads()


def test_iter_rows_and_torch_batches_stream_too(engine, tmp_path):
    n = 24
    gate = tmp_path / "gate"
    df = _ids(n).with_column("d", gated_double(col("id"), str(gate), n - 1))
    rows = []
    for row in df.iter_rows():
        gate.touch()
        rows.append((row["id"], row["d"]))
    assert sorted(rows) == [(i, 2 * i) for i in range(n)]
    gate.unlink()
    ids = []
    for batch in df.iter_torch_batches(batch_size=5):
        gate.touch()
        ids.extend(batch["id"].tolist())
    assert sorted(ids) == list(range(n))


def test_leaving_the_loop_stops_the_run_and_the_engine_serves_the_next(engine, tmp_path):
    n = 400
    marks = tmp_path / "marks"
    marks.mkdir()
    df = _ids(n).with_column("d", gated_double(col("id"), "", n, str(marks)))
    batches = df.iter_batches(batch_size=2)
    first = next(batches)
    assert first.num_rows == 2
    # backpressure: while the loop holds its batch the run fills the queue and its tasks in
    # flight, then waits (unhindered, the 400 rows take a few seconds); bounded wait
    computed, stable = _computed(marks, stable_for=2.0, within=30.0)
    assert computed < n // 4, (computed, stable)
    batches.close()  # waits until the run's thread has released the engine
    assert not _engine_threads()
    assert len(os.listdir(marks)) < n  # stopped: not every row was computed
    assert _ids(30).with_column("t", col("id") * 3).to_pydict()["t"] == [3 * i for i in
                                                                           range(30)]
    assert sorted(_ids(30).with_column("d", gated_double(col("id"), "", 30)).to_pydict()["d"]) \
        == [2 * i for i in range(30)]


def test_a_row_udf_error_reaches_the_consumer_as_with_to_pydict(engine):
    df = _ids(20).with_column("x", fails_on_seven(col("id")))
    with pytest.raises(UdfError) as collected:
        df.to_pydict()
    with pytest.raises(UdfError) as streamed:
        for _ in df.iter_rows():
            pass
    assert "seven is not allowed" in str(streamed.value)
    # the same stage and element (on Ray the message also names the actor that ran the task)
    assert (streamed.value.stage, streamed.value.element) == \
        (collected.value.stage, collected.value.element)
    assert not _engine_threads()
