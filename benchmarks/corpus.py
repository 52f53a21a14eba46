"""Deterministic benchmark corpora: "camera" (up to 12 MP, 1-3 MB JPEGs) and "web" (<=1024 px,
50-150 KB JPEGs).

Encoding thousands of 12 MP photos would take longer than the benchmark, so each corpus is a small
pool of distinct images (cached under ``benchmarks/.corpus/<name>-pool<k>/``) served under many
names: ``camera_00000.jpg`` is pool image ``0 % k`` and so on. Every name costs the same download
and decode work as a distinct file would.

    python benchmarks/corpus.py camera --count 1024    # build (or reuse) the pool, print stats
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mmbeam.testing import encode_sample, make_image

ROOT = Path(__file__).resolve().parent / ".corpus"


@dataclass(frozen=True)
class Spec:
    """How one corpus looks: the sizes it cycles through, JPEG quality, file-size range."""

    name: str
    sizes: tuple[tuple[int, int], ...]
    quality: int
    min_bytes: int
    max_bytes: int
    pool: int


CORPORA = {
    "camera": Spec(
        "camera",
        sizes=((4032, 3024), (3024, 4032), (4000, 3000), (3264, 2448), (2448, 3264),
               (2592, 1944), (1920, 1080), (4032, 2268)),
        quality=92, min_bytes=1_000_000, max_bytes=3_000_000, pool=32,
    ),
    "web": Spec(
        "web",
        sizes=((1024, 768), (768, 1024), (1024, 683), (800, 600), (640, 480), (1024, 1024),
               (960, 640), (512, 512)),
        quality=85, min_bytes=50_000, max_bytes=150_000, pool=64,
    ),
}


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """make_image's smooth scene (built at half size for speed) plus mid-scale texture."""
    rng = np.random.default_rng(seed)
    base = make_image(max(1, width // 2), max(1, height // 2), seed=seed)
    base = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    small = rng.normal(0.0, 1.0, (max(1, height // 6), max(1, width // 6), 3)).astype(np.float32)
    texture = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return base + 6.0 * texture


def _encode_to_size(photo: np.ndarray, spec: Spec, target: int, seed: int) -> bytes:
    """Add fine noise, searching its strength so the JPEG lands near ``target`` bytes."""
    grain = np.random.default_rng(seed).normal(0.0, 1.0, photo.shape).astype(np.float32)
    lo, hi, sigma = 0.0, 32.0, 6.0
    best: bytes | None = None
    for _ in range(8):
        pixels = np.clip(photo + sigma * grain, 0, 255).astype(np.uint8)
        data = encode_sample(pixels, "JPEG", quality=spec.quality)
        if best is None or abs(len(data) - target) < abs(len(best) - target):
            best = data
        if abs(len(data) - target) < 0.1 * target:
            break
        lo, hi = (sigma, hi) if len(data) < target else (lo, sigma)
        sigma = (lo + hi) / 2
    assert best is not None
    return best


def pool(name: str, root: Path = ROOT, log=None) -> list[bytes]:
    """The distinct images of corpus ``name``, generated once and cached on disk."""
    spec = CORPORA[name]
    folder = root / f"{name}-pool{spec.pool}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(spec.pool):
        path = folder / f"{name}_{i:03d}.jpg"
        if not path.exists():
            width, height = spec.sizes[i % len(spec.sizes)]
            rng = np.random.default_rng(_seed(name, i))
            target = int(rng.uniform(spec.min_bytes * 1.2, spec.max_bytes * 0.85))
            start = time.perf_counter()
            data = _encode_to_size(_photo(width, height, _seed(name, i, "scene")), spec, target,
                                   _seed(name, i, "grain"))
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            if log:
                log(f"  {path.name}: {width}x{height} {len(data) / 1e6:.2f} MB "
                    f"({time.perf_counter() - start:.1f} s)")
        out.append(path.read_bytes())
    return out


def corpus(name: str, count: int, root: Path = ROOT, log=None) -> dict[str, bytes]:
    """``count`` file names → JPEG bytes for corpus ``name`` (pool images reused by name)."""
    if name not in CORPORA:
        raise SystemExit(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}")
    images = pool(name, root, log)
    return {f"{name}_{i:05d}.jpg": images[i % len(images)] for i in range(count)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(CORPORA))
    parser.add_argument("--count", type=int, default=256)
    args = parser.parse_args(argv)
    files = corpus(args.name, args.count, log=print)
    sizes = [len(b) for b in files.values()]
    spec = CORPORA[args.name]
    ok = all(spec.min_bytes <= s <= spec.max_bytes for s in sizes)
    print(f"{args.name}: {len(files)} names over {spec.pool} distinct images, "
          f"{sum(sizes) / 1e6:.0f} MB served; file size min {min(sizes) / 1e3:.0f} KB, "
          f"median {statistics.median(sizes) / 1e3:.0f} KB, max {max(sizes) / 1e3:.0f} KB "
          f"({'within' if ok else 'OUTSIDE'} "
          f"{spec.min_bytes / 1e3:.0f}-{spec.max_bytes / 1e3:.0f} KB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
