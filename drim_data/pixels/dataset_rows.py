"""Rows of a dataset with an image column, as image sources: a Hub dataset, local Parquet, or a save_to_disk folder.

A row is referred to by a URI that says all that reading it back needs, in any process:
`dataset:<path>?revision=<rev>&split=<split>&column=<image column>[&id=<id column>]#<row number or id>`.
The image column is read with `decode=False`, which gives the stored bytes (or a path to them) untouched, so a
photo has the same content id whether it comes from a folder or a dataset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from drim_data.errors import DrimError
from drim_data.recipe import DatasetSource

SCHEME = "dataset:"
BATCH_ROWS = 256  # rows listed at a time: their byte lengths only, never their bytes


def is_row(uri: str) -> bool:
    return uri.startswith(SCHEME)


def row_uri(source: DatasetSource, key: str) -> str:
    query = {"revision": source.revision, "split": source.split, "column": source.image_column}
    query["id"] = source.id_column
    params = urlencode({k: v for k, v in query.items() if v is not None})
    return f"{SCHEME}{quote(source.path, safe='/:@~+')}?{params}#{quote(key, safe='')}"


def parse_row_uri(uri: str) -> tuple[DatasetSource, str]:
    rest, _, key = uri.removeprefix(SCHEME).rpartition("#")
    path, _, params = rest.partition("?")
    query = dict(parse_qsl(params))
    source = DatasetSource(
        unquote(path), query.get("revision"), query["split"], query["column"], id_column=query.get("id")
    )
    return source, unquote(key)


@functools.lru_cache(maxsize=4)
def open_dataset(path: str, revision: str | None, split: str) -> Any:
    """The split as a `datasets.Dataset` (memory-mapped Arrow), loaded once per process. Local Parquet is read
    through `datasets` too, which copies it into its cache once."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(path)
    if local.is_dir() and any((local / f).exists() for f in ("state.json", "dataset_dict.json")):
        found = datasets.load_from_disk(path)
        return found[split] if isinstance(found, datasets.DatasetDict) else found
    if local.is_file():
        return datasets.load_dataset("parquet", data_files={split: path}, split=split)
    return datasets.load_dataset(path, revision=revision, split=split)


@functools.lru_cache(maxsize=4)
def _image_column(path: str, revision: str | None, split: str, column: str) -> Any:
    """The image column alone, read without decoding: each value is {bytes, path}."""
    import datasets

    ds = open_dataset(path, revision, split)
    if column not in ds.column_names:
        raise FileNotFoundError(f"{path} has no column {column!r}")
    return ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))


@functools.lru_cache(maxsize=4)
def _row_numbers(path: str, revision: str | None, split: str, id_column: str) -> dict[str, int]:
    ids = open_dataset(path, revision, split).select_columns([id_column]).with_format("arrow")[id_column]
    return {str(value): row for row, value in enumerate(ids.to_pylist())}


def row_bytes(uri: str, fetch: Callable[[str], bytes]) -> bytes:
    """The bytes of the image a row URI names (FileNotFoundError when the dataset or the row is gone); an image
    stored as a path is read from there with `fetch`."""
    source, key = parse_row_uri(uri)
    try:
        rows = _image_column(source.path, source.revision, source.split, source.image_column)
        if source.id_column:
            row = _row_numbers(source.path, source.revision, source.split, source.id_column).get(key)
        else:
            row = int(key)
        if row is None or not 0 <= row < len(rows):
            raise FileNotFoundError(f"no row {key!r} in {source.path} {source.split}")
        value = rows[row][source.image_column] or {}
    except (FileNotFoundError, DrimError):
        raise
    except Exception as exc:  # datasets raises many kinds for a dataset it cannot find or open
        raise FileNotFoundError(f"cannot open {source.path}: {type(exc).__name__}: {exc}") from None
    if value.get("bytes") is not None:
        return value["bytes"]
    return fetch(value["path"]) if value.get("path") else b""


@dataclass(frozen=True)
class Row:
    key: str  # the row's id, or its number
    size: int  # the image's byte length (0 when the row holds only a path)
    annotations: Any  # the row's annotations column, as stored


def list_rows(source: DatasetSource) -> tuple[str, dict, Iterator[Row]]:
    """The dataset's fingerprint (which changes when its files do), the annotations column's feature, and its rows.

    A dataset that cannot be opened, or lacks a named column, stops the run."""
    for cached in (open_dataset, _image_column, _row_numbers):  # each ingest sees the dataset as it is now
        cached.cache_clear()
    try:
        ds = open_dataset(source.path, source.revision, source.split)
    except Exception as exc:
        raise DrimError(
            f"ingest.dataset: cannot open {source.path} (split {source.split!r}"
            f"{f', revision {source.revision!r}' if source.revision else ''}): {type(exc).__name__}: {exc}"
        ) from None
    columns = [c for c in (source.image_column, source.id_column, source.annotations_column) if c]
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DrimError(f"ingest.dataset: {source.path} has no column {missing[0]!r} ({', '.join(ds.column_names)})")
    if not _holds_images(ds.features[source.image_column]):
        raise DrimError(
            f"ingest.dataset: column {source.image_column!r} of {source.path} holds "
            f"{ds.features[source.image_column]}, not images (a datasets Image feature, or bytes)"
        )
    feature = ds.features[source.annotations_column] if source.annotations_column else None
    return ds._fingerprint, feature, _rows(ds.select_columns(columns).with_format("arrow"), source)


def _holds_images(feature: Any) -> bool:
    import datasets

    return isinstance(feature, datasets.Image) or getattr(feature, "dtype", None) in ("binary", "large_binary")


def _rows(table: Any, source: DatasetSource) -> Iterator[Row]:
    import pyarrow.compute as pc

    start = 0
    for batch in table.iter(batch_size=BATCH_ROWS):
        images = batch[source.image_column]
        stored = images.combine_chunks().field("bytes") if images.type.num_fields else images
        sizes = pc.fill_null(pc.binary_length(stored), 0).to_pylist()
        ids = batch[source.id_column].to_pylist() if source.id_column else range(start, start + len(sizes))
        notes = batch[source.annotations_column].to_pylist() if source.annotations_column else [None] * len(sizes)
        for key, size, note in zip(ids, sizes, notes, strict=True):
            yield Row(str(key), size, note)
        start += len(sizes)
