"""read_images: a folder, glob or file of images (local, s3://, gs://) as an image column."""

from __future__ import annotations

import numpy as np
import pytest

import mmbeam
from mmbeam.errors import ConfigError, DecodeError
from mmbeam.ops import decode as decode_mod
from mmbeam.testing.images import encode_sample, make_image

SIZES = {"a.jpg": (64, 48), "b.PNG": (40, 30), "sub/c.jpeg": (120, 90)}


def _files() -> dict[str, bytes]:
    files = {name: encode_sample(make_image(w, h, seed=i), "PNG" if name.endswith("PNG")
                                 else "JPEG")
             for i, (name, (w, h)) in enumerate(SIZES.items())}
    files["notes.txt"] = b"not an image"
    return files


@pytest.fixture(params=[None, False], ids=["in_process", "beam"])
def path_mode(request):
    mmbeam.context.set_execution_config(in_process=request.param)
    yield
    mmbeam.context.set_execution_config(in_process=None)


def test_a_folder_gives_one_row_per_image_file_with_its_path(tmp_path, path_mode):
    for name, data in _files().items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    frame = mmbeam.read_images(str(tmp_path))
    assert frame.column_names == ["image", "path"]
    rows = {r["path"].rsplit(str(tmp_path) + "/", 1)[-1]: r["image"]
            for r in frame.to_pylist()}
    assert sorted(rows) == sorted(SIZES)  # notes.txt is not an image extension
    for name, (w, h) in SIZES.items():
        assert rows[name].shape == (h, w, 3) and rows[name].dtype == np.uint8
    only = mmbeam.read_images(str(tmp_path / "*.jpg"), include_paths=False, mode="L")
    assert only.column_names == ["image"]
    assert [img.shape for img in only.to_pydict()["image"]] == [(48, 64, 1)]


def test_size_resizes_every_image_and_decodes_jpegs_at_reduced_scale(tmp_path, monkeypatch):
    (tmp_path / "big.jpg").write_bytes(encode_sample(make_image(800, 600, seed=3)))
    (tmp_path / "small.png").write_bytes(encode_sample(make_image(50, 40, seed=4), "PNG"))
    decoded = []
    real = decode_mod.decode_image

    def recording(data, mode="RGB", **kw):  # the real decoder, recording what it produced
        out = real(data, mode, **kw)
        decoded.append(out.shape)
        return out

    monkeypatch.setattr(decode_mod, "decode_image", recording)
    images = mmbeam.read_images(str(tmp_path), size=(32, 24)).to_pydict()["image"]
    assert [img.shape for img in images] == [(32, 24, 3), (32, 24, 3)]
    assert (600, 800, 3) not in decoded and any(h < 600 for h, *_ in decoded)


def test_unreadable_files_fail_or_become_null(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(encode_sample(make_image(20, 10)))
    (tmp_path / "broken.jpg").write_bytes(b"<html>not a jpeg</html>")
    with pytest.raises(DecodeError, match="broken.jpg|not an image"):
        mmbeam.read_images(str(tmp_path)).collect()
    out = mmbeam.read_images(str(tmp_path), on_error="null").sort("path").to_pydict()
    assert out["image"][0] is None and out["image"][1].shape == (10, 20, 3)
    with pytest.raises(ConfigError, match="height, width"):
        mmbeam.read_images(str(tmp_path), size=32)


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_object_store_globs(store, request, mmbeam_bucket_name):
    server = request.getfixturevalue(f"mmbeam_{store}")
    bucket = server.make_bucket(mmbeam_bucket_name)
    for name, data in _files().items():
        server.put(f"{bucket}/imgs/{name}", data)
    frame = mmbeam.read_images(f"{bucket}/imgs/**", io_config=server.io_config())
    out = frame.sort("path").to_pydict()
    assert [p.rsplit("/imgs/", 1)[1] for p in out["path"]] == sorted(SIZES)
    assert [img.shape[:2] for img in out["image"]] == [
        (h, w) for _, (w, h) in sorted(SIZES.items())]
