"""Model UDF benchmark: EfficientNet-Lite0 through ``@mmbeam.udf`` beside the bare model.

    python benchmarks/model.py                  # 64 images, batches of 16, 3 repeats
    python benchmarks/model.py --count 256 --batch-size 32 --repeat 5

Target (issue #5): the batched UDF's images/s >= 0.9x the bare model called in a loop on the same
batches, in the same run. Both classify the same decoded photos (scikit-image samples, cycled)
with the same ``ImageClassifier.classify`` (numpy/OpenCV preprocessing + forward + softmax +
labels). The model is loaded once beforehand by each side (a warm-up run; the UDF keeps its
per-process instance between runs), so the times are inference plus, for the UDF, the Beam
pipeline (in-process runner), Arrow conversion and batching. Contenders run round-robin (the
fixed pair alternates which goes first); the median of the repeats is reported.

- ``udf_fixed``: ``batch_size=--batch-size``; the bare loop runs the same batch size.
- ``udf_auto``: ``batch_size=None`` (autotuned); the bare loop replays the batch sizes the UDF
  actually used in that run.
- ``udf_noop``: the same pipeline over the same frame with a UDF that returns a constant: the
  fixed cost of a run (plan, Beam pipeline start, batching, Arrow in and out) without the model.
  Run a larger ``--count`` to see that it does not grow with the images.

Both sides run in this process's main thread with the same torch threads (printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import mmbeam
from mmbeam import DataType, col
from mmbeam.ops.classify import ImageClassifier
from mmbeam.transforms import shared_model as sm

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "moon", "page")


def photos(count: int) -> list[np.ndarray]:
    from skimage import data

    pool = [np.asarray(getattr(data, name)()) for name in PHOTOS]
    pool = [np.stack([p] * 3, axis=-1) if p.ndim == 2 else p[..., :3] for p in pool]
    # distinct copies: the UDF reads ``count`` different images from the frame's Arrow buffers,
    # so the bare loop must not reread eight cache-warm arrays
    return [pool[i % len(pool)].copy() for i in range(count)]


def make_udf(batch_size: int | None):
    @mmbeam.udf(return_dtype=DataType.fixed_size_list(DataType.string(), 2),
                batch_size=batch_size)
    class Classify:
        def __init__(self):
            self.classifier = ImageClassifier()
            self.sizes: list[int] = []

        def __call__(self, images):
            self.sizes.append(len(images))
            return self.classifier.classify(images.to_pylist())

    return Classify


@mmbeam.udf(return_dtype=DataType.fixed_size_list(DataType.string(), 2))
def noop(images):
    return [["none", "0.0%"]] * len(images)


def run_noop(frame) -> float:
    start = time.perf_counter()
    frame.with_column("label", noop(col("image"))).select("label").to_pydict()
    return time.perf_counter() - start


def run_udf(udf, frame) -> tuple[float, list, list[int]]:
    for instance in sm.instances(udf.token):
        instance.sizes.clear()
    start = time.perf_counter()
    out = frame.with_column("label", udf(col("image"))).select("label").to_pydict()["label"]
    seconds = time.perf_counter() - start
    (instance,) = sm.instances(udf.token)
    return seconds, out, list(instance.sizes)


def run_bare(classifier: ImageClassifier, images: list, sizes: list[int]) -> tuple[float, list]:
    out = []
    start = time.perf_counter()
    i = 0
    for n in sizes:
        out.extend(classifier.classify(images[i:i + n]))
        i += n
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    images = photos(args.count)
    frame = mmbeam.from_pydict({"image": images})
    classifier = ImageClassifier()
    fixed, auto = make_udf(args.batch_size), make_udf(None)
    fixed_sizes = [min(args.batch_size, args.count - i)
                   for i in range(0, args.count, args.batch_size)]
    # warm-up: loads each UDF's model once in this process, and the bare model's kernels
    run_udf(fixed, frame)
    run_udf(auto, frame)
    run_bare(classifier, images[:args.batch_size], [args.batch_size])
    run_noop(frame)

    times: dict[str, list[float]] = {k: [] for k in ("udf_fixed", "bare_fixed", "udf_auto",
                                                     "bare_auto", "udf_noop")}
    auto_sizes: list[int] = []
    for r in range(args.repeat):
        if r % 2:  # alternate which side goes first, so drifting load hits both alike
            t, bare_out = run_bare(classifier, images, fixed_sizes)
            times["bare_fixed"].append(t)
        t, out_fixed, sizes = run_udf(fixed, frame)
        assert sizes == fixed_sizes, sizes
        times["udf_fixed"].append(t)
        if not r % 2:
            t, bare_out = run_bare(classifier, images, fixed_sizes)
            times["bare_fixed"].append(t)
        assert bare_out == out_fixed
        t, out_auto, auto_sizes = run_udf(auto, frame)
        times["udf_auto"].append(t)
        t, bare_out = run_bare(classifier, images, auto_sizes)
        times["bare_auto"].append(t)
        assert bare_out == out_auto
        times["udf_noop"].append(run_noop(frame))

    med = {k: statistics.median(v) for k, v in times.items()}
    import torch

    print(f"{args.count} images, EfficientNet-Lite0 on CPU, median of {args.repeat} "
          f"(model loaded beforehand by both sides); torch threads "
          f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
    print(f"{'contender':<12} {'median s':>9} {'images/s':>9}  batches")
    rows = [("udf_fixed", fixed_sizes), ("bare_fixed", fixed_sizes), ("udf_auto", auto_sizes),
            ("bare_auto", auto_sizes)]
    for name, sizes in rows:
        shown = ",".join(map(str, sizes[:12])) + (",…" if len(sizes) > 12 else "")
        print(f"{name:<12} {med[name]:9.2f} {args.count / med[name]:9.1f}  {shown}")
    print(f"{'udf_noop':<12} {med['udf_noop']:9.2f} {'':>9}  (fixed cost of a run, no model)")
    for kind in ("fixed", "auto"):
        ratio = med[f"bare_{kind}"] / med[f"udf_{kind}"]
        verdict = "PASS" if ratio >= 0.9 else "FAIL"
        print(f"udf_{kind} / bare_{kind} throughput: {ratio:.2f}x  (target >= 0.9x: {verdict})")
        steady = med[f"bare_{kind}"] / max(med[f"udf_{kind}"] - med["udf_noop"], 1e-9)
        print(f"  without the no-op run's fixed cost: {steady:.2f}x")


if __name__ == "__main__":
    main()
