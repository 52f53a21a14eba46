"""Deterministic sample images for tests: photo-like pixels, encoded files and broken files.

Pixels are smooth gradients with a few solid shapes (chosen by ``seed``), not white noise, so
JPEGs compress like photos and a resized image can be compared with the original. Only numpy
and Pillow are used, so the samples are the same on every machine.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from mmbeam.errors import ConfigError

__all__ = [
    "EXTENSIONS",
    "decompression_bomb",
    "encode_sample",
    "make_image",
    "sample_images",
    "truncated",
]

#: File extension used by :func:`sample_images` for each format.
EXTENSIONS: dict[str, str] = {
    "JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff",
}
_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
_MULTI_FRAME = {"GIF", "WEBP", "TIFF", "PNG"}
_EXIF_FORMATS = {"JPEG", "PNG", "WEBP"}
_CHANNELS = {"RGB": 3, "RGBA": 4, "L": 1}
_ORIENTATION_TAG = 0x0112


def make_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """A ``uint8`` array (HxWx3 for RGB, HxWx4 for RGBA, HxW for L) that looks like a photo.

    Each channel is a smooth mix of linear gradients and a low-frequency wave, with two to five
    filled circles and rectangles on top; the same arguments always give the same pixels.
    """
    if mode not in _CHANNELS:
        raise ConfigError(f"make_image: mode {mode!r} is not supported; use 'RGB', 'RGBA' or 'L'")
    if width < 1 or height < 1:
        raise ConfigError(f"make_image: size {width}x{height} must be at least 1x1")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x /= max(width - 1, 1)
    y /= max(height - 1, 1)
    rgb = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b = rng.uniform(-0.6, 0.6, 2)
        fx, fy = rng.uniform(0.5, 2.5, 2)
        phase = rng.uniform(0, 2 * np.pi)
        wave = 0.25 * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
        rgb[..., c] = 0.5 + a * (x - 0.5) + b * (y - 0.5) + wave
    for _ in range(int(rng.integers(2, 6))):
        color = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        cx, cy = rng.uniform(0.1, 0.9, 2)
        r = rng.uniform(0.05, 0.25)
        if rng.random() < 0.5:
            mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        else:
            mask = (abs(x - cx) < r) & (abs(y - cy) < r * rng.uniform(0.4, 1.0))
        rgb[mask] = 0.35 * rgb[mask] + 0.65 * color
    pixels = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if mode == "L":
        gray = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
        return (gray + 0.5).astype(np.uint8)
    if mode == "RGBA":  # opaque in the middle, fading towards the corners
        d = np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2) / np.sqrt(0.5)
        alpha = (255.0 - 191.0 * d + 0.5).astype(np.uint8)
        return np.dstack([pixels, alpha])
    return pixels


def encode_sample(
    array: np.ndarray,
    format: str = "JPEG",  # the name Pillow users know
    quality: int = 90,
    exif_orientation: int | None = None,
    frames: int = 1,
) -> bytes:
    """Encode ``array`` as JPEG, PNG, WEBP, GIF, BMP or TIFF bytes.

    ``frames > 1`` writes an animation (GIF, WEBP, TIFF, PNG) whose extra frames are the image
    shifted sideways. ``exif_orientation`` (1..8) writes the EXIF Orientation tag (JPEG, PNG,
    WEBP); a JPEG's alpha channel is dropped, as JPEG has none.
    """
    fmt = _ALIASES.get(format.upper(), format.upper())
    if fmt not in EXTENSIONS:
        raise ConfigError(f"encode_sample: format {format!r} is not one of {sorted(EXTENSIONS)}")
    image = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    options: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(quality)
    if exif_orientation is not None:
        if fmt not in _EXIF_FORMATS or not 1 <= exif_orientation <= 8:
            raise ConfigError(
                f"encode_sample: exif_orientation={exif_orientation!r} needs a value 1..8 and "
                f"a format in {sorted(_EXIF_FORMATS)} (got {fmt})"
            )
        exif = Image.Exif()
        exif[_ORIENTATION_TAG] = int(exif_orientation)
        options["exif"] = exif.tobytes()
    if frames > 1:
        if fmt not in _MULTI_FRAME:
            raise ConfigError(f"encode_sample: {fmt} cannot hold {frames} frames; use GIF or WEBP")
        step = max(image.width // frames, 1)
        extra = [Image.fromarray(np.roll(array, step * k, axis=1)) for k in range(1, frames)]
        if image.mode != extra[0].mode:
            extra = [e.convert(image.mode) for e in extra]
        options.update(save_all=True, append_images=extra, duration=100, loop=0)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def sample_images(
    n: int,
    *,
    format: str = "JPEG",
    min_size: int = 64,
    max_size: int = 512,
    seed: int = 0,
) -> dict[str, bytes]:
    """``n`` encoded RGB images of random sizes in ``[min_size, max_size]``, by file name.

    Names are ``img_0000.jpg``, ``img_0001.jpg``, ... with the extension of ``format``.
    """
    fmt = _ALIASES.get(format.upper(), format.upper())
    if fmt not in EXTENSIONS:
        raise ConfigError(f"sample_images: format {format!r} is not one of {sorted(EXTENSIONS)}")
    if not 1 <= min_size <= max_size:
        raise ConfigError(
            f"sample_images: need 1 <= min_size <= max_size, got {min_size} and {max_size}"
        )
    rng = np.random.default_rng(seed)
    out: dict[str, bytes] = {}
    for i in range(n):
        w, h = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        pixels = make_image(w, h, "RGB", seed=int(rng.integers(0, 2**31)))
        out[f"img_{i:04d}.{EXTENSIONS[fmt]}"] = encode_sample(pixels, fmt)
    return out


def decompression_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit black PNG whose header declares ``width`` x ``height`` pixels.

    The default (400 megapixels) is about 50 KB on disk: deflate cannot pack a 50 MB bitmap any
    tighter. Pillow refuses to open it with its default limit (``DecompressionBombError``);
    with the limit lifted it decodes to the full size, so it is a real bomb, not just a header.
    """
    if width < 1 or height < 1:
        raise ConfigError(f"decompression_bomb: size {width}x{height} must be at least 1x1")

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit gray, no interlace
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 and all-black pixels
    packer = zlib.compressobj(9)
    rows_per_piece = max(1, (1 << 20) // len(row))  # feed zlib about 1 MB at a time
    parts = []
    for start in range(0, height, rows_per_piece):
        parts.append(packer.compress(row * min(rows_per_piece, height - start)))
    parts.append(packer.flush())
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction (0..1) of ``data``: a file cut off mid-download."""
    if not 0.0 <= keep <= 1.0:
        raise ConfigError(f"truncated: keep={keep!r} must be between 0 and 1")
    return bytes(data[: int(len(data) * keep)])

