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
    width: int  # as a person sees it: EXIF orientation applied
    height: int
    format: str
    mode: str
    exif_transposed: bool  # the file's pixels are turned by its EXIF orientation; every decode below turns them


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
    if image.format == "JPEG":
        image.draft(mode, (width // 8, height // 8))
    try:
        image.load()
    except Exception as exc:  # truncated streams, broken chunks, bad CRCs
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from None
    orientation = _orientation(image)  # read after loading: a PNG may keep its EXIF after the pixels
    if orientation in SIDEWAYS:
        width, height = height, width
    return CheckedImage(width, height, image.format or "unknown", mode, orientation not in (0, 1))


def too_many_pixels(width: int, height: int, max_pixels: int) -> ImageRejected:
    """The refusal of a decompression bomb, quoting the recipe's limit (PIL's own message quotes twice its limit)."""
    return ImageRejected(
        "too_many_pixels",
        f"{width}x{height} is {width * height / 1e6:g} MP, over ingest.max_pixels: {max_pixels} "
        f"({max_pixels / 1e6:g} MP)",
    )


SIDEWAYS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except (TypeError, ValueError):
        return 1


def _upright(image: Image.Image) -> Image.Image:
    """The pixels as a person sees them: a file's EXIF orientation applied, as ingest measured its size.

    Images are kept as their files (their content hash is their identity), so the turn is made on every decode."""
    return ImageOps.exif_transpose(image) if _orientation(image) not in (0, 1) else image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency flattened onto white, so transparent pixels do not turn into arbitrary colours."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _open(data: bytes) -> Image.Image:
    with pixel_limit(None):  # ingest has applied the recipe's limit
        return Image.open(io.BytesIO(data))


def decode(data: bytes) -> Image.Image:
    """Decode an image checked at ingest to upright RGB."""
    return to_rgb(_upright(_open(data)))


def reduced(data: bytes, factor: int) -> Image.Image:
    """An image checked at ingest as upright RGB at 1/factor of its size (a power of two; sides rounded up, blocks
    averaged).

    A JPEG decodes straight at 1/2, 1/4 or 1/8 scale through its DCT, which costs about half a full decode and
    never holds the full-size pixels; other formats decode fully and are then reduced.
    """
    image = _open(data)
    width, height = image.size
    image.draft(image.mode, (width // factor, height // factor))  # a no-op for formats without scaled decoding
    rest = factor // round(width / image.width)
    image = to_rgb(_upright(image))
    return image.reduce(rest) if rest > 1 else image


def thumbnail(data: bytes, side: int) -> Image.Image:
    """An image checked at ingest as upright RGB within side x side; a JPEG decodes straight at a reduced scale."""
    image = _open(data)
    image.draft("RGB", (side, side))
    image = to_rgb(_upright(image))
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
