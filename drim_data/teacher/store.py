"""The call cache: every teacher request's outcome in `teacher_calls`, written by a group-commit writer.

Responses that arrive together are written in one statement on a worker thread (a commit per row would cost more
CPU than the request itself), and each caller resumes once its own row is in the database. A response that was
received but not yet written is already served to anyone who asks for it, and `drain` writes whatever is queued,
so a stage that ends, or is interrupted, never loses a response it was sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

FLUSH_DELAY_S = 0.1  # responses arriving within this window share one database write
_CALL_SCHEMA = pa.schema(
    [
        ("call_key", pa.string()),
        ("stage", pa.string()),
        ("model", pa.string()),
        ("purpose", pa.string()),
        ("request", pa.string()),
        ("response", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float64()),
        ("created_at", pa.timestamp("us")),
        ("status", pa.string()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("via_batch", pa.bool_()),
    ]
)
_RESPONSE, _STATUS = 5, 10


def call_row(
    key: str,
    stage: str,
    model: str,
    purpose: str,
    canonical: dict,
    body: dict | None,
    latency: float | None,
    attempts: int,
    via_batch: bool = False,
    error: str | None = None,
) -> tuple:
    """One `teacher_calls` row: 'ok' with its response, or 'failed' with the reason in `error`."""
    usage = (body or {}).get("usage") or {}
    return (
        key,
        stage,
        model,
        purpose,
        json.dumps(canonical),
        None if body is None else json.dumps(body),
        usage.get("prompt_tokens") or 0,
        usage.get("completion_tokens") or 0,
        latency,
        datetime.now(UTC).replace(tzinfo=None),
        "failed" if error else "ok",
        error,
        attempts,
        via_batch,
    )


class CallStore:
    """Looks up and stores teacher calls; `put` and `drain` belong to the running event loop."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self._ok: set[str] | None = None  # keys of stored successful calls, read once per run
        self._unwritten: dict[str, tuple] = {}  # received, not yet in the database
        self._queue: list[tuple[tuple, asyncio.Future]] = []  # not yet handed to the writer
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Future] = set()
        self._lock = threading.Lock()  # one write at a time, whichever thread it runs on

    def response(self, key: str) -> dict | None:
        """The stored successful response for `key`, including one received and still on its way to disk."""
        row = self._unwritten.get(key)
        if row is not None:
            return json.loads(row[_RESPONSE]) if row[_STATUS] == "ok" else None
        if self._ok is None:
            self._ok = {
                k for (k,) in self.con.execute("SELECT call_key FROM teacher_calls WHERE status = 'ok'").fetchall()
            }
        if key not in self._ok:
            return None
        with self.con.cursor() as cursor:  # stage code may hold an open result on `con`
            rows = cursor.execute(
                "SELECT response FROM teacher_calls WHERE call_key = ? AND status = 'ok'", [key]
            ).fetchall()
        return json.loads(rows[0][0]) if rows else None

    async def put(self, row: tuple) -> None:
        """Queue a row for the next group write and wait until it is in the database."""
        await self.record(row)

    def record(self, row: tuple) -> asyncio.Future:
        """Queue a row for the next group write; the future is done once it is written. A failure's row is not
        waited for: its item is left for the next run whether or not the row survives."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._unwritten[row[0]] = row
        self._queue.append((row, done))
        if self._timer is None:
            self._timer = loop.call_later(FLUSH_DELAY_S, self._flush)
        return done

    def _flush(self) -> None:
        """Hand the queue to the writer thread (DuckDB releases the GIL), so requests keep flowing meanwhile."""
        self._timer = None
        queue, self._queue = self._queue, []
        rows, cursor = [row for row, _ in queue], self.con.cursor()  # cursors are made on the connection's thread
        write = asyncio.get_running_loop().run_in_executor(None, self.write, rows, cursor)
        self._writes.add(write)
        write.add_done_callback(functools.partial(self._settle, queue))

    def _settle(self, queue: list[tuple[tuple, asyncio.Future]], write: asyncio.Future) -> None:
        self._writes.discard(write)
        error = None if write.cancelled() else write.exception()
        for _, done in queue:
            if done.cancelled():  # its waiter was cancelled; the row is written all the same
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    async def drain(self) -> None:
        """Write everything queued, now, and wait for writes already under way: called at every stage's end."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue, self._queue = self._queue, []
        if queue:
            try:
                self.write([row for row, _ in queue])
            except Exception as exc:
                self._settle_all(queue, exc)
                raise
            self._settle_all(queue, None)
        if self._writes:
            await asyncio.wait(list(self._writes))

    def _settle_all(self, queue: list[tuple[tuple, asyncio.Future]], error: Exception | None) -> None:
        for _, done in queue:
            if not done.done():
                done.set_result(None) if error is None else done.set_exception(error)

    def abandon_loop(self) -> None:
        """Rows queued on an event loop that has ended (a stage whose teacher was never closed) are written now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue, self._queue = self._queue, []
        if queue:
            self.write([row for row, _ in queue])

    def write(self, rows: list[tuple], cursor: duckdb.DuckDBPyConnection | None = None) -> None:
        """One statement for many calls, on its own cursor: stage code may hold an open result on `con`."""
        columns = zip(*rows, strict=True)
        table = pa.Table.from_arrays(
            [pa.array(c, t) for c, t in zip(columns, _CALL_SCHEMA.types, strict=True)], schema=_CALL_SCHEMA
        )
        with self._lock:
            try:
                with cursor or self.con.cursor() as cursor:
                    cursor.register("new_calls", table)
                    cursor.execute("INSERT OR REPLACE INTO teacher_calls SELECT * FROM new_calls")
                    cursor.unregister("new_calls")
                if self._ok is not None:
                    self._ok.update(row[0] for row in rows if row[_STATUS] == "ok")
            finally:
                for row in rows:
                    if self._unwritten.get(row[0]) is row:
                        del self._unwritten[row[0]]
