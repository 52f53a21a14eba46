"""Runner benchmark: the camera-corpus image pipeline on the in-process, Dask and Ray runners.

Serves the corpus (corpus.py) from a loopback FaultServer with ``--latency`` per request and runs
``Create | Download | DecodeImage | ResizeImage 256x256 | EncodeImage JPEG | Upload`` (the chain of
benchmarks/contenders.py) on each runner in the same run. Start-up (cluster or Ray start, workers
importing Beam) is timed apart from the pipeline itself: a one-image warm-up run on the started
engine is reported as start-up, then the full corpus is timed as steady state. Every output
folder is checked (one 256x256 JPEG per image). Prints images/s and the bundle sizes the runner
chose for the image stage.

The frame rows (``frame-local``, ``frame-dask``, ``frame-ray``) run the same chain as a frame
(``from_pydict`` of the URLs → ``url.download → image.decode → image.resize → image.encode →
url.upload`` → ``to_pydict``): in this process, and on Dask and Ray clusters of 2 single-thread
worker processes (``--namespaced``: workers in their own mount namespace, as on other machines,
see :mod:`mmbeam.testing.namespaced`), results coming back through the engine.

    python benchmarks/runners.py --count 256 --latency 0.05
    python benchmarks/runners.py --runners local,dask1,dask2,ray
    python benchmarks/runners.py --runners frame-local,frame-dask,frame-ray --namespaced
"""

from __future__ import annotations

import argparse
import functools
import logging
import operator
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from contenders import SIZE, thumbnail_parts  # noqa: E402
from corpus import corpus  # noqa: E402

RUNNERS = ("local", "dask1", "dask2", "ray", "frame-local", "frame-dask", "frame-ray")


def _engine(name: str):
    """(runner factory, close) for a started engine."""
    from mmbeam.runners import DaskRunner, RayRunner, local_runner

    if name == "local":
        return local_runner, lambda: None
    if name.startswith("dask"):
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=int(name[4:]), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        return (lambda: DaskRunner(cluster.scheduler_address)), cluster.close
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return RayRunner, ray.shutdown


def _frame_engine(name: str, namespaced: bool):
    """(set the frame context, close) for a frame row."""
    import mmbeam

    if name == "frame-local":
        return mmbeam.context.set_runner_local, lambda: None
    if namespaced:
        from mmbeam.testing import namespaced as ns

        cluster = (ns.NamespacedDask() if name == "frame-dask" else ns.NamespacedRay()).start()
        if name == "frame-dask":
            return (lambda: mmbeam.context.set_runner_dask(cluster.address)), cluster.close
        import ray

        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        return mmbeam.context.set_runner_ray, lambda: (ray.shutdown(), cluster.close())
    if name == "frame-dask":
        from distributed import LocalCluster

        local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                             dashboard_address=None, silence_logs=logging.ERROR)
        return (lambda: mmbeam.context.set_runner_dask(local.scheduler_address)), local.close
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return mmbeam.context.set_runner_ray, ray.shutdown


def _run_frame(pairs, out) -> list[str]:
    """The written paths (the frame's upload names files by content: equal images, one file)."""
    import mmbeam
    from mmbeam import col

    df = mmbeam.from_pydict({"name": [n for n, _ in pairs], "url": [u for _, u in pairs]})
    df = df.with_column("path", col("url").url.download().image.decode()
                        .image.resize(*SIZE).image.encode("JPEG").url.upload(out))
    return df.select("name", "path").to_pydict()["path"]


def bench_frame(name: str, pairs: list[tuple[str, str]], namespaced: bool) -> dict:
    import mmbeam

    start = time.perf_counter()
    use, close = _frame_engine(name, namespaced)
    try:
        use()
        # namespaced workers have their own /tmp: write where they and this process both see
        shared = "/dev/shm" if namespaced and os.path.isdir("/dev/shm") else None
        warm = tempfile.mkdtemp(prefix=f"mmbeam-runners-{name}-warm-", dir=shared)
        _run_frame(pairs[:1], warm)
        startup = time.perf_counter() - start
        out = tempfile.mkdtemp(prefix=f"mmbeam-runners-{name}-", dir=shared)
        begin = time.perf_counter()
        paths = _run_frame(pairs, out)
        steady = time.perf_counter() - begin
        assert len(paths) == len(pairs) and None not in paths
        _check(out, len(set(paths)))
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(warm, ignore_errors=True)
        return {"runner": name, "startup_s": startup, "steady_s": steady,
                "ips": len(pairs) / steady, "bundles": []}
    finally:
        mmbeam.context.set_runner_local()
        close()


def _run(factory, pairs, out) -> object:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    pipeline = beam.Pipeline(runner=factory(), options=PipelineOptions([]))
    _ = pipeline | beam.Create(pairs) | functools.reduce(operator.or_, thumbnail_parts(out))
    result = pipeline.run()
    result.wait_until_finish()
    return result


def _check(out: str, count: int) -> None:
    from PIL import Image

    files = os.listdir(out)
    assert len(files) == count, f"{len(files)} files in {out}, expected {count}"
    for name in files[:16]:
        assert Image.open(os.path.join(out, name)).size == SIZE


def bench(name: str, pairs: list[tuple[str, str]]) -> dict:
    start = time.perf_counter()
    factory, close = _engine(name)
    try:
        warm = tempfile.mkdtemp(prefix=f"mmbeam-runners-{name}-warm-")
        _run(factory, pairs[:1], warm)
        startup = time.perf_counter() - start
        out = tempfile.mkdtemp(prefix=f"mmbeam-runners-{name}-")
        begin = time.perf_counter()
        result = _run(factory, pairs, out)
        steady = time.perf_counter() - begin
        _check(out, len(pairs))
        sizes = getattr(result, "bundle_sizes", {})
        image_stage = [v for k, v in sizes.items() if "Download" in k]
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(warm, ignore_errors=True)
        return {"runner": name, "startup_s": startup, "steady_s": steady,
                "ips": len(pairs) / steady, "bundles": image_stage[0] if image_stage else []}
    finally:
        close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="camera")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--namespaced", action="store_true",
                        help="frame-dask/frame-ray workers in their own mount namespace")
    args = parser.parse_args(argv)
    from mmbeam.testing import FaultServer

    images = corpus(args.corpus, args.count)
    rows = []
    with FaultServer(latency_s=args.latency) as server:
        pairs = [(name, server.add(name, data)) for name, data in sorted(images.items())]
        for name in args.runners.split(","):
            rows.append(bench_frame(name, pairs, args.namespaced) if name.startswith("frame-")
                        else bench(name, pairs))
            row = rows[-1]
            print(f"{name:>6}: {row['ips']:7.1f} images/s steady ({row['steady_s']:.1f} s), "
                  f"start-up {row['startup_s']:.1f} s, image-stage bundles {row['bundles']}",
                  flush=True)
    base = rows[0]["ips"]
    print(f"\n{args.corpus} x {args.count}, {args.latency * 1000:g} ms latency, "
          f"{os.cpu_count()} CPUs; ratio to {rows[0]['runner']}:")
    for row in rows:
        print(f"  {row['runner']:>6}  {row['ips']:7.1f} img/s  x{row['ips'] / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
