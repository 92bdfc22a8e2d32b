"""The stage contract: what every stage gets (a typed context) and gives back (its stats), and how its items run.

A stage module has a NAME, a VERSION (part of its fingerprint), `run(ctx) -> StageStats` and `validate(con)`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
from PIL import Image

from drim_data.errors import Drop, RunFault
from drim_data.pixels.images import decode
from drim_data.pixels.sources import image_bytes
from drim_data.recipe import Recipe, sha256_json
from schemas.tool import global_view, global_view_size

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
    decoded: tuple[str, Image.Image | Drop] | None = field(default=None, repr=False)
    viewed: tuple[str, Image.Image] | None = field(default=None, repr=False)

    def image(self, image_id: str) -> Image.Image:
        """An input image's pixels, read through its reference (a `Drop` when its source is gone or changed).
        Stages take their items grouped by image, so only the last one decoded is kept (a 100-megapixel image
        holds 400 MB), and so is a failed read: every item of that image is dropped for it, read once."""
        if self.decoded is None or self.decoded[0] != image_id:
            self.decoded = None  # free the previous image before decoding the next
            try:
                found: Image.Image | Drop = decode(image_bytes(self.con, image_id))
            except Drop as exc:
                found = exc
            self.decoded = (image_id, found)
        found = self.decoded[1]
        if isinstance(found, Drop):
            raise Drop(found.reason, found.detail)
        return found

    def view(self, image_id: str) -> Image.Image:
        """The global view the model sees of an input image (the recipe's `view`), kept like `image`."""
        if self.viewed is None or self.viewed[0] != image_id:
            image = self.image(image_id)
            self.viewed = (image_id, global_view(image, global_view_size(*image.size, self.recipe.view.max_pixels)))
        return self.viewed[1]

    def uses_model(self, stage: str) -> bool:
        return stage in self.recipe.teacher.stages

    def model(self, role: str = "teacher") -> Any:
        """The model teacher (or the solver, which defaults to it), built on first use: only then is a key needed."""
        if role == "solver" and self.recipe.teacher.solver is None:
            role = "teacher"  # the same client, limits and cache as the teacher's, not a second copy of them
        if role not in self.models:
            from drim_data.teacher.client import Teacher

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

        A killed run loses at most the item in flight. What an item's failure means is decided by `_failure`.
        """
        rows = self.con.execute(pending_sql).fetchall()
        for row in self.track(rows, stats.stage, len(rows)):
            item_id = row[0]
            self.con.begin()
            self.con.execute("DELETE FROM drops WHERE stage = ? AND item_id = ?", [stats.stage, item_id])
            try:
                handle(row)
            except BaseException as exc:
                self.con.rollback()
                reason, detail, done = _failure(exc)  # re-raises run faults and interrupts, recording nothing
                self._commit(stats, item_id, functools.partial(self.drop, stats, item_id, reason, detail), done)
                continue
            self.con.execute("INSERT INTO done VALUES (?, ?)", [stats.stage, item_id])
            self.con.commit()
            stats.processed += 1

    def for_each_pending_async(self, stats: StageStats, pending_sql: str, handle: Callable[[tuple], Any]) -> None:
        """Run `handle(row)` for every pending row concurrently; it returns a writer run in the item's transaction.

        Teacher requests of all items overlap (bounded by the endpoint's in-flight limit), while every item's
        writes happen on this thread between awaits (the teacher's cache has its own writer). The items of a pass
        are one task group: a run fault or an interrupt cancels every item still in flight before the clients
        close, so none of them is recorded as failed. In Batch API mode, items wait for their batch, which is
        submitted, polled and collected before the next pass.
        """
        from drim_data.teacher.client import Deferred, run

        async def one(row: tuple, busy: asyncio.Semaphore) -> None:
            item_id = row[0]
            try:
                async with busy:  # items decode and encode images before their first request: start few at once
                    write = await handle(row)
            except Deferred:
                return
            except Exception as exc:
                reason, detail, done = _failure(exc)
                self._commit(stats, item_id, functools.partial(self.drop, stats, item_id, reason, detail), done)
                return
            self._commit(stats, item_id, write)

        async def passes() -> None:
            busy = asyncio.Semaphore(2 * self.recipe.teacher.endpoint.max_in_flight)
            try:
                for _ in range(self.recipe.teacher.max_turns + 3):
                    rows = self.con.execute(pending_sql).fetchall()
                    async with asyncio.TaskGroup() as group:
                        items = [group.create_task(one(r, busy)) for r in rows]
                        for future in self.track(asyncio.as_completed(items), stats.stage, len(rows)):
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

        try:
            run(passes())
        except BaseExceptionGroup as group:  # the first run fault stopped the pass: say that one
            raise group.exceptions[0] from None

    def _commit(self, stats: StageStats, item_id: str, write: Callable[[], None] | None, done: bool = True) -> None:
        self.con.begin()
        self.con.execute("DELETE FROM drops WHERE stage = ? AND item_id = ?", [stats.stage, item_id])
        if write is not None:
            write()
        if done:
            self.con.execute("INSERT INTO done VALUES (?, ?)", [stats.stage, item_id])
            stats.processed += 1
        self.con.commit()


def is_interrupt(exc: BaseException) -> bool:
    """DuckDB turns a Ctrl-C that lands inside a query into an exception of its own (one of two kinds)."""
    return isinstance(exc, KeyboardInterrupt | duckdb.InterruptException) or (
        isinstance(exc, RuntimeError) and str(exc) == "Query interrupted"
    )


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def as_run_fault(exc: BaseException) -> RunFault | None:
    """The run-level fault an exception stands for, if any: storage that refuses writes, or a failed database."""
    if isinstance(exc, RunFault):
        return exc
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return RunFault(f"cannot write {exc.filename or 'to disk'}: {exc.strerror or exc}")
    if isinstance(exc, duckdb.IOException | duckdb.FatalException | duckdb.OutOfMemoryException):
        return RunFault(f"the database failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return None


def _failure(exc: BaseException) -> tuple[str, str, bool]:
    """What an item's exception means: (reason, detail, done), or re-raised when it ends the run.

    A `Drop` is the item's own bad input: recorded and done. A teacher call that failed after all its attempts
    is recorded but left pending, so a rerun tries it again; so is an unexpected error, so that a fixed bug
    needs no reset. Run faults and interrupts propagate with nothing recorded; DuckDB reports an interrupt
    that lands inside a query as its own exception, which is an interrupt all the same.
    """
    from drim_data.teacher.client import TeacherFailed

    if isinstance(exc, KeyboardInterrupt) or not isinstance(exc, Exception):
        raise exc
    if is_interrupt(exc):
        raise KeyboardInterrupt from exc
    fault = as_run_fault(exc)
    if fault is not None:
        raise fault from exc
    if isinstance(exc, Drop):
        return exc.reason, exc.detail, True
    if isinstance(exc, TeacherFailed):
        return f"teacher_{exc.reason}", exc.detail, False
    return "error", "".join(traceback.format_exception_only(exc)).strip(), False
