"""The one DuckDB file per recipe that holds all state; "what is left to do" is always a query against it."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import duckdb

from drim_data.errors import DrimError

DB_SCHEMA_VERSION = "5"  # 2: teacher calls record status, error, attempts and batch use; 3: regions unmeasured;
# 4: annotations keep their attributes, and each image the classes it has complete boxes for; 5: images by
# reference (uri, size; data only when embedded), files stamped by mtime, etag or dataset fingerprint

DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS stage_state (stage VARCHAR PRIMARY KEY, fingerprint VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS stage_runs (
    stage VARCHAR, recipe_hash VARCHAR, code_version VARCHAR, started_at TIMESTAMP, seconds DOUBLE,
    processed INTEGER, counts JSON);
CREATE TABLE IF NOT EXISTS done (stage VARCHAR, item_id VARCHAR, PRIMARY KEY (stage, item_id));
CREATE TABLE IF NOT EXISTS drops (stage VARCHAR, item_id VARCHAR, reason VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS files (
    path VARCHAR PRIMARY KEY, size BIGINT, stamp VARCHAR, image_id VARCHAR, status VARCHAR);
CREATE TABLE IF NOT EXISTS images (
    image_id VARCHAR PRIMARY KEY, uri VARCHAR, size BIGINT, width INTEGER, height INTEGER, format VARCHAR,
    mode VARCHAR, exif_transposed BOOLEAN, data BLOB);
CREATE TABLE IF NOT EXISTS annotations (
    image_id VARCHAR, label VARCHAR, x1 DOUBLE, y1 DOUBLE, x2 DOUBLE, y2 DOUBLE, source VARCHAR, attributes JSON);
CREATE TABLE IF NOT EXISTS complete_categories (image_id VARCHAR, label VARCHAR, PRIMARY KEY (image_id, label));
CREATE TABLE IF NOT EXISTS regions (
    region_id VARCHAR PRIMARY KEY, image_id VARCHAR, source VARCHAR, label VARCHAR,
    x1 INTEGER, y1 INTEGER, x2 INTEGER, y2 INTEGER, score DOUBLE);
CREATE TABLE IF NOT EXISTS names (
    region_id VARCHAR PRIMARY KEY, image_id VARCHAR, x1 INTEGER, y1 INTEGER, x2 INTEGER, y2 INTEGER, score DOUBLE,
    label VARCHAR, description VARCHAR);
CREATE TABLE IF NOT EXISTS teacher_calls (
    call_key VARCHAR PRIMARY KEY, stage VARCHAR, model VARCHAR, purpose VARCHAR, request JSON, response JSON,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s DOUBLE, created_at TIMESTAMP,
    status VARCHAR, error VARCHAR, attempts INTEGER, via_batch BOOLEAN);
CREATE TABLE IF NOT EXISTS teacher_batches (
    batch_id VARCHAR PRIMARY KEY, model VARCHAR, stage VARCHAR, status VARCHAR, requests JSON, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS votes (
    question_id VARCHAR, role VARCHAR, idx INTEGER, answer VARCHAR, correct BOOLEAN);
CREATE TABLE IF NOT EXISTS questions (
    question_id VARCHAR PRIMARY KEY, image_id VARCHAR, question_type VARCHAR, question VARCHAR, options JSON,
    answer VARCHAR, checker VARCHAR, label VARCHAR, target_region_ids JSON, target_boxes JSON, referent JSON);
CREATE TABLE IF NOT EXISTS verdicts (
    question_id VARCHAR PRIMARY KEY, kept BOOLEAN, reason VARCHAR, min_side_global DOUBLE, difficulty VARCHAR);
CREATE TABLE IF NOT EXISTS trajectories (
    question_id VARCHAR PRIMARY KEY, trajectory_id VARCHAR, pattern VARCHAR, messages JSON, zoom_boxes_px JSON);
CREATE TABLE IF NOT EXISTS observations (
    question_id VARCHAR, turn INTEGER, bbox_2d JSON, box_px JSON, crop BLOB, crop_sha256 VARCHAR,
    PRIMARY KEY (question_id, turn));
CREATE TABLE IF NOT EXISTS exports (
    version INTEGER PRIMARY KEY, parent INTEGER, fingerprint VARCHAR, recipe_hash VARCHAR, path VARCHAR,
    rows_sft INTEGER, rows_rl INTEGER, created_at TIMESTAMP);
"""

# name labels proposals and removes those it drops, keeping each as mining wrote it (label NULL: removed); ground's
# reset undoes that first, so that ground reruns on the proposals mining wrote
UNNAME = [
    "INSERT OR IGNORE INTO regions SELECT region_id, image_id, 'proposal', 'object', x1, y1, x2, y2, score "
    "FROM names WHERE label IS NULL",
    "UPDATE regions SET label = 'object' WHERE region_id IN (SELECT region_id FROM names)",
    "DELETE FROM names",
]
# How to undo what each stage wrote; a stage whose settings changed is undone, and everything downstream.
STAGE_RESETS = {
    "ingest": [
        "DELETE FROM files",
        "DELETE FROM images",
        "DELETE FROM annotations",
        "DELETE FROM complete_categories",
    ],
    "mine": ["DELETE FROM regions", "DELETE FROM names"],
    # ground adds teacher regions and names the mined proposals it recognises
    "ground": [
        *UNNAME,
        "DELETE FROM regions WHERE source = 'teacher'",
        "UPDATE regions SET label = 'object' WHERE source = 'proposal'",
    ],
    "name": UNNAME,
    "generate": ["DELETE FROM questions"],
    "verify": ["DELETE FROM verdicts", "DELETE FROM votes"],
    "trajectories": ["DELETE FROM trajectories", "DELETE FROM observations"],
}


def connect(path: Path) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) a recipe's database; a second writer gets a clear error, not corruption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise DrimError(
                f"{path} is in use by another drim-data process; wait for it to finish or stop it. ({exc})"
            ) from None
        raise DrimError(f"cannot open {path}: {exc}") from None
    con.execute(DDL)
    found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if found is None:
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [DB_SCHEMA_VERSION])
    elif found[0] != DB_SCHEMA_VERSION:
        raise DrimError(f"{path} has database schema {found[0]}; this drim-data uses {DB_SCHEMA_VERSION}")
    return con


def read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """Open a recipe's existing database to read. While a run holds it, DuckDB lets no other process in, so read
    a private copy of it (its file and log) instead: what the run has committed so far."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise DrimError(f"cannot open {path}: {exc}") from None
        folder = Path(tempfile.mkdtemp(prefix="drim-read-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        for suffix in ("", ".wal"):
            if path.with_name(path.name + suffix).exists():
                shutil.copy2(path.with_name(path.name + suffix), folder / (path.name + suffix))
        con = duckdb.connect(str(folder / path.name), read_only=True)
    found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if found is None or found[0] != DB_SCHEMA_VERSION:
        con.close()
        raise DrimError(f"{path} has database schema {found and found[0]}; this drim-data uses {DB_SCHEMA_VERSION}")
    return con


def reset_stage(con: duckdb.DuckDBPyConnection, stage: str) -> None:
    """Forget a stage's outputs, markers and drops (teacher calls stay cached)."""
    for statement in STAGE_RESETS[stage]:
        con.execute(statement)
    con.execute("DELETE FROM done WHERE stage = ?", [stage])
    con.execute("DELETE FROM drops WHERE stage = ?", [stage])
