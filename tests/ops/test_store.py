"""Store: safe names, content names, atomic local writes."""

import os

import pytest

from mmbeam.errors import UnsafePathError, UnsupportedSchemeError, UploadError
from mmbeam.ops.store import Store, content_name, safe_name, sniff_extension
from mmbeam.testing.images import encode_sample, make_image


@pytest.mark.parametrize("name", ["../x.jpg", "a/../../x", "/etc/passwd", "C:\\x", "a//b", "", "a/./b", "\\\\srv\\x"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafePathError, match="relative path"):
        safe_name(name)


def test_safe_names_pass():
    assert safe_name("cats/7.jpg") == "cats/7.jpg"
    assert safe_name(42) == "42"
    assert safe_name("a\\b.png") == "a/b.png"


def test_content_name_is_deterministic_and_sniffs_extension():
    jpeg = encode_sample(make_image(8, 8), "JPEG")
    assert content_name(jpeg) == content_name(bytes(jpeg))
    assert content_name(jpeg).endswith(".jpg") and len(content_name(jpeg)) == 36
    for fmt, ext in [("PNG", ".png"), ("WEBP", ".webp"), ("GIF", ".gif"), ("BMP", ".bmp"), ("TIFF", ".tif")]:
        assert sniff_extension(encode_sample(make_image(8, 8), fmt)) == ext
    assert sniff_extension(b"hello") == ".bin"


def test_local_write_is_atomic_and_overwrites(tmp_path):
    store = Store(str(tmp_path / "out"))
    path = store.write("a/b.bin", b"one")
    assert path == str(tmp_path / "out" / "a" / "b.bin")
    store.write("a/b.bin", b"two")
    assert open(path, "rb").read() == b"two"
    assert os.listdir(tmp_path / "out" / "a") == ["b.bin"]  # no temporary files left


def test_failed_local_write_leaves_nothing(tmp_path):
    (tmp_path / "blocker").write_bytes(b"a file where a folder should be")
    store = Store(str(tmp_path))
    with pytest.raises(UploadError, match="blocker"):
        store.write("blocker/x.bin", b"data")
    assert sorted(os.listdir(tmp_path)) == ["blocker"]


def test_store_refuses_http_and_unknown_schemes():
    with pytest.raises(UnsupportedSchemeError, match="s3:// or gs://"):
        Store("http://example.invalid/out")
    with pytest.raises(UnsupportedSchemeError, match="ftp"):
        Store("ftp://host/out")


def test_write_local_on_the_calling_thread_makes_folders_and_fails_cleanly(tmp_path):
    store = Store(str(tmp_path / "out"))
    assert store.is_local
    path = store.write_local("deep/er/c.bin", b"three")  # folders made on first use
    assert open(path, "rb").read() == b"three"
    store.write_local("deep/er/c.bin", b"four")
    assert os.listdir(tmp_path / "out" / "deep" / "er") == ["c.bin"]
    (tmp_path / "out" / "file").write_bytes(b"x")
    with pytest.raises(UploadError, match="file/x.bin failed"):
        store.write_local("file/x.bin", b"data")
    with pytest.raises(UnsafePathError):
        store.write_local("../x.bin", b"data")
    with pytest.raises(UnsupportedSchemeError, match="local folder"):
        Store("s3://bucket/out").write_local("x.bin", b"data")


def _write_many(folder, payload, count, errors=None):
    store = Store(folder)
    try:
        for _ in range(count):
            store.write_local("same.bin", payload)
    except Exception as exc:  # noqa: BLE001 - checked by the test (the process: by exit code)
        if errors is None:
            raise
        errors.append(exc)


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    """Threads and a forked process overwrite one name; a reader only ever sees whole files."""
    import multiprocessing
    import threading

    folder = str(tmp_path / "out")
    payloads = [bytes([i]) * (200_000 + i) for i in range(5)]
    Store(folder).write_local("same.bin", payloads[0])
    done = threading.Event()
    seen, errors = set(), []

    def read():
        while not done.is_set():
            with open(os.path.join(folder, "same.bin"), "rb") as f:
                data = f.read()
            if data not in payloads:
                errors.append(f"partial or mixed file of {len(data)} bytes")
            seen.add(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    process = multiprocessing.get_context("fork").Process(
        target=_write_many, args=(folder, payloads[4], 50)
    )
    process.start()
    writers = [
        threading.Thread(target=_write_many, args=(folder, p, 50, errors)) for p in payloads[:4]
    ]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    process.join(timeout=60)
    done.set()
    reader.join()
    assert errors == [] and process.exitcode == 0
    assert len(seen) >= 2  # the reader did see the file change
    assert os.listdir(folder) == ["same.bin"]  # every temporary name was distinct and cleaned


def test_write_failing_after_the_temporary_file_removes_it(tmp_path):
    store = Store(str(tmp_path))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_bytes(b"x")  # a non-empty folder: rename cannot replace it
    with pytest.raises(UploadError, match="taken failed"):
        store.write_local("taken", b"data")
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_content_named_write_keeps_a_whole_file_already_there(tmp_path):
    store = Store(str(tmp_path))
    data = encode_sample(make_image(32, 24), "JPEG")
    name = content_name(data)
    path = store.write_local(name, data, content_named=True)
    before = os.stat(path)
    assert store.write_local(name, data, content_named=True) == path
    assert os.stat(path).st_ino == before.st_ino  # kept, not replaced by a rename
    # a file of another size under that name is not these bytes: it is replaced
    with open(path, "wb") as f:
        f.write(data[:10])
    store.write_local(name, data, content_named=True)
    assert open(path, "rb").read() == data
    # a name given by the user says nothing about the bytes: always rewritten
    store.write_local("given.jpg", b"one")
    store.write_local("given.jpg", b"two")
    assert open(tmp_path / "given.jpg", "rb").read() == b"two"


def _write_under_a_file_size_limit(folder, name, data, limit, result):
    """In a child process: cap file sizes at ``limit`` bytes (a full disk or quota, really
    enforced by the kernel: EFBIG) and write ``data``; report what the write raised."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        Store(folder).write_local(name, data)
        result.put("written")
    except UploadError as exc:
        result.put(f"UploadError: {exc}")


@pytest.mark.parametrize("existing", [None, b"old whole file"], ids=["new", "overwrite"])
def test_write_failing_half_way_leaves_no_partial_file(tmp_path, existing):
    """The kernel refuses the write after 64 KB: no reader may then find 64 KB of a 1 MB
    image under the name, and a file already there stays whole."""
    import multiprocessing

    folder = tmp_path / "out"
    folder.mkdir()
    if existing is not None:
        (folder / "big.bin").write_bytes(existing)
    result = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(
        target=_write_under_a_file_size_limit,
        args=(str(folder), "big.bin", os.urandom(1 << 20), 64 << 10, result))
    child.start()
    outcome = result.get(timeout=60)
    child.join(timeout=60)
    assert outcome.startswith("UploadError: writing") and "big.bin failed" in outcome
    assert os.listdir(folder) == ([] if existing is None else ["big.bin"])
    if existing is not None:
        assert (folder / "big.bin").read_bytes() == existing
