"""Per-image CPU cost of the thumbnail kernels, stage by stage, on one thread.

For every image of a corpus: decode (for a 256x256 box), resize to 256x256, encode JPEG, write
the file. Contenders, interleaved round by round (the order rotates) so machine load hits all
alike: ``script`` (the steps of the hand-written script's kernel, ``contenders._thumbnail``:
OpenCV in BGR), ``mmbeam`` (``decode_image``, ``resize_image``, ``encode_image``, the atomic
local write) and, with ``--baseline REV``, the same mmbeam kernels as they were at git revision
REV. Prints the median over ``--repeat`` rounds of milliseconds per image.

    python benchmarks/kernels.py --corpus web --repeat 5 --baseline main
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders  # noqa: E402
from corpus import CORPORA, pool  # noqa: E402

from mmbeam.ops import decode, encode, resize, store  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = (256, 256)
STAGES = ("decode", "resize", "encode", "write")
#: the hand-written script's kernel, step by step (``contenders._thumbnail`` chains them)
SCRIPT = {
    "decode": contenders.script_decode,
    "resize": contenders.script_resize,
    "encode": contenders.script_encode,
    "write": contenders.script_write,
}


def mmbeam_kernels(decode_mod, resize_mod, encode_mod, store_mod) -> dict:
    """The four stages as mmbeam's modules (current or loaded from a revision) run them."""
    return {
        "decode": lambda data: decode_mod.decode_image(data, min_size=SIZE),
        "resize": lambda pixels: resize_mod.resize_image(pixels, *SIZE),
        "encode": lambda pixels: encode_mod.encode_image(pixels, "JPEG"),
        "write": store_mod._write_local_atomic,
    }


def module_at(revision: str, name: str) -> types.ModuleType:
    """``mmbeam/ops/<name>.py`` as it was at ``revision`` (its imports resolve to today's)."""
    relpath = f"mmbeam/ops/{name}.py"
    source = subprocess.run(["git", "show", f"{revision}:{relpath}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"{name}_at_{revision}")
    exec(compile(source, f"{revision}:{relpath}", "exec"), module.__dict__)  # noqa: S102
    return module


def run_round(kernels: dict, images: list[bytes], folder: str) -> tuple[dict, Counter]:
    """Seconds per image for each stage over all images, and the decoded sizes."""
    seconds = {}
    start = time.perf_counter()
    decoded = [kernels["decode"](data) for data in images]
    seconds["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    small = [kernels["resize"](pixels) for pixels in decoded]
    seconds["resize"] = time.perf_counter() - start
    start = time.perf_counter()
    files = [kernels["encode"](pixels) for pixels in small]
    seconds["encode"] = time.perf_counter() - start
    paths = [f"{folder}/{i:05d}.jpg" for i in range(len(files))]
    start = time.perf_counter()
    for path, data in zip(paths, files):
        kernels["write"](path, data)
    seconds["write"] = time.perf_counter() - start
    sizes = Counter(f"{p.shape[1]}x{p.shape[0]}" for p in decoded)
    return {k: v / len(images) for k, v in seconds.items()}, sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="web")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians are printed")
    parser.add_argument("--baseline", help="a git revision whose mmbeam kernels also run")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    images = pool(args.corpus, log=print)
    contenders = {"script": SCRIPT, "mmbeam": mmbeam_kernels(decode, resize, encode, store)}
    if args.baseline:
        old = [module_at(args.baseline, name) for name in ("decode", "resize", "encode", "store")]
        contenders[f"mmbeam@{args.baseline}"] = mmbeam_kernels(*old)
    times = {name: {stage: [] for stage in STAGES} for name in contenders}
    sizes = {}
    names = list(contenders)
    with tempfile.TemporaryDirectory(prefix="mmbeam-kernels-") as tmp:
        for r in range(args.repeat):
            for name in names[r % len(names):] + names[: r % len(names)]:
                folder = f"{tmp}/{name}-{r}"
                Path(folder).mkdir()
                seconds, sizes[name] = run_round(contenders[name], images, folder)
                for stage, value in seconds.items():
                    times[name][stage].append(value)
    print(f"{len(images)} {args.corpus} images, {args.repeat} rounds, one thread: "
          "median ms per image")
    print(f"{'contender':<22}" + "".join(f"{s:>9}" for s in STAGES) + f"{'total':>9}"
          "  decoded sizes (most common)")
    for name in names:
        medians = [statistics.median(times[name][s]) * 1e3 for s in STAGES]
        common = ", ".join(f"{k} x{v}" for k, v in sizes[name].most_common(3))
        print(f"{name:<22}" + "".join(f"{m:>9.3f}" for m in medians) + f"{sum(medians):>9.3f}"
              f"  {common}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
