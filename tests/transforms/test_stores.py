"""Round trips through Upload and Download on a local folder, S3 (moto server) and GCS (emulator)."""

import uuid

import apache_beam as beam
import pytest

from mmbeam import transforms as mt
from mmbeam.errors import UploadError
from mmbeam.ops.store import content_name
from mmbeam.testing.collect import run_collect
from mmbeam.testing.images import encode_sample, make_image

BLOBS = {f"k{i}/img.png": encode_sample(make_image(24, 16, seed=i), "PNG") for i in range(4)}


@pytest.fixture(params=["local", "s3", "gs"])
def store(request, tmp_path):
    """(location URL, IOConfig or None, function reading a URL back with the server's own client)."""
    if request.param == "local":
        return str(tmp_path / "out"), None, lambda url: open(url, "rb").read()
    server = request.getfixturevalue("mmbeam_s3" if request.param == "s3" else "mmbeam_gcs")
    bucket = f"mmbeam-{uuid.uuid4().hex[:10]}"
    server.make_bucket(bucket)
    return f"{request.param}://{bucket}/thumbs", server.io_config(), server.get


def test_upload_then_download_round_trip(store):
    location, io_config, read_back = store
    paths = run_collect(
        lambda p: p
        | beam.Create(sorted(BLOBS.items()))
        | mt.Upload(location, io_config=io_config, keyed=True)
    ).outputs
    assert dict(paths) == {k: f"{location}/{k}" for k in BLOBS}
    for key, url in paths:
        assert read_back(url) == BLOBS[key]  # what the store's own client sees

    fetched = run_collect(
        lambda p: p
        | beam.Create([(k, url) for k, url in paths])
        | mt.Download(io_config=io_config, keyed=True)
    ).outputs
    assert dict(fetched) == BLOBS


def test_unkeyed_upload_names_by_content(store):
    location, io_config, read_back = store
    data = BLOBS["k0/img.png"]
    (url,) = run_collect(
        lambda p: p | beam.Create([data]) | mt.Upload(location, io_config=io_config)
    ).outputs
    assert url == f"{location}/{content_name(data)}" and read_back(url) == data


def test_missing_object_is_a_download_error(store):
    location, io_config, _ = store
    good, failed = run_collect(
        lambda p: p
        | beam.Create([f"{location}/no/such/object.jpg"])
        | mt.Download(io_config=io_config, retries=0).with_exception_handling()
    ).outputs
    assert good == [] and "not found" in failed[0].error and failed[0].stage == "Download"


def test_upload_to_missing_bucket_fails_clearly(mmbeam_s3):
    store = mt.Upload("s3://no-such-bucket-mmbeam/out", io_config=mmbeam_s3.io_config())
    good, failed = run_collect(
        lambda p: p | beam.Create([b"abc"]) | store.with_exception_handling()
    ).outputs
    assert good == [] and "s3://no-such-bucket-mmbeam/out/" in failed[0].error
    with pytest.raises(UploadError, match="Upload failed for <3 bytes>: .*bucket does not exist"):
        run_collect(lambda p: p | beam.Create([b"abc"]) | store)


def test_upload_takes_255_byte_keys_and_refuses_symlinks_leading_outside(tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    long_key = "n" * 251 + ".png"
    good, failed = run_collect(
        lambda p: p
        | beam.Create([(long_key, BLOBS["k0/img.png"]), ("link/x.png", BLOBS["k1/img.png"])])
        | mt.Upload(str(dest), keyed=True).with_exception_handling()
    ).outputs
    assert good == [(long_key, str(dest / long_key))]
    assert (dest / long_key).read_bytes() == BLOBS["k0/img.png"]
    assert len(failed) == 1 and failed[0].stage == "Upload"
    assert "outside the destination" in failed[0].error, failed[0].error
    assert list(outside.iterdir()) == []
