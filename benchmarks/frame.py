"""Frame benchmark: string concatenation over Parquet rows, and an inner join, beside pandas.

    python benchmarks/frame.py                 # 1,000,000 rows; join 1,000,000 x 100,000
    python benchmarks/frame.py --rows 200000   # smaller

Targets (issue #3): projection >= 1,000,000 rows/s; join time <= 3x pandas' time. Both sides
read the same Parquet file (projection) or start from the same in-memory Arrow tables (join);
times include mmbeam's pipeline construction and run on the local (in-process) Beam runner.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


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

    t_mm, out_mm = _best(run_mmbeam, repeat)
    t_pd, out_pd = _best(run_pandas, repeat)
    assert out_mm.num_rows == len(out_pd) == rows
    assert out_mm.column("full_name")[0].as_py() == out_pd["full_name"].iloc[0]
    return {"rows": rows, "mmbeam_s": t_mm, "pandas_s": t_pd, "mmbeam_rows_per_s": rows / t_mm,
            "pandas_rows_per_s": rows / t_pd}


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

    t_mm, out_mm = _best(run_mmbeam, repeat)
    t_pd, out_pd = _best(run_pandas, repeat)
    assert out_mm.num_rows == len(out_pd)
    return {"left": left_rows, "right": right_rows, "rows_out": out_mm.num_rows,
            "mmbeam_s": t_mm, "pandas_s": t_pd, "ratio": t_mm / t_pd}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--right-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        c = bench_concat(args.rows, folder, args.repeat)
    print(f"concat  {c['rows']:>9,} rows from Parquet: mmbeam {c['mmbeam_s']:.3f}s "
          f"({c['mmbeam_rows_per_s']:,.0f} rows/s) | pandas {c['pandas_s']:.3f}s "
          f"({c['pandas_rows_per_s']:,.0f} rows/s)  target >= 1,000,000 rows/s: "
          f"{'PASS' if c['mmbeam_rows_per_s'] >= 1e6 else 'MISS'}")
    j = bench_join(args.rows, args.right_rows, args.repeat)
    print(f"join    {j['left']:,} x {j['right']:,} -> {j['rows_out']:,} rows: mmbeam "
          f"{j['mmbeam_s']:.3f}s | pandas {j['pandas_s']:.3f}s | {j['ratio']:.2f}x pandas  "
          f"target <= 3x: {'PASS' if j['ratio'] <= 3 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
