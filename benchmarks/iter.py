"""Training hand-off benchmark: ``iter_torch_batches`` against a hand-written DataLoader.

Serves the "web" corpus (corpus.py) from a loopback FaultServer with ``--latency`` per request.
Each contender runs in a fresh subprocess over the same URLs and turns them into batches of
uint8 224x224x3 tensors:

- ``mmbeam``: ``from_pydict({"url": urls}).with_column("image", download → decode → resize 224)``
  then ``iter_torch_batches(batch_size)``;
- ``dataloader``: a map-style torch ``Dataset`` that fetches one URL (one kept-alive connection
  per worker), decodes with Pillow and resizes in ``__getitem__``, behind
  ``DataLoader(num_workers=2)``: each worker waits out every request's latency.

Reported per run: images/s and the time to the first batch (both timed after the imports, torch
and mmbeam on both sides, which are reported apart), peak RSS of the child. The mmbeam
contender also runs at ``--flat-count`` images to check that memory stays flat (peak RSS within
15% between the two sizes). Targets (issue 16): ≥ 3× the DataLoader's images/s.

With ``--runner dask`` the mmbeam contender runs on mmbeam's Dask runner (a LocalCluster of 2
worker processes started in the child, its start inside the timed work): the batches stream out
of the run as its tasks finish, so the first batch comes well before the end, and the driver's
peak RSS stays flat between the two sizes (the workers' memory is theirs) once the frame's pieces
stop growing: a table is cut into eighths of at most 1024 rows, so compare from 8192 images on.

    python benchmarks/iter.py --count 8192 --latency 0.05
    python benchmarks/iter.py --count 8192 --baseline-count 2048   # a shorter baseline run
    python benchmarks/iter.py --runner dask --count 16384 --flat-count 8192
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import corpus  # noqa: E402
from images import _peak_rss_kb, warm_up  # noqa: E402

SIZE = 224
RATIO_TARGET = 3.0
FLAT_TARGET = 0.15


# --------------------------------------------------------------------------- contenders
def run_mmbeam(urls: list[str], batch_size: int, runner: str = "local") \
        -> tuple[int, float, float]:
    import torch  # noqa: F401 - imported by both contenders before their clocks start

    import mmbeam
    from mmbeam import col
    from mmbeam.frame import context

    start = time.perf_counter()
    cluster = None
    if runner == "dask":
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
        context.set_runner_dask(cluster.scheduler_address)
    frame = mmbeam.from_pydict({"url": urls}).with_column(
        "image", col("url").url.download().image.decode("RGB").image.resize(SIZE, SIZE))
    first, rows = None, 0
    for batch in frame.select("image").iter_torch_batches(batch_size=batch_size):
        assert tuple(batch["image"].shape[1:]) == (SIZE, SIZE, 3)
        if first is None:
            first = time.perf_counter() - start
        rows += batch["image"].shape[0]
    work = time.perf_counter() - start
    if cluster is not None:  # its workers must not outlive this process
        cluster.close()
    return rows, first, work


class _UrlDataset:
    """The hand-written loader's Dataset: fetch, decode, resize per item (torch-style)."""

    def __init__(self, urls: list[str]):
        self.urls = urls
        self.client = None

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from contenders import _Client
        from PIL import Image

        if self.client is None:  # one kept-alive connection per worker process
            self.client = _Client()
        with Image.open(io.BytesIO(self.client.get(self.urls[i]))) as img:
            pixels = np.asarray(img.convert("RGB").resize((SIZE, SIZE)))
        return torch.from_numpy(pixels.copy())


def run_dataloader(urls: list[str], batch_size: int, runner: str = "local") \
        -> tuple[int, float, float]:
    from torch.utils.data import DataLoader

    import mmbeam  # noqa: F401 - the same imports as the mmbeam contender

    start = time.perf_counter()
    loader = DataLoader(_UrlDataset(urls), batch_size=batch_size, num_workers=2)
    first, rows = None, 0
    for batch in loader:
        assert tuple(batch.shape[1:]) == (SIZE, SIZE, 3)
        if first is None:
            first = time.perf_counter() - start
        rows += batch.shape[0]
    return rows, first, time.perf_counter() - start


CONTENDERS = {"mmbeam": run_mmbeam, "dataloader": run_dataloader}


# --------------------------------------------------------------------------- processes
def child(manifest_path: str) -> int:
    """One contender in this fresh process; its clock starts after the imports (timed apart)."""
    manifest = json.loads(Path(manifest_path).read_text())
    start = time.perf_counter()
    rows, first, work = CONTENDERS[manifest["contender"]](
        manifest["urls"], manifest["batch_size"], manifest["runner"])
    inside = time.perf_counter() - start
    print("RESULT " + json.dumps({"rows": rows, "first_s": first, "work_s": work,
                                  "inside_s": inside,
                                  "peak_kb": _peak_rss_kb()}))
    sys.stdout.flush()
    os._exit(0)


def run_one(name: str, urls: list[str], batch_size: int, server, runner: str = "local") -> dict:
    manifest = Path(f"/tmp/mmbeam-iter-{os.getpid()}-{name}.json")
    manifest.write_text(json.dumps({"contender": name, "urls": urls, "batch_size": batch_size,
                                    "runner": runner}))
    server.reset_stats()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", str(manifest)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    manifest.unlink(missing_ok=True)
    row = {"contender": name, "images": len(urls), "seconds": wall}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        row["error"] = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return row
    got = json.loads(line[len("RESULT "):])
    row.update(rows=got["rows"], first_batch_s=got["first_s"], inside_s=got["inside_s"],
               imports_s=got["inside_s"] - got["work_s"], rss_mb=got["peak_kb"] * 1024 / 1e6,
               ips=len(urls) / got["work_s"])
    if got["rows"] != len(urls):
        row["error"] = f"{got['rows']} rows for {len(urls)} images"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=8192)
    parser.add_argument("--baseline-count", type=int, default=None,
                        help="images for the DataLoader (and the mmbeam run it is compared "
                             "with); default: --count")
    parser.add_argument("--flat-count", type=int, default=2048)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runner", choices=("local", "dask"), default="local",
                        help="where the mmbeam contender runs (dask: a LocalCluster)")
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)

    from mmbeam.testing import FaultServer

    base = args.baseline_count or args.count
    print(f"web corpus: {args.count} images, {args.latency * 1000:g} ms latency, "
          f"{os.cpu_count()} CPUs, batch {args.batch_size}, mmbeam on {args.runner}", flush=True)
    files = corpus("web", args.count)
    runs = []
    with FaultServer(latency_s=args.latency) as srv:
        urls = [srv.add(name, data) for name, data in files.items()]
        warm_up(urls[:256])
        jobs = [("mmbeam", args.count), ("mmbeam", args.flat_count), ("dataloader", base)]
        if base not in (args.count, args.flat_count):
            jobs.insert(2, ("mmbeam", base))
        for name, n in jobs:
            row = run_one(name, urls[:n], args.batch_size, srv, args.runner)
            runs.append(row)
            note = row.get("error") or (
                f"{row['ips']:8.1f} images/s, first batch {row['first_batch_s']:.2f} s "
                f"(imports {row['imports_s']:.1f} s before), "
                f"peak RSS {row['rss_mb']:.0f} MB")
            print(f"  {name:<11} {n:>5} images  {row['seconds']:7.1f} s  {note}", flush=True)
    status = 0
    ok = {(r["contender"], r["images"]): r for r in runs if "error" not in r}
    mine, theirs = ok.get(("mmbeam", base)), ok.get(("dataloader", base))
    if mine and theirs:
        ratio = mine["ips"] / theirs["ips"]
        verdict = "PASS" if ratio >= RATIO_TARGET else "FAIL"
        status |= verdict == "FAIL"
        print(f"\nimages/s at {base}: mmbeam {mine['ips']:.1f} vs DataLoader "
              f"{theirs['ips']:.1f}: {ratio:.2f}x (target >= {RATIO_TARGET:g}x) {verdict}")
        print(f"time to first batch: mmbeam {mine['first_batch_s']:.2f} s, DataLoader "
              f"{theirs['first_batch_s']:.2f} s")
    small, big = ok.get(("mmbeam", args.flat_count)), ok.get(("mmbeam", args.count))
    if small and big:
        growth = big["rss_mb"] / small["rss_mb"] - 1
        verdict = "PASS" if growth <= FLAT_TARGET else "FAIL"
        status |= verdict == "FAIL"
        print(f"peak RSS {args.flat_count} -> {args.count} images: {small['rss_mb']:.0f} MB -> "
              f"{big['rss_mb']:.0f} MB: {growth:+.1%} (target <= +{FLAT_TARGET:.0%}) {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency_s": args.latency, "runner": args.runner,
                                               "runs": runs}, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
