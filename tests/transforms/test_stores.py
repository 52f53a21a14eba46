"""Round trips through Upload and Download on a local folder, S3 (moto server) and GCS (emulator)."""

import uuid

import apache_beam as beam
import pytest

from mmbeam import transforms as mt
from mmbeam.errors import UploadError
from mmbeam.ops.store import Store, content_name
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


@pytest.fixture(params=["s3", "gs"])
def object_store(request):
    """(scheme, server) for the object stores, whose Upload runs on the event-loop I/O path."""
    return request.param, request.getfixturevalue("mmbeam_s3" if request.param == "s3" else "mmbeam_gcs")


def test_upload_to_missing_bucket_with_on_error_null_gives_a_counted_none(object_store):
    scheme, server = object_store
    location = f"{scheme}://no-such-bucket-{uuid.uuid4().hex[:10]}/out"
    upload = mt.Upload(location, on_error="null", io_config=server.io_config())
    assert upload.step(True).blocking is None  # the event-loop path, not the threaded one
    collected = run_collect(lambda p: p | beam.Create([b"abc", b"defg"]) | upload)
    assert collected.outputs == [None, None]
    assert collected.counter("Upload", "nulls") == 2
    assert collected.counter("Upload", "succeeded") == 0


def test_upload_to_missing_bucket_with_exception_handling_names_the_upload_stage(object_store):
    scheme, server = object_store
    location = f"{scheme}://no-such-bucket-{uuid.uuid4().hex[:10]}/out"
    upload = mt.Upload(location, on_error="null", io_config=server.io_config())
    good, failed = run_collect(
        lambda p: p | beam.Create([b"abc"]) | upload.with_exception_handling()
    ).outputs
    assert good == [] and len(failed) == 1
    (record,) = failed
    assert isinstance(record, mt.FailedRecord) and record.stage == "Upload"
    assert record.element == b"abc" and location in record.error


def _payloads(count=4, size=256 << 10):
    return [bytes([65 + i]) * (size + 1000 * i) for i in range(count)]


def test_readers_never_see_a_partial_object_while_uploads_overwrite_it(object_store):
    """One key is overwritten again and again with payloads of different sizes while a reader
    fetches it with the store's own client: every read is one whole payload."""
    import threading

    scheme, server = object_store
    bucket = f"mmbeam-{uuid.uuid4().hex[:10]}"
    server.make_bucket(bucket)
    store = Store(f"{scheme}://{bucket}/out", server.io_config())
    payloads = _payloads()
    url = store.write("same.bin", payloads[0])
    done, seen, bad = threading.Event(), set(), []

    def read():
        for _ in range(100_000):  # bounded; ends when the writer is done
            if done.is_set():
                return
            data = server.get(url)
            if data in payloads:
                seen.add(len(data))
            else:
                bad.append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            store.write("same.bin", payloads[i % len(payloads)])
    finally:
        done.set()
        reader.join(60)
    assert bad == [] and len(seen) >= 2  # the reader saw the object change, always whole


def test_an_object_is_absent_or_whole_before_each_request_of_its_upload(object_store):
    """A FaultProxy between the store's client and the server looks at the object before each
    write request of an upload reaches the server: it is absent before the first upload and
    the previous whole payload before each overwrite, never part of the new one (a client
    that wrote a first part in place, or in several visible steps, would show it here)."""
    from mmbeam.testing import FaultProxy

    scheme, server = object_store
    bucket = f"mmbeam-{uuid.uuid4().hex[:10]}"
    server.make_bucket(bucket)
    url = f"{scheme}://{bucket}/out/same.bin"
    payloads = _payloads(3)
    seen = []

    def look(method, path):
        present = url in server.ls(f"{scheme}://{bucket}/out")
        seen.append(server.get(url) if present else None)

    with FaultProxy(server.endpoint_url) as proxy:
        for method in ("PUT", "POST"):  # S3 writes with PUT, GCS with POST
            proxy.before(bucket, look, method=method)
        store = Store(f"{scheme}://{bucket}/out", server.io_config(endpoint_url=proxy.url))
        for data in payloads:
            assert store.write("same.bin", data) == url
    assert seen == [None, *payloads[:-1]]
    assert server.get(url) == payloads[-1]


def test_listed_objects_always_have_their_full_size(object_store):
    """While new objects are uploaded, a lister (the store's own listing, sizes included)
    never finds an object shorter than what was uploaded under its name."""
    import threading

    scheme, server = object_store
    bucket = f"mmbeam-{uuid.uuid4().hex[:10]}"
    server.make_bucket(bucket)
    store = Store(f"{scheme}://{bucket}/out", server.io_config())
    payloads = _payloads()
    fs = server.filesystem()
    done, listed, short = threading.Event(), set(), []

    def watch():
        for _ in range(100_000):
            if done.is_set():
                return
            fs.invalidate_cache()
            for info in fs.ls(f"{bucket}/out", detail=True) if fs.exists(f"{bucket}/out") else []:
                name = info["name"].rsplit("/", 1)[1]
                listed.add(name)
                if int(info["size"]) != len(payloads[int(name.split(".")[0]) % len(payloads)]):
                    short.append((name, info["size"]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(40):
            store.write(f"{i}.bin", payloads[i % len(payloads)])
    finally:
        done.set()
        watcher.join(60)
    assert short == [] and len(listed) >= 2


def test_each_s3_upload_is_one_whole_object_version(mmbeam_s3):
    """In a versioned bucket every version S3 ever held is kept: each key uploaded once through
    the Upload transform has exactly one version, holding all its bytes."""
    bucket = f"mmbeam-{uuid.uuid4().hex[:10]}"
    mmbeam_s3.make_bucket(bucket)
    client = mmbeam_s3.filesystem()
    client.call_s3("put_bucket_versioning", Bucket=bucket,
                   VersioningConfiguration={"Status": "Enabled"})
    run_collect(lambda p: p | beam.Create(sorted(BLOBS.items()))
                | mt.Upload(f"s3://{bucket}/v", io_config=mmbeam_s3.io_config(), keyed=True))
    versions = client.call_s3("list_object_versions", Bucket=bucket)["Versions"]
    assert sorted((v["Key"], v["Size"]) for v in versions) == sorted(
        (f"v/{k}", len(data)) for k, data in BLOBS.items())
