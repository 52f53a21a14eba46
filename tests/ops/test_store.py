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
