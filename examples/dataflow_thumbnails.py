"""Thumbnails of every image under a gs:// (or s3://, or local) glob, on any Beam runner.

Lists the images with the frame (``mmbeam.from_glob_path(...).to_pcollection``), then runs
download → decode → resize → encode → upload with the raw transforms, keyed by file name so
``<input>/cats/7.jpg`` becomes ``<output>/7.jpg``. Every image that fails (unreadable, not an
image, ...) is reported with its stage and cause in ``<output>/_failures.jsonl``; the written
thumbnails are listed in ``<output>/_manifest.txt``. Options the script does not know go to
Beam, so the same file runs everywhere (docs/runners.md explains every option):

Locally, in this process (Beam's FnApiRunner; the default when no --runner is given)::

    python examples/dataflow_thumbnails.py --input 'gs://my-bucket/photos/*.jpg' \\
        --output gs://my-bucket/thumbs

Locally through the portable job API (what Flink and Dataflow submissions go through)::

    python examples/dataflow_thumbnails.py --input 'photos/*.jpg' --output out/thumbs \\
        --runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK

On Google Cloud Dataflow::

    python examples/dataflow_thumbnails.py --input 'gs://my-bucket/photos/*.jpg' \\
        --output gs://my-bucket/thumbs \\
        --runner=DataflowRunner --project=my-project --region=europe-west1 \\
        --temp_location=gs://my-bucket/tmp --setup_file=./setup.py \\
        --requirements_file=examples/requirements-dataflow.txt

On a Flink cluster (Beam starts the Flink job server; workers run the Python SDK in Docker)::

    python examples/dataflow_thumbnails.py --input 'gs://my-bucket/photos/*.jpg' \\
        --output gs://my-bucket/thumbs \\
        --runner=FlinkRunner --flink_master=flink-jobmanager:8081 --environment_type=DOCKER \\
        --environment_config=my-registry/mmbeam-beam-python:2.77
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys

import mmbeam  # before Beam, whose import-time warnings it filters

# isort: split
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from mmbeam import transforms as mt
from mmbeam.io.config import GCSConfig, IOConfig


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, PipelineOptions]:
    """The script's own options, and the rest as Beam pipeline options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="glob of the images, e.g. gs://b/p/*.jpg")
    parser.add_argument("--output", required=True, help="folder for thumbnails and reports")
    parser.add_argument("--size", type=int, default=256, help="thumbnail box in pixels")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality (1-100)")
    parser.add_argument("--max_connections", type=int, default=16,
                        help="concurrent downloads and uploads per worker")
    parser.add_argument("--gcs_endpoint", default=None,
                        help="GCS endpoint (only for an emulator; Cloud uses the default)")
    parser.add_argument("--gcs_project", default=None, help="GCS project for --gcs_endpoint")
    args, beam_args = parser.parse_known_args(argv)
    return args, PipelineOptions(beam_args)


def io_config(args: argparse.Namespace) -> IOConfig | None:
    """Storage options for the workers: Application Default Credentials unless an emulator."""
    if args.gcs_endpoint is None:
        return None
    gcs = GCSConfig(endpoint_url=args.gcs_endpoint, project_id=args.gcs_project, anonymous=True)
    return IOConfig(gcs=gcs)


def thumbnail_name(path: str) -> str:
    """``gs://b/photos/cat.png`` → ``cat.jpg`` (the thumbnail's name under the output)."""
    return posixpath.splitext(posixpath.basename(path))[0] + ".jpg"


def failure_line(record: mt.FailedRecord) -> str:
    key = record.element[0] if isinstance(record.element, tuple) else record.element
    return json.dumps({"name": key, "stage": record.stage, "error": record.error})


def report(name: str):
    """Turn all lines of a PCollection into one ``(name, bytes)`` file for ``Upload``."""
    return lambda lines: (name, "".join(line + "\n" for line in sorted(lines)).encode())


def build(p: beam.Pipeline, args: argparse.Namespace) -> None:
    io = io_config(args)
    size = (args.size, args.size)
    files = mmbeam.from_glob_path(args.input, io_config=io).to_pcollection(p)
    keyed = files | "KeyByName" >> beam.Map(
        lambda row: (thumbnail_name(row["path"]), row["path"])).with_output_types(tuple[str, str])
    images, failed_download = keyed | mt.Download(
        args.max_connections, io_config=io, keyed=True).with_exception_handling()
    pixels, failed_decode = images | mt.DecodeImage(
        min_size=size, keyed=True).with_exception_handling()
    written, failed_upload = (
        pixels
        | mt.ResizeImage(*size, mode="fit", keyed=True)
        | mt.EncodeImage("JPEG", quality=args.quality, keyed=True)
        | mt.Upload(args.output, io_config=io, max_connections=args.max_connections,
                    keyed=True).with_exception_handling()
    )
    failed = (failed_download, failed_decode, failed_upload) | "Failures" >> beam.Flatten()
    reports = (
        written | "Paths" >> beam.Map(lambda kv: kv[1])
        | "AllPaths" >> beam.combiners.ToList() | "Manifest" >> beam.Map(report("_manifest.txt")),
        failed | "Lines" >> beam.Map(failure_line)
        | "AllLines" >> beam.combiners.ToList()
        | "FailureLog" >> beam.Map(report("_failures.jsonl")),
    ) | "Reports" >> beam.Flatten()
    _ = reports | "UploadReports" >> mt.Upload(args.output, io_config=io, keyed=True)


def main(argv: list[str] | None = None) -> beam.runners.runner.PipelineResult:
    args, options = parse(argv)
    runner = None
    if options.view_as(StandardOptions).runner is None:
        from mmbeam.runners.direct import local_runner

        runner = local_runner()  # Beam's own default would try to download the Prism runner
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline, args)
    result = pipeline.run()
    result.wait_until_finish()
    print(f"thumbnails of {args.input} written to {args.output} "
          f"(list: _manifest.txt, failures: _failures.jsonl)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
