"""The version folder's contract, read by drim-data and drim-train alike: `manifest.json` names the format and the
row schema it was written with and lists every shard with its row count and sha256.

A version is trusted only after `verify_version`: the format and schema versions are ones this code reads, every
listed shard is there with the listed sha256 and row count, the counts add up to the manifest's rows, and no
unlisted Parquet file sits in `data/`. Readers then read the listed shards, never whatever a folder holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from schemas.rows import SCHEMA_VERSION, SPLITS

FORMAT_NAME = "drim-shards"
FORMAT_REVISION = 2  # bumped when the folder layout or the manifest's required fields change
FORMAT = f"{FORMAT_NAME}/{FORMAT_REVISION}"
# the splits each readable revision holds: 2 added the held-out `test` split; a revision-1 version reads as one
# whose test split is empty
REVISION_SPLITS = {1: ("sft", "rl"), 2: tuple(SPLITS)}
MANIFEST = "manifest.json"
DATA = "data"


class ManifestError(ValueError):
    """A folder that is not an intact version this code can read; the message says which file and why."""


class SchemaVersionError(ManifestError):
    """The version's rows were written for another row schema than the one this code was written for."""


@dataclass(frozen=True)
class Shard:
    path: str  # relative to the version folder: data/<split>/train-00000-of-00001.parquet
    rows: int
    sha256: str

    @property
    def split(self) -> str:
        return PurePosixPath(self.path).parent.name


@dataclass(frozen=True)
class Manifest:
    folder: Path
    fields: dict  # manifest.json as written
    shards: tuple[Shard, ...]

    @property
    def rows(self) -> dict[str, int]:
        """Rows per split, every split this code knows (0 for one the version's format predates)."""
        return {split: self.fields["rows"].get(split, 0) for split in SPLITS}

    def split_shards(self, split: str) -> list[Shard]:
        return [s for s in self.shards if s.split == split]

    def files(self, split: str) -> list[str]:
        """Absolute paths of the split's listed shards, in order: what a reader loads."""
        return [str(self.folder / s.path) for s in self.split_shards(split)]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_entry(path: Path) -> dict:
    """What the manifest lists for a written shard: its row count (from the Parquet footer) and sha256."""
    return {"rows": pq.ParquetFile(path).metadata.num_rows, "sha256": file_sha256(path)}


def new_manifest(shards: dict[str, dict], rows: dict[str, int], **fields) -> dict:
    """A manifest with this code's format and schema versions; `fields` are the version's own (dataset, version...)."""
    return {"format": FORMAT, **fields, "schema_version": SCHEMA_VERSION, "rows": rows, "shards": shards}


def read_manifest(folder: Path) -> dict:
    """manifest.json as written, unchecked: for messages and for folders that may not be versions."""
    path = Path(folder) / MANIFEST
    try:
        fields = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{folder} has no {MANIFEST}: not a version folder such as OUT/<dataset>/v1") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ManifestError(f"{path} is not a JSON object")
    return fields


def verify_version(folder: Path) -> Manifest:
    """The version's manifest, once its format, schema version and every shard are checked (see the module doc)."""
    folder = Path(folder)
    fields = read_manifest(folder)
    splits = REVISION_SPLITS[_check_format(folder, fields.get("format"))]
    found = fields.get("schema_version")
    if found != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{folder} was exported with row schema version {found!r}, but this code reads schema version "
            f"{SCHEMA_VERSION!r}. Re-export the data with a matching drim-data, or use a matching drim-train."
        )
    shards = _listed_shards(folder, fields, splits)
    for shard in shards:
        _check_shard(folder, shard)
    rows = fields.get("rows")
    for split in splits:
        listed = sum(s.rows for s in shards if s.split == split)
        if not isinstance(rows, dict) or rows.get(split) != listed:
            said = rows.get(split) if isinstance(rows, dict) else None
            raise ManifestError(f"{folder}: {MANIFEST} says {said!r} {split} rows, its {split} shards hold {listed}")
    listed_paths = {s.path for s in shards}
    extra = sorted(
        p.relative_to(folder).as_posix() for p in (folder / DATA).glob("**/*.parquet") if p.is_file() or p.is_symlink()
    )
    extra = [rel for rel in extra if rel not in listed_paths]
    if extra:
        raise ManifestError(
            f"{folder}: {extra[0]} is not listed in {MANIFEST}; the version was modified after export "
            "(versions are immutable: export a new one instead)"
        )
    return Manifest(folder, fields, tuple(shards))


def _check_format(folder: Path, found: object) -> int:
    """The format revision, once it is one this code reads."""
    name, _, revision = str(found).partition("/")
    if found is None or name != FORMAT_NAME or not revision.isdigit():
        raise ManifestError(f"{folder}: {MANIFEST} names format {found!r}, not {FORMAT!r}; this is not a drim version")
    if int(revision) not in REVISION_SPLITS:
        newer = "a newer" if int(revision) > FORMAT_REVISION else "an older"
        raise ManifestError(
            f"{folder} is in format {found} (written by {newer} drim-data), but this code reads {FORMAT}; "
            "use a matching drim-data / drim-train, or re-export the version"
        )
    return int(revision)


def _listed_shards(folder: Path, fields: dict, splits: tuple[str, ...]) -> list[Shard]:
    listed = fields.get("shards")
    if not isinstance(listed, dict) or not listed:
        raise ManifestError(f"{folder}: {MANIFEST} lists no shards")
    shards = []
    for rel, info in sorted(listed.items()):
        parts = PurePosixPath(rel).parts
        if len(parts) != 3 or parts[0] != DATA or parts[1] not in splits or not rel.endswith(".parquet"):
            under = " or ".join(f"{DATA}/{split}" for split in splits)
            raise ManifestError(f"{folder}: {MANIFEST} lists {rel!r}, which is not a shard under {under}")
        if not (isinstance(info, dict) and isinstance(info.get("rows"), int) and isinstance(info.get("sha256"), str)):
            raise ManifestError(f"{folder}: {MANIFEST} gives {rel} no row count and sha256")
        shards.append(Shard(rel, info["rows"], info["sha256"]))
    return shards


def _check_shard(folder: Path, shard: Shard) -> None:
    path = folder / shard.path
    if not path.is_file():
        raise ManifestError(f"{folder}: {shard.path} is listed in {MANIFEST} but missing")
    found = file_sha256(path)
    if found != shard.sha256:
        raise ManifestError(
            f"{folder}: {shard.path} has sha256 {found[:12]}… but {MANIFEST} says {shard.sha256[:12]}…; "
            "the version was modified after export (versions are immutable: export a new one instead)"
        )
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ManifestError(f"{folder}: {shard.path} is not a readable Parquet file ({exc})") from None
    if rows != shard.rows:
        raise ManifestError(f"{folder}: {shard.path} holds {rows} rows but {MANIFEST} says {shard.rows}")
