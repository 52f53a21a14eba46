"""Image benchmark: download → decode → resize 256x256 → encode JPEG → write, seven ways.

Serves a corpus (see corpus.py) from a loopback FaultServer with ``--latency`` per request, then
runs each contender in a fresh subprocess on the same URLs: the parent times the subprocess
(interpreter start-up and imports included) and the child reports its own peak RSS. Every output
folder is checked (file count, 256x256 JPEGs) before a result counts.

    python benchmarks/images.py --corpus camera --count 1024 --latency 0.05
    python benchmarks/images.py --corpus web --count 4096 --contenders threads,mmbeam_transforms
    python benchmarks/images.py --corpus web --flat --contenders mmbeam_transforms
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contenders  # noqa: E402
from corpus import CORPORA, corpus  # noqa: E402

#: Targets of issue #4 on this 2-core machine (50 ms latency, start-up included).
TARGETS = {"camera": {"count": 1024, "ips": 80.0}, "web": {"count": 4096, "ips": 350.0}}
RATIO_TARGET = 0.9  # of the hand-written thread-pool script, same run
RSS_TARGET_MB = 400.0
FLAT_TARGET = 0.15  # peak RSS growth from 256 to 4,096 images
MMBEAM = ("mmbeam_transforms", "mmbeam_fused", "mmbeam_frame")


# --------------------------------------------------------------------------- child side
def child(manifest_path: str) -> int:
    """Run one contender (in this fresh process) and print its result as one JSON line."""
    manifest = json.loads(Path(manifest_path).read_text())
    fn = contenders.CONTENDERS[manifest["contender"]]
    start = time.perf_counter()
    rows = fn(manifest["names"], manifest["urls"], manifest["out"])
    inside = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"rows": rows, "inside_s": inside, "peak_kb": _peak_rss_kb(),
                                  "cpu_s": usage.ru_utime + usage.ru_stime}))
    sys.stdout.flush()
    os._exit(0)  # do not wait for stray non-daemon threads (Beam's, the I/O loop's)


def _peak_rss_kb() -> int:
    """This process's own peak RSS in KiB: VmHWM belongs to the address space made by exec,
    while ru_maxrss also counts the parent's pages the child saw between fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


# --------------------------------------------------------------------------- parent side
def run_one(name: str, names: list[str], urls: list[str], expect_files: int, server) -> dict:
    """One contender in a subprocess on ``urls``; returns its measured and verified result."""
    out = tempfile.mkdtemp(prefix=f"mmbeam-bench-{name}-")
    manifest = Path(out + ".json")
    manifest.write_text(json.dumps({"contender": name, "names": names, "urls": urls, "out": out}))
    server.reset_stats()
    before = _cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", str(manifest)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    row = {"contender": name, "images": len(urls), "seconds": wall,
           "peak_concurrency": server.peak_concurrency, "server_cpu_s": _cpu_seconds() - before}
    try:
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        got = json.loads(line[len("RESULT "):])
        row.update(inside_s=got["inside_s"], rss_mb=got["peak_kb"] * 1024 / 1e6,
                   cpu_s=got["cpu_s"], ips=len(urls) / wall)
        problem = verify(out, got["rows"], len(urls), expect_files)
    except StopIteration:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        problem = f"exit code {proc.returncode}, no result:\n{tail}"
    finally:
        shutil.rmtree(out, ignore_errors=True)
        manifest.unlink(missing_ok=True)
    if problem:
        row["error"] = problem
    return row


def _cpu_seconds() -> float:
    """CPU time of this process: the loopback server's threads, while a child runs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def verify(out: str, rows: int, images: int, expect_files: int) -> str | None:
    """None if ``out`` holds ``expect_files`` 256x256 JPEGs and ``rows == images``."""
    from PIL import Image

    if rows != images:
        return f"produced {rows} rows for {images} images"
    files = sorted(p for p in Path(out).rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) != expect_files:
        return f"wrote {len(files)} files, expected {expect_files}"
    for i, path in enumerate(files):
        with Image.open(path) as img:
            if img.format != "JPEG" or img.size != (256, 256):
                return f"{path.name} is {img.format} {img.size}, expected JPEG (256, 256)"
            if i % max(1, len(files) // 16) == 0:
                img.load()  # a full decode for a sample of files
    return None


def warm_up(urls: list[str], connections: int = 32) -> float:
    """Fetch some URLs once, so that the first contender does not pay for a cold server and
    cold loopback TCP state (the first ~256 requests of a fresh server are markedly slower)."""
    from concurrent.futures import ThreadPoolExecutor

    client = contenders._Client()
    start = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        for _ in pool.map(client.get, urls):
            pass
    return time.perf_counter() - start


def plan(args, names: list[str], corpus_files: dict[str, bytes], urls: list[str]):
    """(contender, names, urls, expected file count) for every contender that can run."""
    jobs, skipped = [], []
    for name in args.contenders:
        why = contenders.unavailable(name)
        if why:
            skipped.append((name, why))
            continue
        n = len(names)
        if name in contenders.SLOW and args.slow_count:
            n = min(n, args.slow_count)
        distinct = len({id(corpus_files[k]) for k in names[:n]})  # pool objects are shared
        expect = distinct if name in contenders.CONTENT_NAMED else n
        jobs.append((name, names[:n], urls[:n], expect))
    return jobs, skipped


def run_all(jobs, repeat: int, server, log) -> list[dict]:
    """Run the jobs ``repeat`` times round-robin; keep the median time and the largest RSS."""
    runs: dict[str, list[dict]] = {job[0]: [] for job in jobs}
    for r in range(repeat):
        for name, names, urls, expect in jobs:
            row = run_one(name, names, urls, expect, server)
            runs[name].append(row)
            note = row.get("error") or (f"{row['ips']:.1f} images/s, {row['rss_mb']:.0f} MB, "
                                        f"peak concurrency {row['peak_concurrency']}")
            log(f"  [{r + 1}/{repeat}] {name:<18} {len(urls):>5} images  {row['seconds']:7.2f} s"
                f"  {note}")
    results = []
    for rows in runs.values():
        good = [r for r in rows if "error" not in r]
        if not good:
            results.append(rows[0])
            continue
        best = dict(good[0])
        best["seconds"] = statistics.median(r["seconds"] for r in good)
        for key in ("inside_s", "cpu_s", "server_cpu_s"):
            best[key] = statistics.median(r[key] for r in good)
        best["ips"] = best["images"] / best["seconds"]
        best["rss_mb"] = max(r["rss_mb"] for r in good)
        best["runs"] = len(good)
        results.append(best)
    return results


def judge(results: list[dict], corpus_name: str, official: bool) -> None:
    """Add ``ratio`` (images/s over threads') and a verdict for the mmbeam rows."""
    threads = next((r for r in results if r["contender"] == "threads" and "ips" in r), None)
    target = TARGETS[corpus_name]["ips"]
    for r in results:
        if "ips" not in r:
            continue
        r["ratio"] = r["ips"] / threads["ips"] if threads else None
        if r["contender"] in MMBEAM:
            fails = []
            if r["ips"] < target:
                fails.append(f"<{target:g}/s")
            if r["ratio"] is not None and r["ratio"] < RATIO_TARGET:
                fails.append(f"<{RATIO_TARGET}x threads")
            if r["rss_mb"] >= RSS_TARGET_MB:
                fails.append(f">={RSS_TARGET_MB:g} MB")
            r["verdict"] = ("PASS" if not fails else "FAIL " + ", ".join(fails)) + (
                "" if official else " (unofficial size)")


def table(results: list[dict], skipped: list[tuple[str, str]]) -> str:
    head = (f"{'contender':<18} {'images':>6} {'seconds':>8} {'images/s':>9} {'peak RSS MB':>11}"
            f" {'x threads':>9} {'inside s':>8} {'cpu s':>6} {'srv cpu':>7}  target")
    lines = [head, "-" * len(head)]
    for r in results:
        if "ips" not in r:
            lines.append(f"{r['contender']:<18} {r['images']:>6}  ERROR {r['error']}")
            continue
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        lines.append(
            f"{r['contender']:<18} {r['images']:>6} {r['seconds']:>8.2f} {r['ips']:>9.1f}"
            f" {r['rss_mb']:>11.0f} {ratio:>9} {r['inside_s']:>8.2f} {r['cpu_s']:>6.1f}"
            f" {r['server_cpu_s']:>7.1f}  {r.get('verdict', '')}"
            + ("" if "error" not in r else f"  ERROR {r['error']}"))
    for name, why in skipped:
        lines.append(f"{name:<18} skipped: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="camera")
    parser.add_argument("--count", type=int, default=None, help="images (default: the target's)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--server-connections", type=int, default=None,
                        help="requests the server serves at once (default: unlimited)")
    parser.add_argument("--contenders", default=",".join(contenders.CONTENDERS),
                        help="comma-separated, from: " + ", ".join(contenders.CONTENDERS))
    parser.add_argument("--slow-count", type=int, default=256,
                        help="cap for the one-at-a-time contenders (naive, beam_map); 0 = none")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (median)")
    parser.add_argument("--flat", action="store_true",
                        help="peak RSS at --flat-counts images: flat-memory check")
    parser.add_argument("--flat-counts", default="256,4096")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contenders if c not in contenders.CONTENDERS]
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {list(contenders.CONTENDERS)}")
    if args.flat and args.contenders == list(contenders.CONTENDERS):
        args.contenders = ["mmbeam_transforms"]
    counts = ([int(c) for c in args.flat_counts.split(",")] if args.flat
              else [args.count or TARGETS[args.corpus]["count"]])

    from mmbeam.testing import FaultServer

    print(f"corpus {args.corpus}: generating/loading {max(counts)} images ...", flush=True)
    files = corpus(args.corpus, max(counts), log=print)
    report = {"corpus": args.corpus, "latency_s": args.latency, "cpus": os.cpu_count(),
              "server_connections": args.server_connections, "runs": []}
    with FaultServer(latency_s=args.latency, max_connections=args.server_connections) as srv:
        all_names = list(files)
        all_urls = [srv.add(name, files[name]) for name in all_names]
        took = warm_up(all_urls[:256])
        print(f"server warm-up: {min(256, len(all_urls))} requests in {took:.2f} s", flush=True)
        for count in counts:
            official = (count == TARGETS[args.corpus]["count"] and args.latency == 0.05
                        and not args.flat)
            print(f"\n{args.corpus} x {count}, {args.latency * 1000:g} ms latency, "
                  f"{os.cpu_count()} CPUs", flush=True)
            jobs, skipped = plan(args, all_names[:count], files, all_urls[:count])
            results = run_all(jobs, args.repeat, srv, lambda s: print(s, flush=True))
            judge(results, args.corpus, official)
            print(table(results, skipped), flush=True)
            report["runs"].append({"count": count, "results": results,
                                   "skipped": dict(skipped)})
    status = 0
    if args.flat and len(counts) >= 2:
        print(f"\nflat memory: peak RSS growth from {counts[0]} to {counts[-1]} images")
        first, last = report["runs"][0]["results"], report["runs"][-1]["results"]
        for a, b in zip(first, last):
            if "rss_mb" not in a or "rss_mb" not in b:
                continue
            growth = b["rss_mb"] / a["rss_mb"] - 1
            verdict = "PASS" if growth <= FLAT_TARGET else "FAIL"
            status |= verdict == "FAIL"
            print(f"  {a['contender']:<18} {a['rss_mb']:.0f} MB -> {b['rss_mb']:.0f} MB: "
                  f"{growth:+.1%} (target <= +{FLAT_TARGET:.0%}) {verdict}")
            report.setdefault("flat", {})[a["contender"]] = growth
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
