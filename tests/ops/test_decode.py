"""decode_image: formats, modes, orientation, reduced-size JPEG decode, and every bad input."""

import io
import math
from fractions import Fraction

import cv2
import numpy as np
import pytest

from mmbeam.errors import ConfigError, DecodeError, ImageTooLargeError
from mmbeam.ops import decode
from mmbeam.ops.decode import ImageHeader, check_mode, decode_image, jpeg_scale, probe_image
from mmbeam.ops.resize import resize_image
from mmbeam.testing.images import decompression_bomb, encode_sample, make_image, truncated


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_format_decodes_to_hwc_uint8(fmt):
    pixels = make_image(96, 64, seed=3)
    out = decode_image(encode_sample(pixels, fmt))
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    lossless = fmt in ("PNG", "BMP", "TIFF")
    if lossless:
        np.testing.assert_array_equal(out, pixels)
    else:  # lossy or palette formats still look like the source
        assert psnr(out, pixels) > 20


def test_gif_gives_its_first_frame():
    pixels = make_image(80, 40, seed=1)
    first = decode_image(encode_sample(pixels, "GIF", frames=3))
    again = decode_image(encode_sample(pixels, "GIF"))
    np.testing.assert_array_equal(first, again)


def test_modes():
    rgba = make_image(20, 10, mode="RGBA")
    png = encode_sample(rgba, "PNG")
    assert decode_image(png, mode=None).shape == (10, 20, 4)
    assert decode_image(png, mode="RGB").shape == (10, 20, 3)
    assert decode_image(png, mode="L").shape == (10, 20)
    gray = encode_sample(make_image(20, 10, mode="L"), "PNG")
    assert decode_image(gray, mode=None).ndim == 2


@pytest.mark.parametrize("orientation, shape", [(1, (60, 100, 3)), (3, (60, 100, 3)), (6, (100, 60, 3)), (8, (100, 60, 3))])
def test_exif_orientation_is_applied(orientation, shape):
    pixels = make_image(100, 60, seed=2)
    out = decode_image(encode_sample(pixels, "JPEG", quality=95, exif_orientation=orientation))
    assert out.shape == shape
    if orientation == 6:  # rotate 90 degrees clockwise to display
        assert psnr(out, np.rot90(pixels, k=-1)) > 28


def test_reduced_jpeg_decode_is_at_least_min_size_and_looks_the_same():
    pixels = make_image(2048, 1536, seed=5)
    data = encode_sample(pixels, "JPEG", quality=92)
    reduced = decode_image(data, min_size=(256, 256))
    assert reduced.shape[:2] == (384, 512)  # 2/8: the smallest eighth still >= 256x256
    full = decode_image(data)
    assert full.shape[:2] == (1536, 2048)
    ref = resize_image(full, 256, 256)
    assert psnr(resize_image(reduced, 256, 256), ref) > 30


def test_reduced_decode_respects_rotation():
    pixels = make_image(1600, 800, seed=6)
    data = encode_sample(pixels, "JPEG", exif_orientation=6)
    out = decode_image(data, min_size=(100, 400))  # the target as displayed: 100 wide, 400 high
    assert out.shape[0] >= 400 and out.shape[1] >= 100
    assert out.shape[0] > out.shape[1]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "zero bytes"),
        (b"<html>not found</html>", "not an image"),
        (truncated(encode_sample(make_image(300, 200), "JPEG")), "truncated"),
    ],
)
def test_bad_bytes_raise_decode_error(data, message):
    with pytest.raises(DecodeError, match=message):
        decode_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = decompression_bomb(20000, 20000)
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLargeError, match="400,000,000 pixels exceeds max_pixels=100,000,000"):
        decode_image(bomb)
    small = encode_sample(make_image(200, 100), "PNG")
    with pytest.raises(ImageTooLargeError, match="max_pixels=10,000"):
        decode_image(small, max_pixels=10_000)


def test_check_mode():
    assert check_mode("RGB") == "RGB" and check_mode(None) is None
    with pytest.raises(ConfigError, match="'CMYK'"):
        check_mode("CMYK")


@pytest.fixture(params=["simplejpeg", "opencv"])
def jpeg_backend(request, monkeypatch):
    """Run a test through simplejpeg and through the OpenCV fallback used without it."""
    if request.param == "opencv":
        monkeypatch.setattr(decode, "simplejpeg", None)
    return request.param


def _expected_shape(data, min_size):
    """The displayed H×W after a decode at jpeg_scale, from the stored size and M/8 rule."""
    header = probe_image(data)
    scale = jpeg_scale(header, min_size)
    width, height = (math.ceil(header.width * scale), math.ceil(header.height * scale))
    return (width, height) if header.orientation in (5, 6, 7, 8) else (height, width)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("min_size", [None, (40, 90)])
def test_fast_path_matches_pillow_for_every_orientation(orientation, min_size, jpeg_backend):
    from PIL import Image, ImageOps

    pixels = make_image(320, 200, seed=orientation)
    data = encode_sample(pixels, "JPEG", quality=95, exif_orientation=orientation)
    out = decode_image(data, min_size=min_size)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    if min_size is None:
        assert out.shape == ref.shape
    else:  # as displayed: at least 40 wide and 90 high; 3/8 when stored rotated, else 1/2
        assert out.shape[1] >= 40 and out.shape[0] >= 90
        if jpeg_backend == "simplejpeg":
            assert out.shape[:2] == ((120, 75) if orientation >= 5 else (100, 160))
        ref = cv2.resize(ref, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA)
    assert out.flags.c_contiguous
    assert psnr(out, ref) > 30


@pytest.mark.parametrize(
    "size, orientation, target, scale",
    [((4032, 3024), 1, (256, 256), "1/8"), ((1920, 1080), 1, (256, 256), "1/4"),
     ((1024, 768), 1, (256, 256), "3/8"), ((800, 600), 1, (256, 256), "1/2"),
     ((640, 480), 1, (256, 256), "5/8"), ((300, 300), 1, (256, 256), "7/8"),
     ((256, 256), 1, (256, 256), "1"), ((1001, 1001), 1, (126, 126), "1/8"),  # ceil(125.1)
     ((4000, 1000), 6, (100, 400), "1/8"), ((4000, 1000), 1, (100, 400), "1/2"),
     ((4032, 3024), 1, None, "1")],
)
def test_jpeg_scale_is_the_smallest_eighth_that_stays_at_least_the_target(
    size, orientation, target, scale
):
    assert jpeg_scale(ImageHeader("JPEG", *size, orientation, "RGB"), target) == Fraction(scale)
    assert jpeg_scale(ImageHeader("PNG", *size, 1, "RGB"), target) == 1


def test_web_photo_decodes_at_three_eighths_for_a_256_box():
    data = encode_sample(make_image(1024, 768, seed=4), "JPEG", quality=85)
    out = decode_image(data, min_size=(256, 256))
    assert out.shape == (288, 384, 3)  # 3/8; 1/4 would be 256x192, below the box


@pytest.mark.parametrize("size", [(1024, 768), (1001, 999), (300, 300), (640, 480), (97, 61)])
@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_decoded_size_is_what_jpeg_scale_predicts(size, orientation, mode):
    data = encode_sample(make_image(*size, seed=1), "JPEG", exif_orientation=orientation)
    out = decode_image(data, mode=mode, min_size=(256, 200))
    assert out.shape[:2] == _expected_shape(data, (256, 200))
    assert out.ndim == (3 if mode == "RGB" else 2)
    if min(size) >= 256:  # never below the box, as displayed
        assert out.shape[1] >= 256 and out.shape[0] >= 200


@pytest.mark.parametrize("min_size", [None, (64, 64)])
def test_cmyk_jpeg_goes_through_pillow(min_size):
    from PIL import Image

    pixels = make_image(320, 240, seed=8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buf, "JPEG", quality=95)
    out = decode_image(buf.getvalue(), min_size=min_size)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if min_size is not None:  # Pillow's draft: 1/2, 1/4 or 1/8, still at least the box
        assert out.shape == (120, 160, 3)  # 1/8 would be 40x30, 1/4 is 80x60 (< 64 high)
        ref = cv2.resize(ref, (160, 120), interpolation=cv2.INTER_AREA)
    assert psnr(out, ref) > 30


def test_probe_checks_the_header_only():
    header = probe_image(encode_sample(make_image(64, 32), "JPEG", exif_orientation=6))
    assert (header.format, header.width, header.height, header.orientation) == ("JPEG", 64, 32, 6)
    with pytest.raises(ImageTooLargeError):
        probe_image(decompression_bomb(20000, 20000))
    with pytest.raises(DecodeError, match="not an image"):
        probe_image(b"<html>")


def test_grey_jpeg_and_truncated_jpeg_through_the_fast_path(jpeg_backend):
    gray = encode_sample(make_image(64, 48, mode="L"), "JPEG")
    assert decode_image(gray, mode="L").shape == (48, 64)
    assert decode_image(gray).shape == (48, 64, 3)
    big = encode_sample(make_image(640, 480, seed=3), "JPEG")
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(truncated(big), min_size=(64, 64))


def test_damaged_jpeg_is_an_error_and_stray_bytes_between_markers_are_not():
    from PIL import Image

    data = encode_sample(make_image(640, 480, seed=9), "JPEG")
    half, sos = len(data) // 2, data.index(b"\xff\xda")
    with pytest.raises(DecodeError, match="corrupt or truncated JPEG .*Corrupt JPEG data"):
        decode_image(data[:half] + bytes(2000) + data[half + 2000 :])  # complete, but zeroed
    stray = data[:sos] + b"\x00\x00" + data[sos:]  # libjpeg warns; the pixels are intact
    expected = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(decode_image(stray), expected)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("progressive", [False, True])
def test_full_size_decode_is_pillows_pixels_exactly(mode, progressive):
    """The fast path loses nothing at scale 1: the very pixels Pillow decodes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(make_image(333, 222, seed=2, mode=mode)).save(
        buf, "JPEG", quality=90, progressive=progressive
    )
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(decode_image(buf.getvalue()), expected)
    grey = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    if mode == "L":
        np.testing.assert_array_equal(decode_image(buf.getvalue(), mode="L"), grey)


def test_phone_mpo_is_a_jpeg_oriented_and_reduced():
    """Pillow calls a JPEG with a Multi-Picture (MPF) segment MPO: first picture, EXIF applied."""
    from PIL import Image

    first, second = (Image.fromarray(make_image(640, 480, seed=s)) for s in (1, 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second], exif=exif.tobytes())
    assert probe_image(buf.getvalue()).orientation == 6
    out = decode_image(buf.getvalue(), min_size=(100, 100))
    assert out.shape == (160, 120, 3)  # 1/4 of 640x480 (1/8 is 80x60), turned upright
    ref = cv2.resize(np.rot90(np.asarray(first), k=-1), (120, 160), interpolation=cv2.INTER_AREA)
    assert psnr(out, ref) > 30


@pytest.fixture(scope="module")
def jpeg_91mp():
    """A flat grey 10000x9100 JPEG (91 MP: above Pillow's 89.5 MP warning), ~1 MB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (10000, 9100), 128).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def test_max_pixels_can_raise_the_limit_above_pillows(jpeg_91mp, jpeg_backend):
    """Before: Pillow's DecompressionBombWarning (89.5 MP) refused this even with 10**12."""
    out = decode_image(jpeg_91mp, "L", max_pixels=10**12, min_size=(1000, 900))
    assert out.shape == (1138, 1250) and abs(int(out.mean()) - 128) <= 2
    with pytest.raises(ImageTooLargeError, match="91,000,000 pixels exceeds max_pixels=90,000,000"):
        decode_image(jpeg_91mp, "L", max_pixels=90_000_000, min_size=(1000, 900))


def test_max_pixels_above_pillows_error_limit_on_the_pillow_path():
    """A 1-bit PNG goes through Pillow: 91 MP decodes in full; 180 MP (over Pillow's 179 MP
    DecompressionBombError) passes the header check with a high max_pixels."""
    png_91mp = decompression_bomb(10000, 9100)
    out = decode_image(png_91mp, "L", max_pixels=10**12)
    assert out.shape == (9100, 10000) and out.max() == 0
    del out
    png_180mp = decompression_bomb(20000, 9000)
    assert probe_image(png_180mp, max_pixels=10**12)[1:3] == (20000, 9000)
    with pytest.raises(ImageTooLargeError, match="max_pixels=179,999,999"):
        probe_image(png_180mp, max_pixels=179_999_999)


def test_max_pixels_can_lower_the_limit_and_pillow_keeps_its_own_elsewhere(jpeg_91mp):
    from PIL import Image

    small = encode_sample(make_image(200, 100), "PNG")
    with pytest.raises(ImageTooLargeError, match="20,000 pixels exceeds max_pixels=19,999"):
        probe_image(small, max_pixels=19_999)
    assert probe_image(small, max_pixels=20_000).width == 200
    with pytest.raises(Image.DecompressionBombError):  # outside mmbeam: Pillow as configured
        Image.open(io.BytesIO(decompression_bomb(20000, 9000)))
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(jpeg_91mp))


def test_concurrent_decodes_keep_their_own_limits(jpeg_91mp):
    """The limit is per call: threads with a high and a low max_pixels never mix them up."""
    import concurrent.futures

    def probe(i):
        limit = 10**12 if i % 2 else 10**6
        try:
            return i, probe_image(jpeg_91mp, max_pixels=limit).width
        except ImageTooLargeError:
            return i, None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(probe, range(400)))
    assert all((width == 10000) == bool(i % 2) for i, width in results)
