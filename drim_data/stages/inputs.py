"""What ingest's input holds now: a local folder, a folder behind any fsspec URL, or the rows of a dataset.

Each image found is an `Entry`: where to read it (its URI), its name under the input (what annotations call it),
and its size and stamp, which tell ingest whether it changed since it was last read without reading it. Listing a
folder or dataset that cannot be reached stops the run; an image-like file that cannot be used is refused with a
reason.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from drim_data.errors import DrimError, RunFault
from drim_data.pixels import dataset_rows
from drim_data.pixels.annotations import Box, class_names, column_boxes
from drim_data.pixels.images import IMAGE_EXTENSIONS
from drim_data.recipe import URL, DatasetSource, IngestConfig

# What tells a remote file changed without reading it, in the order stores offer them (S3, GCS, the Hub, local).
STAMP_KEYS = ("ETag", "etag", "md5Hash", "generation", "blob_id", "mtime", "LastModified", "last_modified", "created")


@dataclass(frozen=True)
class Entry:
    uri: str  # where to read it: a local absolute path, a URL, or a dataset row
    name: str  # its path under the input folder, or its row id: how annotations name it
    size: int
    stamp: str  # a modification time, an etag or a dataset's fingerprint: a changed stamp means read it again


@dataclass
class Listing:
    entries: list[Entry] = field(default_factory=list)  # in URI order
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (uri, reason, detail)
    boxes: dict[str, list[tuple[str, Box]]] = field(default_factory=dict)  # a dataset column's: name -> (entry, box)


def list_input(cfg: IngestConfig) -> Listing:
    if cfg.dataset is not None:
        listing = list_dataset(cfg.dataset)
    elif URL.match(cfg.images):
        listing = list_url(cfg.images, cfg.extensions)
    else:
        listing = list_folder(Path(cfg.images), cfg.extensions)
    listing.entries.sort(key=lambda e: e.uri)
    return listing


def _refusal(name: str, allowed: set[str]) -> tuple[str, str] | None:
    """Why an image-like file is left out, or None for an image to read; other files are not images ('skip')."""
    suffix = posixpath.splitext(name)[1].lower()
    if suffix in allowed:
        return None
    if suffix not in IMAGE_EXTENSIONS:
        return ("skip", "")
    return ("unsupported_extension", f"{suffix} is not in ingest.extensions {sorted(allowed)}")


def list_folder(folder: Path, extensions: list[str]) -> Listing:
    """The image files under a local folder, following symlinked folders; every image-like file left out has a
    reason. Files whose extension is no image format's (labels, notes) are not images and are passed over."""
    if not folder.is_dir():
        raise DrimError(f"ingest.images: {folder} is not a folder")
    allowed = {e.lower() for e in extensions}
    listing = Listing()

    def walk(directory: Path, ancestors: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            listing.refused.append((str(directory), "unreadable_folder", str(exc)))
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # follows a symlinked folder, unless it leads back into a folder being walked
                real = os.path.realpath(path)
                if real in ancestors:
                    listing.refused.append((str(path), "symlink_loop", f"leads back to {real}"))
                else:
                    walk(path, ancestors | {real})
                continue
            refusal = _refusal(path.name, allowed)
            if refusal and refusal[0] == "skip":
                continue
            if entry.is_symlink() and not path.exists():
                listing.refused.append((str(path), "dangling_symlink", f"links to {os.readlink(path)}, which is gone"))
            elif refusal:
                listing.refused.append((str(path), *refusal))
            elif entry.is_file():
                st = entry.stat()
                name = path.relative_to(folder).as_posix()
                listing.entries.append(Entry(str(path), name, st.st_size, str(st.st_mtime_ns)))

    walk(folder, frozenset({os.path.realpath(folder)}))
    return listing


def list_url(url: str, extensions: list[str]) -> Listing:
    """The image files under a folder behind an fsspec URL, with the sizes and stamps its store lists."""
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
        if not fs.isdir(root):
            raise DrimError(f"ingest.images: {url} is not a folder")
        found = fs.find(root, detail=True)
    except DrimError:
        raise
    except Exception as exc:  # no such protocol or its package, refused credentials, an unreachable store
        raise RunFault(f"ingest.images: cannot list {url}: {type(exc).__name__}: {exc}") from None
    allowed = {e.lower() for e in extensions}
    listing = Listing()
    root = root.rstrip("/")
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        uri, refusal = fs.unstrip_protocol(path), _refusal(path, allowed)
        if refusal and refusal[0] == "skip":
            continue
        if refusal:
            listing.refused.append((uri, *refusal))
            continue
        stamp = next((str(info[k]) for k in STAMP_KEYS if info.get(k) is not None), "")
        listing.entries.append(Entry(uri, posixpath.relpath(path, root), int(info.get("size") or 0), stamp))
    return listing


def list_dataset(source: DatasetSource) -> Listing:
    """One entry per row, stamped with the dataset's fingerprint; the boxes of its annotations column, if any."""
    fingerprint, feature, rows = dataset_rows.list_rows(source)
    names = class_names(feature)
    listing, seen = Listing(), set()
    for row in rows:
        if row.key in seen:
            raise DrimError(f"ingest.dataset.id_column: {source.id_column!r} is not unique: {row.key!r} repeats")
        seen.add(row.key)
        uri = dataset_rows.row_uri(source, row.key)
        listing.entries.append(Entry(uri, row.key, row.size, fingerprint))
        if source.annotations_column:
            where = f"{source.path}: row {row.key}: {source.annotations_column}"
            boxes = column_boxes(row.annotations, names, where)
            if boxes:
                listing.boxes[row.key] = [(uri, box) for box in boxes]
    return listing
