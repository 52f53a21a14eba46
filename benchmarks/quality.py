"""Output quality of reduced-size decoding: PSNR against a full decode, same resize.

For each camera image: ``decode_image(data, min_size=(256, 256))`` (JPEG DCT scaling) then
``resize_image`` to 256x256, against a full-size ``decode_image(data)`` then the same resize.
PASS when every image is at least 30 dB.

    python benchmarks/quality.py --count 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import CORPORA, pool  # noqa: E402

from mmbeam.ops.decode import decode_image  # noqa: E402
from mmbeam.ops.resize import resize_image  # noqa: E402

THRESHOLD_DB = 30.0
SIZE = (256, 256)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def compare(data: bytes, size: tuple[int, int] = SIZE) -> tuple[float, tuple[int, int]]:
    """PSNR of reduced-size decode + resize vs full decode + resize; also the reduced size."""
    reduced = decode_image(data, min_size=size)
    full = decode_image(data)
    a = resize_image(reduced, *size)
    b = resize_image(full, *size)
    return psnr(a, b), (reduced.shape[1], reduced.shape[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="camera")
    parser.add_argument("--count", type=int, default=32, help="distinct images to compare")
    args = parser.parse_args(argv)
    images = pool(args.corpus, log=print)[: args.count]
    scores = []
    for i, data in enumerate(images):
        score, reduced = compare(data)
        scores.append(score)
        print(f"  {args.corpus}_{i:03d}: decoded at {reduced[0]}x{reduced[1]}, {score:.1f} dB")
    ok = min(scores) >= THRESHOLD_DB
    print(f"{len(scores)} {args.corpus} images: PSNR min {min(scores):.1f} dB, "
          f"median {statistics.median(scores):.1f} dB (threshold {THRESHOLD_DB:g} dB) "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
