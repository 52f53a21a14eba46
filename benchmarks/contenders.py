"""The contenders of the image benchmark: the same job done seven ways.

Each ``run_<name>(names, urls, out)`` downloads every URL, decodes it, resizes it to 256x256
(stretch, like Daft's ``resize(256, 256)``), encodes JPEG and writes it under ``out``; it returns
how many rows it produced. ``images.py`` runs each one in a fresh subprocess. Heavy imports stay
inside the functions so that each contender pays only for what it uses.
"""

from __future__ import annotations

import io
import os
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from http.client import HTTPConnection
from urllib.parse import urlsplit

SIZE = (256, 256)


# --------------------------------------------------------------------------- naive
def run_naive(names: list[str], urls: list[str], out: str) -> int:
    """The reference document's loop: one image at a time, full decode, PIL resize, save."""
    from PIL import Image

    for name, url in zip(names, urls):
        with urllib.request.urlopen(url) as response:
            content = response.read()
        image = Image.open(io.BytesIO(content))
        resized = image.resize(SIZE)
        resized.save(os.path.join(out, name), "JPEG")
    return len(names)


# --------------------------------------------------------------------------- threads
class _Client:
    """One kept-alive HTTP/1.1 connection per thread (what a requests.Session pool gives)."""

    def __init__(self):
        self._local = threading.local()

    def get(self, url: str) -> bytes:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in range(3):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = HTTPConnection(parts.hostname, parts.port, timeout=60)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise OSError(f"HTTP {response.status} for {url}")
                return body
            except (ConnectionError, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def script_decode(data: bytes):
    """Reduced-size JPEG decode (the largest of 1/8, 1/4, 1/2 that covers the box), in BGR."""
    import cv2
    import numpy as np
    from PIL import Image

    width, height = Image.open(io.BytesIO(data)).size  # header only
    scale = next((s for s in (8, 4, 2) if width // s >= SIZE[0] and height // s >= SIZE[1]), 1)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
             4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags[scale])
    if pixels is None:
        raise ValueError("cannot decode the image")
    return pixels


def script_resize(pixels):
    import cv2

    return cv2.resize(pixels, SIZE, interpolation=cv2.INTER_AREA)


def script_encode(pixels) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 75])
    if not ok:
        raise ValueError("cannot encode the thumbnail")
    return encoded.tobytes()


def script_write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _thumbnail(data: bytes, path: str) -> None:
    """The script's kernel: reduced-size JPEG decode, stretch to 256x256, encode, write; one
    GIL-free OpenCV call per step (Pillow's decode loop re-takes the GIL every 64 KB, which
    convoys with I/O threads). ``benchmarks/kernels.py`` times the four steps one by one."""
    try:
        script_write(path, script_encode(script_resize(script_decode(data))))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def run_threads(
    names: list[str], urls: list[str], out: str, connections: int = 32, window: int = 64
) -> int:
    """The hand-written practical limit: ``connections`` download threads with kept-alive
    connections feed a CPU pool (one thread per core: Pillow releases the GIL); at most
    ``window`` images are downloaded-or-in-flight at once, so memory stays bounded."""
    client = _Client()
    cpu = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="cpu")
    gate = threading.BoundedSemaphore(window)
    errors: list[BaseException] = []

    def job(name: str, url: str) -> None:
        try:
            data = client.get(url)
            cpu.submit(_thumbnail, data, os.path.join(out, name)).add_done_callback(done)
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
            gate.release()

    def done(future: Future) -> None:
        if future.exception() is not None:
            errors.append(future.exception())
        gate.release()

    with ThreadPoolExecutor(connections, thread_name_prefix="io") as pool:
        for name, url in zip(names, urls):
            gate.acquire()
            if errors:
                gate.release()
                break
            pool.submit(job, name, url)
    for _ in range(window):  # wait until the CPU pool has drained
        gate.acquire()
    cpu.shutdown()
    if errors:
        raise errors[0]
    return len(names)


# --------------------------------------------------------------------------- beam_map
def _bm_download(kv):
    name, url = kv
    with urllib.request.urlopen(url) as response:
        return name, response.read()


def _bm_decode(kv):
    from PIL import Image

    image = Image.open(io.BytesIO(kv[1]))
    image.load()
    return kv[0], image


def _bm_resize(kv):
    return kv[0], kv[1].resize(SIZE)


def _bm_encode(kv):
    buf = io.BytesIO()
    kv[1].save(buf, "JPEG")
    return kv[0], buf.getvalue()


def _bm_write(kv, out):
    path = os.path.join(out, kv[0])
    with open(path, "wb") as f:
        f.write(kv[1])
    return path


def run_beam_map(names: list[str], urls: list[str], out: str) -> int:
    """Plain Beam ``Map`` steps on the in-process FnApiRunner, as a Beam user writes them first."""
    import apache_beam as beam

    from mmbeam.runners import local_pipeline

    with local_pipeline() as p:
        (
            p
            | beam.Create(list(zip(names, urls)))
            | "Download" >> beam.Map(_bm_download)
            | "Decode" >> beam.Map(_bm_decode)
            | "Resize" >> beam.Map(_bm_resize)
            | "Encode" >> beam.Map(_bm_encode)
            | "Write" >> beam.Map(_bm_write, out)
        )
    return len(names)


# --------------------------------------------------------------------------- mmbeam
def thumbnail_parts(out: str) -> list:
    """The documented raw chain (design.md) on ``(name, url)`` pairs: no sizes, no tuning."""
    from mmbeam import transforms as mt

    return [
        mt.Download(max_connections=32, keyed=True),
        mt.DecodeImage(keyed=True),
        mt.ResizeImage(*SIZE, keyed=True),
        mt.EncodeImage("JPEG", keyed=True),
        mt.Upload(out, keyed=True),
    ]


def _run_mmbeam(transform, names: list[str], urls: list[str]) -> int:
    import apache_beam as beam

    from mmbeam.runners import local_pipeline

    with local_pipeline() as p:
        _ = p | beam.Create(list(zip(names, urls))) | transform
    return len(names)


def run_mmbeam_transforms(names: list[str], urls: list[str], out: str) -> int:
    """``Create | Download | DecodeImage | ResizeImage | EncodeImage | Upload`` (five DoFns)."""
    import functools
    import operator

    return _run_mmbeam(functools.reduce(operator.or_, thumbnail_parts(out)), names, urls)


def run_mmbeam_fused(names: list[str], urls: list[str], out: str) -> int:
    """The same five transforms in ``mt.Fuse``: one per-row kernel."""
    from mmbeam import transforms as mt

    return _run_mmbeam(mt.Fuse(*thumbnail_parts(out)), names, urls)


#: The reference document's expressions in each library's spelling: mmbeam keeps Daft's older
#: ``.url``/``.image`` namespaces, Daft 0.7 has flat methods.
_MMBEAM_EXPRS = {
    "download": lambda e: e.url.download(),
    "decode": lambda e: e.image.decode(),
    "resize": lambda e: e.image.resize(*SIZE),
    "encode": lambda e: e.image.encode("JPEG"),
    "upload": lambda e, out: e.url.upload(out),
}
_DAFT_EXPRS = {
    "download": lambda e: e.download(),
    "decode": lambda e: e.decode_image(),
    "resize": lambda e: e.resize(*SIZE),
    "encode": lambda e: e.encode_image("JPEG"),
    "upload": lambda e, out: e.upload(out),
}


def _frame_thumbnails(lib, x: dict, urls: list[str], out: str) -> int:
    """The reference document's frame pipeline on ``lib`` (mmbeam or daft) with its expression
    spelling ``x``; keeps only the url and the written path, so no full-size column is
    collected."""
    col = lib.col
    df = (
        lib.from_pydict({"url": urls})
        .with_column("image", x["decode"](x["download"](col("url"))))
        .with_column("resized", x["resize"](col("image")))
        .with_column("encoded", x["encode"](col("resized")))
        .with_column("path", x["upload"](col("encoded"), out))
        .select("url", "path")
        .collect()
    )
    return len(df.to_pydict()["path"])


def run_mmbeam_frame(names: list[str], urls: list[str], out: str) -> int:
    """The Daft-style frame API on mmbeam."""
    import mmbeam

    return _frame_thumbnails(mmbeam, _MMBEAM_EXPRS, urls, out)


# --------------------------------------------------------------------------- daft
def run_daft(names: list[str], urls: list[str], out: str) -> int:
    """The reference document's Daft pipeline, when Daft is installed."""
    import daft

    return _frame_thumbnails(daft, _DAFT_EXPRS, urls, out)


# --------------------------------------------------------------------------- registry
def _frame_missing() -> str | None:
    import mmbeam

    if not hasattr(mmbeam, "from_pydict"):
        return "not available yet (mmbeam.from_pydict does not exist)"
    return None


def _daft_missing() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("daft") else "not installed (pip install daft)"


CONTENDERS: dict[str, Callable[[list[str], list[str], str], int]] = {
    "naive": run_naive,
    "threads": run_threads,
    "beam_map": run_beam_map,
    "mmbeam_transforms": run_mmbeam_transforms,
    "mmbeam_fused": run_mmbeam_fused,
    "mmbeam_frame": run_mmbeam_frame,
    "daft": run_daft,
}
#: Contenders that run one image at a time (capped by ``--slow-count``).
SLOW = frozenset({"naive", "beam_map"})
#: Contenders that name files by content hash, so repeated pool images share one file.
CONTENT_NAMED = frozenset({"mmbeam_frame"})


def unavailable(name: str) -> str | None:
    """Why contender ``name`` cannot run here, or None."""
    if name == "mmbeam_frame":
        return _frame_missing()
    if name == "daft":
        return _daft_missing()
    return None

