"""Safe image decoding: every way a file can be unusable becomes a named reason instead of an exception."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.tool import min_side_in_global_view  # noqa: F401  (its home is schemas.tool, with the view)

# Pillow stores a large image as a chain of blocks, 16 MB each by default. glibc serves blocks that size from its heap
# once the first has been freed, and keeps them after a 100-megapixel image is freed; blocks over its 32 MB limit
# are mapped and handed back to the system on free, so the next stage or shard starts from what it needs.
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(64 << 20)

# File extensions of raster image formats: a file with one of these that the recipe's `ingest.extensions` leaves out
# is recorded as a drop, not passed over in silence; any other file (labels, notes) is not an image and is ignored.
IMAGE_EXTENSIONS = {
    ".apng", ".avif", ".bmp", ".dib", ".gif", ".heic", ".heif", ".ico", ".j2k", ".jp2", ".jpe", ".jpeg", ".jfif",
    ".jpg", ".jpx", ".pbm", ".pgm", ".png", ".pnm", ".ppm", ".psd", ".qoi", ".tga", ".tif", ".tiff", ".webp",
}  # fmt: skip

# Modes with a faithful RGB rendering; 16-bit, float and exotic modes need a tone mapping we will not guess.
CONVERTIBLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CheckedImage:
    image_id: str  # sha256 of the file's bytes: identical files collapse to one image
    data: bytes  # what is stored: the file itself, or a lossless PNG when EXIF orientation had to be applied
    width: int
    height: int
    format: str
    mode: str
    exif_transposed: bool


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_image(data: bytes, max_pixels: int) -> CheckedImage:
    """Decode a file once, refusing anything we could not later decode the same way.

    A JPEG is decoded at 1/8 scale: every coded block is still read (so truncation is caught), in 1/64 of the memory.
    """
    if not data:
        raise ImageRejected("empty_file")
    try:
        with pixel_limit(None):  # the header only: the size is checked below, against the recipe's limit
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "no decoder recognises the content") from None
    except Exception as exc:  # malformed headers raise many types
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise too_many_pixels(width, height, max_pixels)
    if width == 0 or height == 0:
        raise ImageRejected("corrupt", f"zero-sized image {width}x{height}")
    if image.mode not in CONVERTIBLE_MODES:
        raise ImageRejected("unsupported_mode", f"mode {image.mode} has no faithful RGB rendering")
    mode = image.mode
    if image.format == "JPEG" and not _turned(image):  # a JPEG's EXIF is read without decoding; a PNG's is not
        image.draft(mode, (width // 8, height // 8))
    try:
        image.load()
    except Exception as exc:  # truncated streams, broken chunks, bad CRCs
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from None
    fmt, turned = image.format or "unknown", _turned(image)
    if not turned:
        return CheckedImage(sha256(data), data, width, height, fmt, mode, False)
    upright = ImageOps.exif_transpose(image)  # stored upright, so every later stage sees what a person sees
    return CheckedImage(sha256(data), encode_png(upright), upright.width, upright.height, fmt, mode, True)


def too_many_pixels(width: int, height: int, max_pixels: int) -> ImageRejected:
    """The refusal of a decompression bomb, quoting the recipe's limit (PIL's own message quotes twice its limit)."""
    return ImageRejected(
        "too_many_pixels",
        f"{width}x{height} is {width * height / 1e6:g} MP, over ingest.max_pixels: {max_pixels} "
        f"({max_pixels / 1e6:g} MP)",
    )


def _turned(image: Image.Image) -> bool:
    return int(image.getexif().get(0x0112, 1)) not in (0, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency flattened onto white, so transparent pixels do not turn into arbitrary colours."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode(data: bytes) -> Image.Image:
    """Decode stored bytes (already checked and oriented at ingest) to RGB."""
    with pixel_limit(None):  # ingest has applied the recipe's limit
        image = Image.open(io.BytesIO(data))
    return to_rgb(image)


def reduced(data: bytes, factor: int) -> Image.Image:
    """Stored bytes as RGB at 1/factor of their size (a power of two; sides rounded up, blocks averaged).

    A JPEG decodes straight at 1/2, 1/4 or 1/8 scale through its DCT, which costs about half a full decode and
    never holds the full-size pixels; other formats decode fully and are then reduced.
    """
    with pixel_limit(None):  # ingest has applied the recipe's limit
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    image.draft(image.mode, (width // factor, height // factor))  # a no-op for formats without scaled decoding
    image = to_rgb(image)
    rest = factor // round(width / image.width)
    return image.reduce(rest) if rest > 1 else image


def thumbnail(data: bytes, side: int) -> Image.Image:
    """Stored bytes as an RGB image within side x side; a JPEG decodes straight at a reduced scale."""
    with pixel_limit(None):  # ingest has applied the recipe's limit
        image = Image.open(io.BytesIO(data))
    image.draft("RGB", (side, side))
    image = to_rgb(image)
    image.thumbnail((side, side))
    return image


@contextmanager
def pixel_limit(pixels: int | None) -> Iterator[None]:
    """PIL refuses images over its own process-wide limit (89 MP); the recipe's `ingest.max_pixels` is the limit."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
