"""Frame benchmark: string concatenation over Parquet rows, and an inner join, beside pandas.

    python benchmarks/frame.py                 # 1,000,000 rows; join 1,000,000 x 100,000
    python benchmarks/frame.py --rows 200000   # smaller

Targets (issue #3): projection >= 1,000,000 rows/s; join time <= 3x pandas' time. Both sides
read the same Parquet file (projection) or start from the same in-memory tables (join: Arrow
tables for mmbeam, the same data as pandas DataFrames for pandas); mmbeam's times include
building and optimizing the plan. Each contender runs once to warm up, then ``--repeat`` times
round-robin; the median is reported. mmbeam runs on the local runner twice: the default path
(a purely tabular plan runs the stages' Arrow operators in this process) and forced through a
Beam pipeline (``in_process=False``, what every non-local runner does), for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _medians(contenders: dict, repeat: int) -> tuple[dict, dict]:
    """Median seconds and last output per contender; one warm-up run each, then round-robin."""
    times: dict = {name: [] for name in contenders}
    outs: dict = {name: fn() for name, fn in contenders.items()}
    for _ in range(repeat):
        for name, fn in contenders.items():
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}, outs


def _beam_path(fn):
    """``fn`` run with the frame forced through a Beam pipeline on the local runner."""
    from mmbeam.frame import context

    def run():
        context.set_execution_config(in_process=False)
        try:
            return fn()
        finally:
            context.set_execution_config(in_process=None)

    return run


def bench_concat(rows: int, folder: str, repeat: int) -> dict:
    import pandas as pd

    import mmbeam.frame as mf
    from mmbeam.frame import col

    rng = np.random.default_rng(0)
    first = np.array(["Ernesto", "James", "Wolfgang", "Shandra", "Zaya", "Ann"])[
        rng.integers(0, 6, rows)]
    last = np.array(["Evergreen", "Jale", "Winter", "Shamas", "Zaphora", "Lee"])[
        rng.integers(0, 6, rows)]
    path = os.path.join(folder, "people.parquet")
    pq.write_table(pa.table({"first_name": first, "last_name": last,
                             "age": rng.integers(0, 90, rows)}), path, row_group_size=131_072)

    def run_mmbeam():
        df = mf.read_parquet(path)
        df = df.with_column("full_name", col("first_name") + " " + col("last_name"))
        return df.select("full_name", "age").to_arrow()

    def run_pandas():
        df = pd.read_parquet(path)
        df["full_name"] = df["first_name"] + " " + df["last_name"]
        return df[["full_name", "age"]]

    t, out = _medians({"mmbeam": run_mmbeam, "mmbeam_beam": _beam_path(run_mmbeam),
                       "pandas": run_pandas}, repeat)
    for name in ("mmbeam", "mmbeam_beam"):
        assert out[name].num_rows == len(out["pandas"]) == rows
        assert out[name].column("full_name")[0].as_py() == out["pandas"]["full_name"].iloc[0]
    return {"rows": rows, "mmbeam_s": t["mmbeam"], "beam_path_s": t["mmbeam_beam"],
            "pandas_s": t["pandas"], "mmbeam_rows_per_s": rows / t["mmbeam"],
            "beam_path_rows_per_s": rows / t["mmbeam_beam"],
            "pandas_rows_per_s": rows / t["pandas"]}


def bench_join(left_rows: int, right_rows: int, repeat: int) -> dict:
    import mmbeam.frame as mf

    rng = np.random.default_rng(1)
    left = pa.table({"key": rng.integers(0, right_rows, left_rows),
                     "lv": rng.normal(size=left_rows)})
    right = pa.table({"key": np.arange(right_rows), "name": [f"n{i}" for i in range(right_rows)]})
    lpd, rpd = left.to_pandas(), right.to_pandas()
    lf, rf = mf.from_arrow(left), mf.from_arrow(right)

    def run_mmbeam():
        return lf.join(rf, on="key").to_arrow()

    def run_pandas():
        return lpd.merge(rpd, on="key", how="inner")

    t, out = _medians({"mmbeam": run_mmbeam, "mmbeam_beam": _beam_path(run_mmbeam),
                       "pandas": run_pandas}, repeat)
    assert out["mmbeam"].num_rows == out["mmbeam_beam"].num_rows == len(out["pandas"])
    return {"left": left_rows, "right": right_rows, "rows_out": out["mmbeam"].num_rows,
            "mmbeam_s": t["mmbeam"], "beam_path_s": t["mmbeam_beam"], "pandas_s": t["pandas"],
            "ratio": t["mmbeam"] / t["pandas"], "beam_path_ratio": t["mmbeam_beam"] / t["pandas"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--right-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        c = bench_concat(args.rows, folder, args.repeat)
    print(f"concat  {c['rows']:>9,} rows from Parquet (median of {args.repeat}): mmbeam "
          f"{c['mmbeam_s']:.3f}s ({c['mmbeam_rows_per_s']:,.0f} rows/s) | via Beam "
          f"{c['beam_path_s']:.3f}s ({c['beam_path_rows_per_s']:,.0f} rows/s) | pandas "
          f"{c['pandas_s']:.3f}s ({c['pandas_rows_per_s']:,.0f} rows/s)  target >= 1,000,000 "
          f"rows/s: {'PASS' if c['mmbeam_rows_per_s'] >= 1e6 else 'MISS'}")
    j = bench_join(args.rows, args.right_rows, args.repeat)
    print(f"join    {j['left']:,} x {j['right']:,} -> {j['rows_out']:,} rows (median of "
          f"{args.repeat}): mmbeam {j['mmbeam_s']:.3f}s | via Beam {j['beam_path_s']:.3f}s "
          f"({j['beam_path_ratio']:.1f}x) | pandas {j['pandas_s']:.3f}s | {j['ratio']:.2f}x "
          f"pandas  target <= 3x: {'PASS' if j['ratio'] <= 3 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
