"""Runs the stages in order against the recipe's database; every stage is resumable and idempotent.

Each stage's settings are fingerprinted (chained with the stages before it): when they change, that stage and
everything downstream start over, while cached teacher calls are kept. Work is committed in small batches, so a
killed run loses at most one batch and a rerun picks up exactly what is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
from PIL import Image

from drim_data import __version__
from drim_data.db import connect, reset_stage
from drim_data.images import decode
from drim_data.recipe import Recipe, sha256_json, to_plain

Track = Callable[[Iterable[Any], str, int], Iterator[Any]]


def _no_progress(items: Iterable[Any], description: str, total: int) -> Iterator[Any]:
    yield from items


@dataclass
class StageStats:
    stage: str
    processed: int = 0
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n


@dataclass
class Context:
    con: duckdb.DuckDBPyConnection
    recipe: Recipe
    teacher: Any
    track: Track = _no_progress
    models: dict[str, Any] = field(default_factory=dict)
    decoded: tuple[str, Image.Image] | None = field(default=None, repr=False)

    def image(self, image_id: str) -> Image.Image:
        """An input image's pixels. Stages take their items grouped by image, so only the last one decoded is kept
        (a 100-megapixel image holds 400 MB)."""
        if self.decoded is None or self.decoded[0] != image_id:
            self.decoded = None  # free the previous image before decoding the next
            (data,) = self.con.execute("SELECT data FROM images WHERE image_id = ?", [image_id]).fetchone()
            self.decoded = (image_id, decode(data))
        return self.decoded[1]

    def uses_model(self, stage: str) -> bool:
        return stage in self.recipe.teacher.stages

    def model(self, role: str = "teacher") -> Any:
        """The model teacher (or the solver, which defaults to it), built on first use: only then is a key needed."""
        if role == "solver" and self.recipe.teacher.solver is None:
            role = "teacher"  # the same client, limits and cache as the teacher's, not a second copy of them
        if role not in self.models:
            from drim_data.teacher import Teacher

            cfg = self.recipe.teacher
            self.models[role] = Teacher(cfg.solver if role == "solver" else cfg.endpoint, self.con, role)
        return self.models[role]

    def drop(self, stats: StageStats, item_id: str, reason: str, detail: str = "") -> None:
        """Record why an item leaves the pipeline; `status` counts these."""
        self.con.execute("INSERT INTO drops VALUES (?, ?, ?, ?)", [stats.stage, item_id, reason, detail[:2000]])
        stats.count(f"dropped:{reason}")

    def log_teacher_call(
        self, stage: str, model: str, purpose: str, request: Any, response: Any, latency: float, prompt_version: str
    ) -> None:
        """Keep every teacher exchange, keyed by its canonical content, so reruns and audits can replay it."""
        key = sha256_json([model, purpose, prompt_version, request])
        self.con.execute(
            "INSERT OR REPLACE INTO teacher_calls VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?, 'ok', NULL, 1, false)",
            [
                key,
                stage,
                model,
                purpose,
                json.dumps(request, default=str),
                json.dumps(response),
                latency,
                datetime.now(UTC).replace(tzinfo=None),
            ],
        )

    def for_each_pending(self, stats: StageStats, pending_sql: str, handle: Callable[[tuple], None]) -> None:
        """Apply `handle` to each row of the stage's pending query, one transaction per item with a done-marker.

        A killed run loses at most the item in flight. An unexpected error in one item drops that item with the
        error as its reason, and the run goes on.
        """
        rows = self.con.execute(pending_sql).fetchall()
        for row in self.track(rows, stats.stage, len(rows)):
            item_id = row[0]
            self.con.begin()
            try:
                handle(row)
            except Exception as exc:  # one bad item must not stop the run
                self.con.rollback()
                self.con.begin()
                self.drop(stats, item_id, "error", "".join(traceback.format_exception_only(exc)).strip())
            self.con.execute("INSERT INTO done VALUES (?, ?)", [stats.stage, item_id])
            self.con.commit()
            stats.processed += 1

    def for_each_pending_async(self, stats: StageStats, pending_sql: str, handle: Callable[[tuple], Any]) -> None:
        """Run `handle(row)` for every pending row concurrently; it returns a writer run in the item's transaction.

        Teacher requests of all items overlap (bounded by the endpoint's in-flight limit), while every item's
        writes happen on this thread between awaits (the teacher's cache has its own writer). An item whose
        teacher call failed after all retries is dropped with the reason but left pending, so a rerun tries it
        again; in Batch API mode, items wait for their batch, which is submitted, polled and collected before
        the next pass.
        """
        from drim_data.replies import ReplyError
        from drim_data.teacher import Deferred, TeacherFailed

        async def one(row: tuple, busy: asyncio.Semaphore) -> None:
            item_id = row[0]
            try:
                async with busy:  # items decode and encode images before their first request: start few at once
                    write = await handle(row)
            except Deferred:
                return
            except TeacherFailed as exc:
                failure = (f"teacher_{exc.reason}", exc.detail)
                self._commit(stats, item_id, lambda: self.drop(stats, item_id, *failure), done=False)
                return
            except ReplyError as exc:
                reason, _, detail = str(exc).partition(": ")
                self._commit(stats, item_id, lambda: self.drop(stats, item_id, reason, detail))
                return
            except Exception as exc:  # one bad item must not stop the run
                detail = "".join(traceback.format_exception_only(exc)).strip()
                self._commit(stats, item_id, lambda: self.drop(stats, item_id, "error", detail))
                return
            self._commit(stats, item_id, write)

        async def passes() -> None:
            busy = asyncio.Semaphore(2 * self.recipe.teacher.endpoint.max_in_flight)
            try:
                for _ in range(self.recipe.teacher.max_turns + 3):
                    rows = self.con.execute(pending_sql).fetchall()
                    items = asyncio.as_completed([one(r, busy) for r in rows])
                    for future in self.track(items, stats.stage, len(rows)):
                        await future
                    collected = 0
                    for teacher in self.models.values():
                        if teacher.cfg.batch:
                            collected += await teacher.flush_batch(stats.stage)
                    if not collected:
                        return
            finally:
                for teacher in self.models.values():
                    await teacher.close()

        from drim_data.teacher import run

        run(passes())

    def _commit(self, stats: StageStats, item_id: str, write: Callable[[], None] | None, done: bool = True) -> None:
        self.con.begin()
        self.con.execute("DELETE FROM drops WHERE stage = ? AND item_id = ?", [stats.stage, item_id])
        if write is not None:
            write()
        if done:
            self.con.execute("INSERT INTO done VALUES (?, ?)", [stats.stage, item_id])
            stats.processed += 1
        self.con.commit()


def stage_modules() -> dict[str, Any]:
    from drim_data.stages import generate, ground, ingest, mine, trajectories, verify

    return {
        "ingest": ingest,
        "mine": mine,
        "ground": ground,
        "generate": generate,
        "verify": verify,
        "trajectories": trajectories,
    }


# The teacher-driven part each stage may have, the prompts it uses and the teacher settings it reads.
MODEL_PARTS = {
    "ground": ("ground", ["ground"], ["tile_grid"]),
    "generate": ("questions", ["questions", "questions_pair"], ["questions_per_image"]),
    "verify": ("verification", ["answer", "validate"], ["solver", "verification"]),
    "trajectories": ("trajectories", ["trajectory"], ["max_turns"]),
}
_ENDPOINT_IDENTITY = ("base_url", "model", "temperature", "max_tokens", "image_max_pixels", "json_schema")


def stage_settings(recipe: Recipe, stage: str) -> Any:
    """What a stage's output depends on: its own section, and its teacher's identity and prompts when it uses one.

    Throughput settings (worker processes, in-flight, rate limits, timeouts, batch mode, prices) do not change
    outputs, so changing them redoes nothing.
    """
    from drim_data.prompt_files import load_prompt

    section = to_plain(getattr(recipe, stage, None))
    if stage == "mine":
        section.pop("workers")
    settings: dict[str, Any] = {"stage": section}
    if stage == "ingest":
        settings["annotation_files"] = [_file_digest(a.path) for a in recipe.ingest.annotations]
    teacher = recipe.teacher
    if stage in MODEL_PARTS and MODEL_PARTS[stage][0] in teacher.stages:
        _, prompts, keys = MODEL_PARTS[stage]
        settings["model"] = {
            "endpoint": _identity(teacher.endpoint),
            "prompts": [load_prompt(p).version for p in prompts],
            **{k: _identity(teacher.solver) if k == "solver" else to_plain(getattr(teacher, k)) for k in keys},
        }
        if stage == "generate":  # it asks only about regions that verify's view settings say need a zoom
            settings["model"]["view"] = [recipe.verify.model_max_pixels, recipe.verify.min_resolvable_px]
    return settings


def _identity(endpoint: Any) -> dict | None:
    return endpoint and {k: getattr(endpoint, k) for k in _ENDPOINT_IDENTITY}


def _file_digest(path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return sha256_json([[str(f.relative_to(path.parent)), hashlib.sha256(f.read_bytes()).hexdigest()] for f in files])


def make_teacher(recipe: Recipe) -> Any:
    from drim_data.builtin_teacher import BuiltinTeacher

    return BuiltinTeacher()


@dataclass
class RunResult:
    stages: list[StageStats]
    export: Any  # ExportResult


def run_pipeline(recipe: Recipe, track: Track = _no_progress, until: str | None = None) -> RunResult:
    """Run every stage (or up to and including `until`), then export a new version if anything changed."""
    from drim_data.stages import export

    con = connect(recipe.db)
    try:
        ctx = Context(con, recipe, make_teacher(recipe), track)
        results = []
        fingerprint = ""
        for name, module in stage_modules().items():
            fingerprint = sha256_json([fingerprint, name, module.VERSION, stage_settings(recipe, name)])
            _invalidate_if_changed(con, name, fingerprint)
            results.append(_run_stage(ctx, name, module))
            if name == until:
                return RunResult(results, None)
        started = time.perf_counter()
        outcome = export.run(ctx, fingerprint)
        _record_run(con, recipe, "export", started, 1 if outcome.written else 0, outcome.counts())
        return RunResult(results, outcome)
    finally:
        con.close()


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
    ctx.decoded = None
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
