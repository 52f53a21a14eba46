"""Coder benchmark: mmbeam's coders beside Beam's fallback (FastPrimitivesCoder → pickle), and
one frame pipeline on the PortableRunner beside the in-process runner.

    python benchmarks/coders.py            # a 1024x768 image, a 131,072-row batch, a join

What a portable runner (Flink, Dataflow) pays at every stage boundary is one encode and one
decode per element; the pipeline timing shows the fixed cost of the job API path (pipeline
proto, job service, artifact staging) that LOOPBACK adds to each run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def coders(repeat: int) -> None:
    from apache_beam.coders import coders as beam_coders

    from mmbeam.testing.images import make_image
    from mmbeam.transforms import coders as mc

    fallback = beam_coders.FastPrimitivesCoder()
    rows = 131_072
    batch = pa.record_batch({"id": np.arange(rows), "s": [f"row{i}" for i in range(rows)],
                             "v": np.random.default_rng(0).random(rows)})
    cases = [("image 1024x768 RGB", make_image(1024, 768, seed=1), mc.NdarrayCoder()),
             (f"batch {rows:,} rows", batch, mc.ArrowBatchCoder())]
    for name, value, ours in cases:
        times = {}
        for label, coder in (("mmbeam", ours), ("Beam fallback (pickle)", fallback)):
            size = len(coder.encode(value))
            times[label] = _median(lambda c=coder, v=value: c.decode(c.encode(v)), repeat)
            print(f"{name:22s} {label:24s} {size / 1e6:6.2f} MB  "
                  f"encode+decode {times[label] * 1e3:7.2f} ms (median of {repeat})")
        ratio = times["Beam fallback (pickle)"] / times["mmbeam"]
        print(f"{'':22s} fallback / mmbeam: {ratio:.1f}x")


def pipelines(repeat: int) -> None:
    from apache_beam.runners.portability.portable_runner import PortableRunner

    import mmbeam.frame as mf
    from mmbeam.frame import context

    folder = tempfile.mkdtemp(prefix="mmbeam-bench-")
    n = 200_000
    pq.write_table(pa.table({"id": np.arange(n), "v": np.arange(n) * 0.5}), f"{folder}/a.pq")
    pq.write_table(pa.table({"id": np.arange(0, n, 4), "g": np.arange(0, n, 4) % 97}),
                   f"{folder}/b.pq")

    def run():
        a, b = mf.read_parquet(f"{folder}/a.pq"), mf.read_parquet(f"{folder}/b.pq")
        return a.join(b, on="id").groupby("g").agg(mf.col("v").sum().alias("s")).to_arrow()

    results = {}
    for name, setup in (("in-process FnApiRunner", context.set_runner_local),
                        ("PortableRunner embed+LOOPBACK", lambda: context.set_runner(
                            PortableRunner, "portable", job_endpoint="embed",
                            environment_type="LOOPBACK"))):
        setup()
        results[name] = _median(run, repeat)
        print(f"join {n:,} x {n // 4:,} + group-by  {name:30s} {results[name]:.2f} s "
              f"(median of {repeat})")
    context.set_runner_local()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    coders(args.repeat)
    pipelines(max(1, args.repeat // 2))


if __name__ == "__main__":
    main()
