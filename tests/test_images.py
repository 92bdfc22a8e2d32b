"""Every class of bad image input becomes a named reason; good ones decode the same way every time."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from drim_data.pixels.images import ImageRejected, check_image, decode, reduced, to_rgb
from schemas.tool import global_view_size
from tests.conftest import SHIPS


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: the classic decompression bomb header, with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


REAL_JPEG = SHIPS.read_bytes()
_PNG = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)), "PNG")
_IDAT = _PNG.index(b"IDAT")
BAD_CRC_PNG = _PNG[: _IDAT + 40] + bytes([_PNG[_IDAT + 40] ^ 0xFF]) + _PNG[_IDAT + 41 :]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"hello, I am a text file pretending to be a photo", "not_an_image"),
        (REAL_JPEG[: len(REAL_JPEG) // 2], "truncated"),
        (png_header_only(100_000, 100_000), "too_many_pixels"),
        (png_header_only(3000, 3000), "too_many_pixels"),  # under PIL's own limit, over the recipe's
        (png_header_only(64, 64), "truncated"),  # IDAT too short for the claimed size
        (encoded(Image.fromarray(np.zeros((8, 8), np.uint16)), "PNG"), "unsupported_mode"),
        (encoded(Image.new("F", (8, 8)), "TIFF"), "unsupported_mode"),
        (BAD_CRC_PNG, "corrupt"),
    ],
    ids=["empty", "text", "truncated", "bomb", "over-limit", "short-idat", "16-bit", "float", "bad-crc"],
)
def test_bad_input_is_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected) as err:
        check_image(data, max_pixels=5_000_000)
    assert err.value.reason == reason


def test_real_photo_is_accepted_with_its_size():
    checked = check_image(REAL_JPEG, max_pixels=50_000_000)
    assert (checked.width, checked.height, checked.format) == (2001, 1749, "JPEG")
    assert not checked.exif_transposed


def test_exif_orientation_is_applied_on_every_decode():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(image, "JPEG", exif=exif.tobytes(), quality=95)
    checked = check_image(data, max_pixels=10_000)
    assert checked.exif_transposed and (checked.width, checked.height) == (20, 40)
    upright = np.asarray(decode(data))
    assert upright.shape == (40, 20, 3)
    assert upright[2, 10, 0] > 200 and upright[-3, 10, 2] > 200  # the red strip is now at the top
    assert np.asarray(reduced(data, 2)).shape == (20, 10, 3)  # mining's reduced decode is upright too


def test_transparency_is_flattened_onto_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    checked = check_image(encoded(rgba, "PNG"), max_pixels=100)
    assert checked.mode == "RGBA" and decode(encoded(rgba, "PNG")).mode == "RGB"


def test_global_view_is_downscaled_to_the_budget_never_upscaled():
    assert global_view_size(4000, 3000, 1_000_000) == (1154, 866)
    assert global_view_size(500, 400, 1_000_000) == (500, 400)


def test_the_recipe_pixel_limit_governs_not_pils(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # PIL's own bomb limit, below this 3.5 MP photo
    assert check_image(REAL_JPEG, max_pixels=4_000_000).width == 2001
    assert decode(REAL_JPEG).size == (2001, 1749)  # stored images were checked against the recipe at ingest
    with pytest.raises(ImageRejected) as err:
        check_image(REAL_JPEG, max_pixels=3_000_000)
    assert err.value.reason == "too_many_pixels" and "ingest.max_pixels: 3000000 (3 MP)" in err.value.detail
    assert Image.MAX_IMAGE_PIXELS == 1_000_000  # PIL's setting is left as it was


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_reduced_decode_matches_averaging_the_full_decode(factor):
    full = decode(REAL_JPEG)
    expected = np.asarray(full.reduce(factor), np.int16)
    view = np.asarray(reduced(REAL_JPEG, factor), np.int16)  # a JPEG scales in its DCT: close, not identical
    assert view.shape == expected.shape
    assert np.abs(view - expected).mean() < 1.0  # a one-pixel shift differs by 6 to 8
    png = io.BytesIO()
    full.save(png, format="PNG")
    assert np.array_equal(np.asarray(reduced(png.getvalue(), factor)), expected)  # other formats: exactly


def test_the_bomb_message_quotes_the_recipes_limit():
    with pytest.raises(ImageRejected) as err:
        check_image(png_header_only(40_000, 40_000), max_pixels=200_000_000)  # PIL's error path: over twice the limit
    assert err.value.reason == "too_many_pixels"
    assert "40000x40000 is 1600 MP, over ingest.max_pixels: 200000000 (200 MP)" == err.value.detail
