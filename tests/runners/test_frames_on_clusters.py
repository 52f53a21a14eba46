"""Frames on clusters whose workers cannot see this process's /tmp (their own mount namespace,
as on other machines: :mod:`mmbeam.testing.namespaced`): the reference pipeline (s3:// Parquet →
download → decode → resize → encode → upload to s3://) and an in-memory table, with a UDF, through
every sink, on Dask, Ray and a portable runner (Beam's worker pool, EXTERNAL) with --temp_location
on the moto S3 server; every row and file must match the in-process run. Also: a killed worker
still gives each row and file once, nothing is left under --temp_location, a big table travels
as one engine object.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmbeam
from mmbeam import col
from mmbeam.frame import context
from mmbeam.testing.images import encode_sample, make_image
from mmbeam.types import DataType

N = 12


@mmbeam.udf(return_dtype=DataType.int64(), batch_size=4)
def pixel_sum(images):
    """A UDF over decoded thumbnails: the sum of their pixels (mod a prime)."""
    return [None if img is None else int(np.asarray(img, np.int64).sum() % 1_000_003)
            for img in images]


@pytest.fixture(scope="module")
def dataset(mmbeam_http, mmbeam_s3):
    """N JPEGs on the loopback server (one URL broken), their URLs as Parquet on s3://."""
    bucket = mmbeam_s3.make_bucket(f"frames-{os.getpid()}").removeprefix("s3://")
    urls = [mmbeam_http.add(f"clusters/{i}.jpg", encode_sample(
        make_image(40 + 7 * i, 30 + 5 * i, seed=i), "JPEG")) for i in range(N - 1)]
    urls.append(mmbeam_http.url("status/404"))
    table = pa.table({"id": list(range(N)), "url": urls})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    mmbeam_s3.put(f"s3://{bucket}/in/images.parquet", sink.getvalue().to_pybytes())
    return {"bucket": bucket, "urls": urls, "io": mmbeam_s3.io_config(), "s3": mmbeam_s3}


def reference(source: mmbeam.Frame, out: str, io) -> mmbeam.Frame:
    """The reference pipeline on ``source`` (id, url), plus a UDF column."""
    df = source.with_column("image", col("url").url.download(on_error="null").image.decode())
    df = df.with_column("thumb", col("image").image.resize(16, 12))
    df = df.with_column("path", col("thumb").image.encode("PNG").url.upload(out, io_config=io))
    df = df.with_column("s", pixel_sum(col("thumb")))
    return df.select("id", "path", "s", col("thumb").image.width().alias("w"))


def sources(data) -> dict:
    return {
        "s3-parquet": lambda: mmbeam.read_parquet(f"s3://{data['bucket']}/in/images.parquet",
                                                  io_config=data["io"]),
        "in-memory": lambda: mmbeam.from_pydict({"id": list(range(N)), "url": data["urls"]}),
    }


def _by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


def _results(frame: mmbeam.Frame, data, out_root: str) -> dict:
    """Every sink's result for ``frame``, in comparable form (thumbnail paths relative to
    ``out_root``)."""

    def rel(path):
        return path.removeprefix(out_root) if isinstance(path, str) else None

    def rel_table(table: pa.Table) -> pa.Table:
        paths = pa.array([rel(p) for p in table.column("path").to_pylist()], pa.large_string())
        return _by_id(table.set_column(table.schema.get_field_index("path"), "path", paths))

    pandas = frame.to_pandas().sort_values("id").reset_index(drop=True)
    pandas["path"] = pandas["path"].map(rel)
    got = {
        "arrow": rel_table(frame.to_arrow()),
        "pydict": {k: [rel(v) for v in vs] if k == "path" else vs
                   for k, vs in frame.to_pydict().items()},
        "pylist": [{**r, "path": rel(r["path"])} for r in frame.to_pylist()],
        "pandas": pandas,
        "rows": sorted((r["id"], r["s"]) for r in frame.iter_rows()),
        "count": frame.count_rows(),
        "show": frame.limit(3).to_pylist(),
    }
    parquet = frame.write_parquet(f"{out_root}/parquet", io_config=data["io"]).to_pydict()["path"]
    csv = frame.write_csv(f"{out_root}/csv", io_config=data["io"]).to_pydict()["path"]
    fs = data["s3"].filesystem()
    got["parquet"] = rel_table(pa.concat_tables([pq.read_table(p.removeprefix("s3://"),
                                                              filesystem=fs) for p in parquet]))
    got["parquet_files"] = len(parquet)
    got["csv_rows"] = sum(len(fs.cat(p.removeprefix("s3://")).splitlines()) - 1 for p in csv)
    fs.invalidate_cache()
    for kind, paths in (("parquet", parquet), ("csv", csv)):  # no file of another attempt
        listed = fs.find(f"{out_root.removeprefix('s3://')}/{kind}")
        assert sorted(listed) == sorted(p.removeprefix("s3://") for p in paths), kind
    return got


def _compare(got: dict, want: dict, thumbs: dict[str, bytes], want_thumbs: dict[str, bytes]):
    assert got["arrow"].equals(want["arrow"])
    assert got["arrow"].num_rows == N and got["arrow"].column("path").null_count == 1
    for key in ("pylist", "rows", "count", "parquet_files", "csv_rows"):
        assert got[key] == want[key], key
    assert got["pydict"] == want["pydict"] and sorted(got["pydict"]["id"]) == list(range(N))
    assert got["pandas"].equals(want["pandas"])
    assert len(got["show"]) == 3
    assert got["parquet"].equals(want["parquet"])
    assert thumbs == want_thumbs and len(thumbs) == N - 1


def _thumbs(data, prefix: str) -> dict[str, bytes]:
    fs = data["s3"].filesystem()
    return {Path(p).name: fs.cat(p) for p in fs.find(f"{data['bucket']}/{prefix}")}


@pytest.fixture(scope="module")
def expected(dataset):
    """The in-process results of each source (the reference)."""
    context.set_runner_local()
    out = {}
    for name, make in sources(dataset).items():
        root = f"s3://{dataset['bucket']}/local-{name}"
        out[name] = (_results(reference(make(), f"{root}/thumbs", dataset["io"]), dataset,
                              root), _thumbs(dataset, f"local-{name}/thumbs"))
    return out


def _on(runner_name: str, request, data) -> None:
    if runner_name == "dask":
        context.set_runner_dask(request.getfixturevalue("mmbeam_namespaced_dask").address)
    elif runner_name == "ray":
        cluster = request.getfixturevalue("mmbeam_namespaced_ray")
        import ray
        import ray.util.client

        if ray.is_initialized() and not ray.util.client.ray.is_connected():
            ray.shutdown()  # another test's local Ray: the runner would run there
        # through Ray Client: this process already hosted other tests' local Ray sessions
        context.set_runner_ray(cluster.client_address)
    else:
        from apache_beam.options.pipeline_options import PortableOptions
        from apache_beam.runners.portability.portable_runner import PortableRunner

        pool = request.getfixturevalue("mmbeam_namespaced_beam_pool").options()
        context.set_runner(PortableRunner, "portable", io_config=data["io"],
                           job_endpoint="embed", environment_type="EXTERNAL",
                           environment_config=pool.view_as(PortableOptions).environment_config,
                           temp_location=f"s3://{data['bucket']}/tmp")


@pytest.mark.parametrize("source", ["s3-parquet", "in-memory"])
@pytest.mark.distributed  # the portable runner too, which the shared conftest does not see
@pytest.mark.parametrize("runner_name", ["dask", "ray", "portable"])
def test_reference_pipeline_every_sink_same_as_in_process(runner_name, source, dataset,
                                                          expected, request):
    root = f"s3://{dataset['bucket']}/{runner_name}-{source}"
    _on(runner_name, request, dataset)
    try:
        frame = reference(sources(dataset)[source](), f"{root}/thumbs", dataset["io"])
        got = _results(frame, dataset, root)
        explained = _explained(frame)
    finally:
        context.set_runner_local()
    want, want_thumbs = expected[source]
    _compare(got, want, _thumbs(dataset, f"{runner_name}-{source}/thumbs"), want_thumbs)
    if runner_name == "portable":  # the runs went through --temp_location, and left nothing
        assert dataset["s3"].ls(f"s3://{dataset['bucket']}/tmp") == []
        assert "--temp_location" in explained


def _explained(frame: mmbeam.Frame) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        frame.explain()
    return out.getvalue()


# -- worker kills ---------------------------------------------------------------------------------
@mmbeam.udf(return_dtype=DataType.int64(), batch_size=2)
def slow_double(ids, marks):
    """Doubles ids slowly, leaving a marker file per row, so a test can kill a worker mid-run."""
    out = []
    for i, mark in zip(ids, marks, strict=True):
        time.sleep(0.05)
        Path(mark, f"{i}.{os.getpid()}.{time.monotonic_ns()}").touch()
        out.append(2 * i)
    return out


@pytest.fixture
def doomed_dask():
    """A namespaced Dask cluster of this test's own (a worker of it gets killed for good)."""
    from mmbeam.testing import namespaced

    reason = namespaced.namespace_refusal()
    if reason:
        pytest.skip(f"cannot run workers in their own mount namespace: {reason}")
    with namespaced.NamespacedDask() as cluster:
        yield cluster


@pytest.fixture
def marks():
    """A folder the namespaced workers and this process both see (not /tmp)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mmbeam-marks-", dir="/dev/shm"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _kill_worker_after(cluster, folder: Path, rows: int, killed: dict) -> threading.Thread:
    def kill():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "index" not in killed:
            done = len(os.listdir(folder))
            if done >= rows:
                killed.update(index=0, done_before=done)
                cluster.kill_worker(0)
            time.sleep(0.02)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.distributed
@pytest.mark.parametrize("sink", ["to_pydict", "write_parquet"])
def test_killed_dask_worker_frame_sink_gives_every_row_once(sink, doomed_dask, marks, dataset):
    n = 40
    out = f"s3://{dataset['bucket']}/killed-{sink}"
    frame = mmbeam.from_pydict({"id": list(range(n)), "mark": [str(marks)] * n}).with_column(
        "d", slow_double(col("id"), col("mark"))).select("id", "d")
    killed: dict = {}
    context.set_execution_config(batch_rows=4)
    context.set_runner_dask(doomed_dask.address)
    killer = _kill_worker_after(doomed_dask, marks, 6, killed)
    fs = dataset["s3"].filesystem()
    try:
        if sink == "to_pydict":
            got = frame.to_pydict()
        else:
            paths = frame.write_parquet(out, io_config=dataset["io"]).to_pydict()["path"]
            listed = fs.find(out.removeprefix("s3://"))
            assert sorted(listed) == sorted(p.removeprefix("s3://") for p in paths)
            got = pa.concat_tables([pq.read_table(p, filesystem=fs) for p in listed]).to_pydict()
    finally:
        context.set_runner_local()
        killer.join()
    assert killed and killed["done_before"] < n, killed
    assert sorted(zip(got["id"], got["d"], strict=True)) == [(i, 2 * i) for i in range(n)]


@pytest.mark.distributed
def test_killed_dask_worker_while_iterating_gives_every_row_once(doomed_dask, marks):
    """Issue 16: rows stream out of the run as tasks finish; a worker killed once the consumer
    holds rows (the engine's retries or the runner's re-run may hand batches over again) still
    gives each row once."""
    n = 40
    frame = mmbeam.from_pydict({"id": list(range(n)), "mark": [str(marks)] * n}).with_column(
        "d", slow_double(col("id"), col("mark"))).select("id", "d")
    context.set_execution_config(batch_rows=1)
    context.set_runner_dask(doomed_dask.address, max_bundle_size=2)
    got: list[tuple[int, int]] = []
    held_at_kill = None
    try:
        for batch in frame.iter_batches(batch_size=None):
            got.extend(zip(batch.column("id").to_pylist(), batch.column("d").to_pylist(),
                           strict=True))
            if held_at_kill is None and len(got) >= 4:
                held_at_kill = (len(got), len(os.listdir(marks)))
                doomed_dask.kill_worker(0)
    finally:
        context.set_runner_local()
    assert held_at_kill is not None and held_at_kill[1] < n, held_at_kill  # killed mid-run
    assert sorted(got) == [(i, 2 * i) for i in range(n)]


def _slow_mark(element, folder):
    time.sleep(0.05)
    Path(folder, f"{element}.{os.getpid()}.{time.monotonic_ns()}").touch()
    return element


@pytest.mark.distributed
def test_run_collect_after_a_killed_dask_worker_returns_each_output_once(doomed_dask, marks):
    """Issue 13: the failed attempt's outputs used to stay (56 or 64 items for 40 inputs)."""
    import apache_beam as beam

    from mmbeam.runners import DaskRunner
    from mmbeam.testing import run_collect

    killed: dict = {}
    killer = _kill_worker_after(doomed_dask, marks, 6, killed)
    try:
        got = run_collect(lambda p: p | beam.Create(list(range(40)))
                          | beam.Map(_slow_mark, str(marks)),
                          runner=DaskRunner(doomed_dask.address))
    finally:
        killer.join()
    assert killed and killed["done_before"] < 40, killed
    assert sorted(got.outputs) == list(range(40))


# -- inputs ---------------------------------------------------------------------------------------
def test_big_in_memory_table_travels_as_one_engine_object_not_in_the_pipeline(ray_session):
    """A ~100 MB table is put in the engine once: the pipeline proto stays small, every row
    arrives."""
    import apache_beam as beam

    from mmbeam.exec.beam.channel import EngineChannel
    from mmbeam.exec.beam.compile import Compiler
    from mmbeam.runners import RayRunner

    n = 100_000
    blob = np.random.default_rng(0).integers(0, 255, (n, 1000), np.uint8)
    data = pa.FixedSizeBinaryArray.from_buffers(pa.binary(1000), n,
                                                [None, pa.py_buffer(blob.tobytes())])
    table = pa.table({"id": np.arange(n), "b": data})
    assert table.nbytes > 100e6
    runner = RayRunner()
    pipeline = beam.Pipeline(runner=runner)
    channel = EngineChannel(runner)
    frame = mmbeam.from_arrow(table)
    out = Compiler(pipeline, context.get_context().exec_options, channel).expand(frame._plan)
    channel.attach(out)
    assert len(pipeline.to_runner_api().SerializeToString()) < 1e6
    result = pipeline.run()
    rows = pa.Table.from_batches([b for _, b in channel.read(result)])
    assert rows.num_rows == n and rows.column("id").to_pylist() == list(range(n))
    assert rows.equals(frame._plan.table)  # the (normalized) table, whole
