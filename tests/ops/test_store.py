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


@pytest.mark.parametrize("length", [235, 245, 255])
def test_every_legal_final_name_length_works(tmp_path, length):
    """The temporary name never is longer than the final one (ENAMETOOLONG before)."""
    store = Store(str(tmp_path))
    name = "k" * (length - 4) + ".bin"
    for data in (b"first", b"second"):  # a new name, then a replacement
        path = store.write_local(name, data)
        assert open(path, "rb").read() == data
    assert os.listdir(tmp_path) == [name]


def test_without_o_tmpfile_temporary_names_are_short_too(tmp_path, monkeypatch):
    """The portable path (macOS, NFS): a short hidden temporary name, renamed into place."""
    from mmbeam.io import atomic

    monkeypatch.setattr(atomic, "_TMPFILE", 0)
    name = "k" * 251 + ".bin"
    for data in (b"first", b"second"):
        Store(str(tmp_path)).write_local(name, data)
    assert os.listdir(tmp_path) == [name] and (tmp_path / name).read_bytes() == b"second"


def test_a_symlink_inside_the_destination_cannot_lead_outside(tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    (dest / "inner").mkdir(parents=True)
    (dest / "escape").symlink_to(outside)
    (dest / "deep").mkdir()
    (dest / "deep" / "up").symlink_to("../..")  # relative, two levels up: outside dest
    (dest / "alias").symlink_to("inner")  # stays inside: fine
    store = Store(str(dest))
    for key in ("escape/x.bin", "escape/sub/y.bin", "deep/up/z.bin"):
        with pytest.raises(UnsafePathError, match="outside the destination"):
            store.write_local(key, b"data")
        with pytest.raises(UnsafePathError, match="outside the destination"):
            store.write(key, b"data")  # the async path too
    assert os.listdir(outside) == [] and not (tmp_path / "z.bin").exists()
    assert open(store.write("alias/ok.bin", b"ok"), "rb").read() == b"ok"
    assert (dest / "inner" / "ok.bin").read_bytes() == b"ok"


def test_a_symlink_under_the_final_name_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    data = encode_sample(make_image(8, 8), "PNG")
    name = content_name(data)
    (dest / "given.bin").symlink_to(victim)
    (dest / name).symlink_to(victim)
    victim.write_bytes(b"x" * len(data))  # the same size: must not count as already written
    store = Store(str(dest))
    store.write_local("given.bin", b"new")
    store.write_local(name, data, content_named=True)
    assert victim.read_bytes() == b"x" * len(data)
    assert not os.path.islink(dest / "given.bin") and (dest / "given.bin").read_bytes() == b"new"
    assert not os.path.islink(dest / name) and (dest / name).read_bytes() == data


_KILLED_WRITER = r"""
import concurrent.futures, hashlib, sys
from mmbeam.ops.store import Store

folder, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store(folder)

def write(i):
    data = hashlib.sha256(str(i).encode()).digest() * (size // 32)
    store.write_local(f"part/{i:03d}.bin", data)

with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(write, range(count)))
print("done")
"""


def _visible_files(folder):
    """Every file in ``folder``, hidden ones included, relative to it."""
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


def test_sigkilled_writer_leaves_only_complete_files_and_a_rerun_completes(tmp_path):
    """A writer killed mid-write leaves no partial or temporary file, hidden or not (before:
    partial ``.*.tmp`` files stayed forever); the rerun then fills in every file."""
    import hashlib
    import signal
    import subprocess
    import sys
    import time

    folder, count, size = str(tmp_path / "out"), 48, 8 << 20
    expected = {f"part/{i:03d}.bin": hashlib.sha256(str(i).encode()).digest() * (size // 32)
                for i in range(count)}
    cmd = [sys.executable, "-c", _KILLED_WRITER, folder, str(count), str(size)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_visible_files(folder) if os.path.isdir(folder) else []) >= 6:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    left = _visible_files(folder)
    assert 0 < len(left) < count
    for name in left:  # only whole files, under their final names
        assert name in expected and open(os.path.join(folder, name), "rb").read() == \
            expected[name], name
    rerun = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=300,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert _visible_files(folder) == sorted(expected)
    for name, data in expected.items():
        assert open(os.path.join(folder, name), "rb").read() == data


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
