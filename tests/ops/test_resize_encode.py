"""resize_image (stretch, fit, fill), crop/to_mode, and encode_image."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from mmbeam.errors import ConfigError, EncodeError, ImageError, ResizeError
from mmbeam.ops.encode import check_format, encode_image
from mmbeam.ops.image import crop, image_mode, to_mode
from mmbeam.ops.resize import check_resize, resize_image
from mmbeam.testing.images import make_image


@pytest.mark.parametrize(
    "mode, expected",
    [("stretch", (256, 256)), ("fit", (256, 192)), ("fill", (256, 256))],
)
def test_resize_modes_shapes(mode, expected):
    img = make_image(400, 300)  # 4:3 landscape
    out = resize_image(img, 256, 256, mode)
    assert out.shape == (expected[1], expected[0], 3)


def test_fit_keeps_aspect_and_fill_crops_the_centre():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 150:] = 255  # black left half, white right half
    fit = resize_image(img, 60, 60, "fit")
    assert fit.shape == (20, 60, 3)
    fill = resize_image(img, 60, 60, "fill")
    assert fill.shape == (60, 60, 3)
    # the crop keeps source columns 100..200: half black, half white
    assert fill[:, :25].max() < 60 and fill[:, 35:].min() > 200


def test_resize_gray_and_upscale():
    gray = make_image(10, 8, mode="L")
    assert resize_image(gray, 40, 32).shape == (32, 40)


def test_shrinking_by_two_or_more_averages_every_source_pixel():
    # every 4th column white: area averaging at 4x gives a flat 64; bilinear would sample
    # between the black columns and give 0
    lines = np.zeros((64, 64), np.uint8)
    lines[:, ::4] = 255
    quarter = resize_image(lines, 16, 16)
    assert quarter.min() >= 60 and quarter.max() <= 68


def test_small_shrink_ratios_stay_close_to_area_averaging():
    photo = make_image(384, 288)  # what a 3/8 JPEG decode leaves for a 256x256 box
    fast = resize_image(photo, 256, 256).astype(float)
    area = cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((fast - area) ** 2))
    assert psnr > 35


def test_resize_rejects_non_images():
    with pytest.raises(ResizeError, match="image array"):
        resize_image(np.zeros(5, np.uint8), 10, 10)
    with pytest.raises(ResizeError, match="str"):
        resize_image("cat.jpg", 10, 10)


@pytest.mark.parametrize("args", [(0, 10, "fit"), (10, -1, "fit"), (10, 10, "squash"), (2.5, 10, "fit")])
def test_check_resize_rejects(args):
    with pytest.raises(ConfigError):
        check_resize(*args)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_encode_round_trips(fmt):
    img = make_image(64, 48, seed=9)
    data = encode_image(img, fmt)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == fmt and decoded.size == (64, 48)


def test_encode_quality_and_alpha():
    img = make_image(200, 200, seed=4)
    assert len(encode_image(img, "JPEG", quality=20)) < len(encode_image(img, "JPEG", quality=95))
    rgba = make_image(32, 32, mode="RGBA")
    assert Image.open(io.BytesIO(encode_image(rgba, "jpg"))).mode == "RGB"
    assert Image.open(io.BytesIO(encode_image(rgba, "PNG"))).mode == "RGBA"


def test_encode_errors():
    with pytest.raises(ConfigError, match="GIFF"):
        check_format("GIFF")
    with pytest.raises(ConfigError, match="quality"):
        check_format("JPEG", 101)
    with pytest.raises(EncodeError, match="uint8"):
        encode_image(np.zeros((4, 4, 3), np.float32), "PNG")


def test_crop_and_to_mode():
    img = make_image(50, 40)
    assert crop(img, (10, 5, 20, 30)).shape == (30, 20, 3)
    assert crop(img, (40, 30, 100, 100)).shape == (10, 10, 3)  # clipped to the image
    with pytest.raises(ImageError, match="outside"):
        crop(img, (60, 0, 5, 5))
    assert image_mode(to_mode(img, "L")) == "L"
    assert to_mode(img, "RGB") is img


@pytest.mark.parametrize("shape", [(37, 53, 3), (37, 53), (40, 30, 4), (40, 30, 2)])
@pytest.mark.parametrize("quality", [None, 10, 95])
def test_jpeg_bytes_are_what_pillow_writes(shape, quality):
    """The OpenCV fast path keeps Pillow's defaults: the very same file."""
    pixels = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    img = Image.fromarray(pixels)
    if img.mode in ("RGBA", "LA"):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    buf = io.BytesIO()
    img.save(buf, "JPEG", **({} if quality is None else {"quality": quality}))
    assert encode_image(pixels, "JPEG", quality) == buf.getvalue()
    flipped = pixels[:, ::-1]  # a non-contiguous view encodes too
    assert Image.open(io.BytesIO(encode_image(flipped))).size == (shape[1], shape[0])


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
@pytest.mark.parametrize("quality", [None, 95])
def test_photo_jpeg_bytes_are_what_pillow_writes(name, quality):
    """Real photos (colour and grey) too: no faster encoder that drifts from Pillow's pixels."""
    pixels = resize_image(getattr(pytest.importorskip("skimage.data"), name)(), 256, 192)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **({} if quality is None else {"quality": quality}))
    assert encode_image(pixels, "JPEG", quality) == buf.getvalue()
