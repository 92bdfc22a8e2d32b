"""Versions you can trust: every use of a version folder first passes the manifest contract (schemas/manifest.py),
the same check drim-train makes before training.

A version folder is self-contained, so two versions are compared from their Parquet shards alone: an item is its
row `id`; it changed when any of its fields or image bytes differ (moving between splits counts).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from drim_data.errors import DrimError
from schemas import manifest as manifest_contract


def prepare_folder(version_dir: Path, folder: Path | None, kind: str, built_by: list[str], option: str) -> Path:
    """An empty output folder for a version: the given one, else `OUT/<dataset>/<kind>/v<N>` beside the versions
    (never inside one: versions are immutable). A previous build (it holds `built_by`) is replaced; anything
    else is refused rather than deleted."""
    folder = Path(folder) if folder else version_dir.parent / kind / version_dir.name
    if folder.exists():
        if any(folder.iterdir()) and not all((folder / name).exists() for name in built_by):
            raise DrimError(f"{folder} exists and was not built by drim-data {kind}; choose another {option}")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def verify_version(version_dir: Path) -> dict:
    """The manifest as written, with rows for every split (a version from before the test split has 0 test rows),
    once the version passes `schemas.manifest.verify_version`; a DrimError otherwise."""
    try:
        verified = manifest_contract.verify_version(Path(version_dir))
    except manifest_contract.ManifestError as exc:
        raise DrimError(str(exc)) from None
    return {**verified.fields, "rows": verified.rows}


def iter_rows(version_dir: Path, manifest: dict, columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """(split, row) for every row of every shard, a few rows at a time so large versions stay out of memory."""
    for rel in sorted(manifest["shards"]):
        split = Path(rel).parent.name
        parquet = pq.ParquetFile(Path(version_dir) / rel)
        wanted = [c for c in columns if c in parquet.schema_arrow.names] if columns else None
        for batch in parquet.iter_batches(batch_size=64, columns=wanted):
            for row in batch.to_pylist():
                yield split, row


def row_digest(split: str, row: dict) -> str:
    """A hash of the row's content: its fields as canonical JSON, with each image replaced by its bytes' sha256."""
    content = {k: v for k, v in row.items() if k != "images"}
    images = [hashlib.sha256(img["bytes"] or b"").hexdigest() for img in row.get("images") or []]
    payload = json.dumps([split, content, images], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def item_digests(version_dir: Path) -> dict[str, str]:
    """Item id -> content digest, for a verified version."""
    manifest = verify_version(version_dir)
    return {row["id"]: row_digest(split, row) for split, row in iter_rows(version_dir, manifest)}


@dataclass
class VersionDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"+{len(self.added)} -{len(self.removed)} ~{len(self.changed)}"


def diff_digests(old: dict[str, str], new: dict[str, str]) -> VersionDiff:
    return VersionDiff(
        added=sorted(new.keys() - old.keys()),
        removed=sorted(old.keys() - new.keys()),
        changed=sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
    )


def compare_versions(old_dir: Path, new_dir: Path) -> VersionDiff:
    """Items added, removed and changed from `old_dir` to `new_dir`; both are verified first."""
    return diff_digests(item_digests(old_dir), item_digests(new_dir))


@dataclass
class VersionInfo:
    version: int
    parent: int | None
    recipe_hash: str
    created_at: str
    rows: dict[str, int]
    path: Path
    state: str  # "ok", "missing" or why the folder cannot be trusted
    diff: VersionDiff | None = None  # against the parent (or nothing, for a first version), when both are intact


def list_versions(con: duckdb.DuckDBPyConnection) -> list[VersionInfo]:
    """Every version the recipe's database exported, checked on disk, each with its difference from its parent."""
    rows = con.execute(
        "SELECT version, parent, recipe_hash, path, created_at FROM exports ORDER BY version"
    ).fetchall()
    infos: list[VersionInfo] = []
    digests: dict[int, dict[str, str]] = {}
    for version, parent, recipe_hash, path, created_at in rows:
        path = Path(path)
        info = VersionInfo(version, parent, recipe_hash, str(created_at)[:19], {}, path, "ok")
        if not (path / manifest_contract.MANIFEST).exists():
            info.state = "missing"
        else:
            try:
                manifest = verify_version(path)
                digests[version] = {row["id"]: row_digest(split, row) for split, row in iter_rows(path, manifest)}
                info.rows = manifest["rows"]
            except DrimError as exc:
                info.state = f"refused: {exc}"
        if version in digests and (parent is None or parent in digests):
            info.diff = diff_digests(digests.get(parent, {}), digests[version])
        infos.append(info)
    return infos
