"""Images by reference: the one place an image's bytes are read, from the database or from where the image lives.

The database records each image's URI (a local path, any fsspec URL such as s3://, gs://, hf:// or file://, or a
dataset row, see `dataset_rows`), its byte size and its content hash, and holds its bytes only when the recipe
embeds them. Whatever is read back is checked against what ingest read, size first (cheap), then the hash: a
source that is gone or changed is a `Drop`, so a stage loses that image with a clear reason and goes on, and never
works on pixels other than those ingest checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from drim_data.errors import Drop
from drim_data.pixels import dataset_rows
from drim_data.pixels.images import sha256

SOURCE_MISSING = "source_missing"
SOURCE_CHANGED = "source_changed"
SOURCE_REASONS = (SOURCE_MISSING, SOURCE_CHANGED)


class SourceUnreadable(Exception):
    """A source that is there but cannot be read now (a permission, a network error): the item stays pending.

    Not an OSError, which the runner would take for this machine's own storage failing."""


@dataclass(frozen=True)
class ImageRef:
    image_id: str  # sha256 of the bytes: what must be read back
    uri: str
    size: int
    data: bytes | None = None  # the bytes themselves when the recipe embeds them (`ingest.embed`)


def image_ref(con, image_id: str) -> ImageRef:
    """The reference the database holds for an image (with its bytes, when embedded)."""
    row = con.execute("SELECT image_id, uri, size, data FROM images WHERE image_id = ?", [image_id]).fetchone()
    if row is None:
        raise Drop(SOURCE_MISSING, f"image {image_id} is no longer in the database")
    return ImageRef(*row)


def image_bytes(con, image_id: str) -> bytes:
    """An image's bytes, checked to be the content ingest read; a `Drop` when its source is gone or changed."""
    return read_image(image_ref(con, image_id))


def read_image(ref: ImageRef) -> bytes:
    """The referenced image's bytes: the embedded copy, else its source, checked against the recorded size and
    hash."""
    if ref.data is not None:
        return ref.data
    try:
        data = fetch(ref.uri)
    except FileNotFoundError as exc:
        raise Drop(SOURCE_MISSING, f"{ref.uri} is gone ({exc})") from None
    if len(data) != ref.size:
        raise Drop(SOURCE_CHANGED, f"{ref.uri} is {len(data)} bytes, not the {ref.size} ingest read")
    if sha256(data) != ref.image_id:
        raise Drop(SOURCE_CHANGED, f"{ref.uri} no longer has the content ingest read (sha256 {ref.image_id[:12]}…)")
    return data


def fetch(uri: str) -> bytes:
    """A source's bytes as they are now. FileNotFoundError when it is gone; `SourceUnreadable` when it is there
    but cannot be read."""
    try:
        if dataset_rows.is_row(uri):
            return dataset_rows.row_bytes(uri, fetch)
        if "://" not in uri:
            with open(uri, "rb") as f:
                return f.read()
        import fsspec

        with fsspec.open(uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise SourceUnreadable(f"cannot read {uri}: {type(exc).__name__}: {exc}") from None
