"""Pools benchmark (issue #14): preparation on every CPU streamed into one model actor.

Serves the web corpus (corpus.py) from a loopback FaultServer and runs
``Create | Download | DecodeImage | ResizeImage 224x224 | RunModel(model)`` on the Ray and Dask
runners, where the model burns ``--model-ms`` of CPU per image in one actor (``num_cpus=1``,
``concurrency=1``): its limit is 1000 / model-ms images/s (167/s at 6 ms). The download, decode
and resize run on every worker and stream into the model's pool. Prints images/s and its share
of the model's limit (target >= 0.8), the model stage's batch sizes and the peak bytes queued
between the stages. ``--memory`` runs ``--counts`` (default 2048,16384) and prints the peak of
Ray's object store (or of the data the Dask workers hold) for each (target: the larger run's
peak within 15% of the smaller's).

    python benchmarks/pools.py --count 2048
    python benchmarks/pools.py --engines ray --memory --counts 2048,16384
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import corpus  # noqa: E402


class BusyModel:
    """Burns ``ms`` of this thread's CPU per image, a stand-in for a CPU model's forward: in a
    Python loop that holds the GIL (``hold_gil``), or in native code that lets it go between
    short steps (SHA-256 of 64 KiB blocks), as torch or onnxruntime do in their kernels."""

    def __init__(self, ms: float, hold_gil: bool = True):
        self.seconds = ms / 1000
        self.hold_gil = hold_gil
        self.block = bytes(64 << 10)

    def __call__(self, batch):
        out = []
        for image in batch:
            end = time.thread_time() + self.seconds
            while time.thread_time() < end:
                if not self.hold_gil:
                    hashlib.sha256(self.block)  # over 2 KiB: hashed without the GIL
            out.append(int(image.shape[0]))
        return out


def _managed_bytes(dask_worker) -> int:
    """The bytes of task results a Dask worker holds in memory (its ``managed`` memory)."""
    return dask_worker.state.nbytes


class _Engine:
    """A started engine: a runner factory and a sampler of the data it holds."""

    def __init__(self, name: str, cpus: int):
        self.name = name
        if name == "ray":
            import ray

            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            state = get_state_from_address(ray.get_runtime_context().gcs_address)
            self.held = lambda: get_memory_info_reply(state).store_stats.object_store_bytes_used
            from mmbeam.runners import RayRunner

            self.runner, self.close = RayRunner, ray.shutdown
        else:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=cpus, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster, set_as_default=False)

            def held() -> int:  # asked of the workers themselves: heartbeats lag
                return sum(client.run(_managed_bytes).values())

            from mmbeam.runners import DaskRunner

            self.held = held
            self.runner = lambda: DaskRunner(cluster.scheduler_address)
            self.close = lambda: (client.close(), cluster.close())


def _pipeline(urls: list[str], model_ms: float, hold_gil: bool):
    import apache_beam as beam

    from mmbeam import transforms as mt
    from mmbeam.transforms import RunModel

    def build(p):
        return (p | beam.Create(urls) | mt.Download(max_connections=32) | mt.DecodeImage()
                | mt.ResizeImage(224, 224) | RunModel(BusyModel, init_args=(model_ms, hold_gil),
                                                      num_cpus=1, concurrency=1)
                | beam.combiners.Count.Globally())

    return build


def run_once(engine: _Engine, urls: list[str], model_ms: float, hold_gil: bool = True,
             flags: list[str] | None = None) -> dict:
    from mmbeam.testing import run_collect

    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], int(engine.held()))
            except Exception:  # noqa: BLE001 - a sample missed is not a failed run
                pass
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    from apache_beam.options.pipeline_options import PipelineOptions

    got = run_collect(lambda p: {"n": _pipeline(urls, model_ms, hold_gil)(p)},
                      runner=engine.runner(), options=PipelineOptions(flags or []))
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    assert got.outputs["n"] == [len(urls)], got.outputs["n"]
    (model,) = [r for s, r in got.result.pools.items() if "RunModel" in s]
    return {"seconds": seconds, "ips": len(urls) / seconds, "peak_held": peak[0],
            "batches": model.batch_sizes, "queued_peak": model.max_queued_bytes,
            "pool": model.pool}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2048)
    parser.add_argument("--engines", default="ray,dask")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--model-ms", type=float, default=6.0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--model-gil", choices=("hold", "release"), default="hold",
                        help="the stand-in model burns its CPU holding the GIL (a Python "
                             "loop) or releasing it (native code, as torch does)")
    parser.add_argument("--memory", action="store_true",
                        help="peak held data at each of --counts instead of one --count")
    parser.add_argument("--counts", default="2048,16384")
    parser.add_argument("--runner-flags", default="",
                        help="pipeline options for the runs, space-separated (e.g. "
                             "'--ray_keep_pool_seconds=0': every run starts its model actor)")
    args = parser.parse_args(argv)
    from mmbeam.testing import FaultServer

    limit = 1000 / args.model_ms
    counts = [int(c) for c in args.counts.split(",")] if args.memory else [args.count]
    images = corpus("web", max(counts))
    print(f"web corpus, {os.cpu_count()} CPUs on the machine, engines with {args.cpus}; "
          f"model {args.model_ms:g} ms CPU/image in one actor ({args.model_gil}ing the GIL): "
          f"limit {limit:.0f} images/s")
    with FaultServer(latency_s=args.latency) as server:
        urls = [server.add(name, data) for name, data in sorted(images.items())]
        for name in args.engines.split(","):
            engine = _Engine(name, args.cpus)
            try:
                hold, flags = args.model_gil == "hold", args.runner_flags.split()
                run_once(engine, urls[:64], args.model_ms, hold, flags)  # warm-up: imports
                peaks = []
                for count in counts:
                    row = run_once(engine, urls[:count], args.model_ms, hold, flags)
                    peaks.append(row["peak_held"])
                    b = row["batches"]
                    print(f"{name:>5} x{count}: {row['ips']:6.1f} images/s = "
                          f"{row['ips'] / limit:.2f} of the model's limit ({row['seconds']:.1f} s);"
                          f" held peak {row['peak_held'] / 1e6:.1f} MB; queued peak "
                          f"{row['queued_peak'] / 1e6:.1f} MB; model batches {len(b)} "
                          f"(median {sorted(b)[len(b) // 2] if b else 0}); {row['pool']}",
                          flush=True)
                if len(peaks) > 1 and peaks[0]:
                    print(f"{name:>5}: held peak at {counts[-1]} / at {counts[0]} = "
                          f"{peaks[-1] / peaks[0]:.2f} (target <= 1.15)")
            finally:
                engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
