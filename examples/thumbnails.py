"""Make thumbnails of sample images served over HTTP, with the raw Beam transforms.

Generates photo-like sample images, serves them from a loopback HTTP server (plus two broken
URLs, to show failure handling), then runs download → decode → resize → encode → upload on the
in-process Beam runner and prints what it did. Runs offline:

    python examples/thumbnails.py --count 48 --size 256 --out out/thumbnails
"""

from __future__ import annotations

import argparse
import os
import time

import mmbeam  # noqa: F401 - before Beam, whose import-time warnings it filters

# isort: split
import apache_beam as beam

from mmbeam import transforms as mt
from mmbeam.testing import FaultServer, sample_images
from mmbeam.testing.collect import run_collect


def build(urls: list[str], size: int, out: str):
    """The pipeline: keyed by file name so each thumbnail is named after its source."""

    def pipeline(p: beam.Pipeline):
        downloaded, failed_downloads = (
            p
            | "Urls" >> beam.Create(urls)
            | "KeyByName" >> beam.Map(lambda url: (os.path.basename(url), url))
            | mt.Download(max_connections=16, retries=1, keyed=True).with_exception_handling()
        )
        decoded, failed_decodes = downloaded | mt.DecodeImage(
            min_size=(size, size), keyed=True
        ).with_exception_handling()
        thumbs, failed_uploads = (
            decoded
            | mt.ResizeImage(size, size, mode="fit", keyed=True)
            | mt.EncodeImage("JPEG", quality=85, keyed=True)
            | mt.Upload(out, keyed=True).with_exception_handling()
        )
        failed = (failed_downloads, failed_decodes, failed_uploads) | beam.Flatten()
        return {"written": thumbs, "failed": failed}

    return pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48, help="sample images to generate")
    parser.add_argument("--size", type=int, default=256, help="thumbnail box, in pixels")
    parser.add_argument("--out", default="out/thumbnails", help="folder to write thumbnails to")
    args = parser.parse_args()

    images = sample_images(args.count, min_size=400, max_size=2000, seed=7)
    with FaultServer() as server:
        urls = [server.add(name, data) for name, data in images.items()]
        urls += [server.url("status/404"), server.url("files/not-an-image.jpg")]
        server.add("not-an-image.jpg", b"<html>this is not a JPEG</html>")

        start = time.perf_counter()
        run = run_collect(build(urls, args.size, os.path.abspath(args.out)))
        seconds = time.perf_counter() - start

    written, failed = run.outputs["written"], run.outputs["failed"]
    megabytes = sum(len(b) for b in images.values()) / 1e6
    print(f"mmbeam thumbnails: {len(urls)} URLs in {seconds:.2f} s on the in-process Beam runner")
    print(f"  downloaded  {run.counter('Download', 'succeeded')} images ({megabytes:.1f} MB)")
    print(f"  wrote       {len(written)} thumbnails (fit in {args.size}x{args.size}) to {args.out}")
    for key, path in sorted(written)[:3]:
        print(f"    {key} -> {path}")
    print(f"  failed      {len(failed)} elements, each with its stage and cause:")
    for record in failed:
        print(f"    [{record.stage}] {record.error}")
    expected_failures = 2
    if len(written) != len(images) or len(failed) != expected_failures:
        raise SystemExit("unexpected result: some images were neither written nor reported")


if __name__ == "__main__":
    main()
