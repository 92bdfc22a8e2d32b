"""Runs the stages in order against the recipe's database; every stage is resumable and idempotent.

Each stage's settings are fingerprinted (chained with the stages before it): when they change, that stage and
everything downstream start over, while cached teacher calls are kept. Work is committed in small batches, so a
killed run loses at most one batch and a rerun picks up exactly what is missing.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb

from drim_data import __version__, stages
from drim_data.db import connect, reset_stage
from drim_data.errors import DrimError
from drim_data.recipe import Recipe, sha256_json, to_plain
from drim_data.stages.contract import Context, StageStats, Track, _no_progress, as_run_fault, is_interrupt

# The teacher-driven part each stage may have, the prompts it uses and the teacher settings it reads.
MODEL_PARTS = {
    "ground": ("ground", ["ground"], ["tile_grid"]),
    "name": ("name", ["name"], ["names_per_image"]),
    "generate": ("questions", ["questions", "questions_pair"], ["questions_per_image"]),
    "verify": ("verification", ["answer", "validate"], ["solver", "verification"]),
    "trajectories": ("trajectories", ["trajectory"], ["max_turns"]),
}
_ENDPOINT_IDENTITY = ("base_url", "model", "temperature", "max_tokens", "image_max_pixels", "json_schema")
_READS_BOXES = ("ground", "trajectories")  # stages whose outputs are boxes the teacher wrote, in its convention


def stage_settings(recipe: Recipe, stage: str) -> Any:
    """What a stage's output depends on: its own section, and its teacher's identity and prompts when it uses one.

    Throughput settings (worker processes, in-flight, rate limits, timeouts, batch mode, the verification
    cascade, prices) and where image bytes are kept (`ingest.embed`) do not change outputs, so changing them
    redoes nothing.
    """
    from drim_data.teacher.prompt_files import load_prompt

    section = to_plain(getattr(recipe, stage, None))
    settings: dict[str, Any] = {"stage": section}
    if stage == "mine":
        section.pop("workers")
        settings["view"] = to_plain(recipe.view)  # the first reader of the view: every later stage inherits it
    if stage == "ingest":
        section.pop("embed")  # where the bytes are kept changes no output; ingest stores or clears them
        settings["annotation_files"] = [_file_digest(a.path) for a in recipe.ingest.annotations]
    teacher = recipe.teacher
    if stage in MODEL_PARTS and MODEL_PARTS[stage][0] in teacher.stages:
        _, prompts, keys = MODEL_PARTS[stage]
        settings["model"] = {
            "endpoint": _identity(teacher.endpoint),
            "prompts": [load_prompt(p).version for p in prompts],
            **{k: _identity(teacher.solver) if k == "solver" else to_plain(getattr(teacher, k)) for k in keys},
        }
        settings["model"].get("verification", {}).pop("cascade", None)  # what verify pays, not what it keeps
        if stage in _READS_BOXES:
            settings["model"]["boxes"] = teacher.endpoint.boxes
    return settings


def _identity(endpoint: Any) -> dict | None:
    return endpoint and {k: getattr(endpoint, k) for k in _ENDPOINT_IDENTITY}


def _file_digest(path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return sha256_json([[str(f.relative_to(path.parent)), hashlib.sha256(f.read_bytes()).hexdigest()] for f in files])


def make_teacher(recipe: Recipe) -> Any:
    from drim_data.teacher.builtin import BuiltinTeacher

    return BuiltinTeacher()


@dataclass
class RunResult:
    stages: list[StageStats]
    export: Any  # ExportResult


def run_pipeline(
    recipe: Recipe, track: Track = _no_progress, until: str | None = None, after: str | None = None
) -> RunResult:
    """Run every stage (or up to and including `until`), then export a new version if anything changed.

    With `after`, the stages up to and including it are not run: their outputs are already in the database (a
    partition seeded with its share of an ingest, or a merge of partitions), under the same settings.

    Raises `RunFault` for a fault of the whole run (disk full, read-only output, a failed database, or what a
    stage reports) and `KeyboardInterrupt` for an interrupt; either way nothing is exported and the database
    holds only whole items, so the same call resumes.
    """
    con = connect(recipe.db)
    try:
        return _run(con, recipe, track, until, after)
    except (OSError, RuntimeError, duckdb.Error) as exc:
        if is_interrupt(exc):  # a Ctrl-C that landed inside a query
            raise KeyboardInterrupt from exc
        fault = as_run_fault(exc)
        if fault is None:
            raise
        raise fault from exc
    finally:
        try:
            con.close()
        except duckdb.Error:
            pass  # a database that failed has nothing left to close


def _run(
    con: duckdb.DuckDBPyConnection, recipe: Recipe, track: Track, until: str | None, after: str | None
) -> RunResult:
    from drim_data.stages import export

    ctx = Context(con, recipe, make_teacher(recipe), track)
    if recipe.teacher.stages:  # a missing key or a malformed endpoint stops the run before any stage starts
        ctx.model("teacher"), ctx.model("solver")
    results = []
    fingerprint = ""
    skipping = after is not None
    for name, module in stages.modules().items():
        fingerprint = stage_fingerprint(recipe, name, fingerprint)
        if skipping:
            _check_done_elsewhere(con, name, fingerprint)
            skipping = name != after
            continue
        _invalidate_if_changed(con, name, fingerprint)
        results.append(_run_stage(ctx, name, module))
        if name == until:
            return RunResult(results, None)
    started = time.perf_counter()
    outcome = export.run(ctx, fingerprint)
    _record_run(con, recipe, "export", started, 1 if outcome.written else 0, outcome.counts())
    return RunResult(results, outcome)


def stage_fingerprint(recipe: Recipe, stage: str, previous: str) -> str:
    """A stage's settings chained with those of every stage before it."""
    return sha256_json([previous, stage, stages.modules()[stage].VERSION, stage_settings(recipe, stage)])


def _check_done_elsewhere(con: duckdb.DuckDBPyConnection, stage: str, fingerprint: str) -> None:
    stored = con.execute("SELECT fingerprint FROM stage_state WHERE stage = ?", [stage]).fetchone()
    if stored is None or stored[0] != fingerprint:
        raise DrimError(f"{stage} has not run with these settings in this database; it cannot be skipped")


def _invalidate_if_changed(con: duckdb.DuckDBPyConnection, stage: str, fingerprint: str) -> None:
    stored = con.execute("SELECT fingerprint FROM stage_state WHERE stage = ?", [stage]).fetchone()
    if stored is not None and stored[0] == fingerprint:
        return
    con.begin()
    if stored is not None:
        reset_stage(con, stage)
    con.execute("INSERT OR REPLACE INTO stage_state VALUES (?, ?)", [stage, fingerprint])
    con.commit()


def _run_stage(ctx: Context, name: str, module: Any) -> StageStats:
    started = time.perf_counter()
    stats = module.run(ctx)
    ctx.decoded = ctx.viewed = None
    stats.seconds = time.perf_counter() - started
    if stats.processed:
        module.validate(ctx.con)  # the stage's tables against their schemas, at the boundary
    _record_run(ctx.con, ctx.recipe, name, started, stats.processed, dict(stats.counts))
    return stats


def _record_run(con, recipe: Recipe, stage: str, started: float, processed: int, counts: dict) -> None:
    con.execute(
        "INSERT INTO stage_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            stage,
            recipe.fingerprint(),
            __version__,
            datetime.now(UTC).replace(tzinfo=None),
            time.perf_counter() - started,
            processed,
            json.dumps(counts),
        ],
    )
