"""The Batch API: deferred requests go out as one batch (half price), which is polled, collected and resumable.

A submitted batch is recorded in `teacher_batches` before it is waited on, so a killed run resumes the same batch
instead of paying for a second one.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from drim_data.teacher.store import call_row

if TYPE_CHECKING:
    from drim_data.teacher.client import Teacher

_FINISHED = ("completed", "failed", "expired", "cancelled")


@dataclass
class Pending:
    """A request waiting for the next batch."""

    key: str
    payload: dict
    purpose: str
    canonical: dict


async def flush_batch(teacher: Teacher, stage: str) -> int:
    """Submit the teacher's deferred requests as one batch (or resume an open one), wait, store every response."""
    open_batch = teacher.con.execute(
        "SELECT batch_id FROM teacher_batches WHERE model = ? AND stage = ? AND status = 'submitted'",
        [teacher.model, stage],
    ).fetchone()
    if open_batch is None:
        if not teacher.deferred:
            return 0
        lines = [
            json.dumps({"custom_id": p.key, "method": "POST", "url": "/v1/chat/completions", "body": p.payload})
            for p in teacher.deferred
        ]
        upload = await teacher.client.files.create(
            file=("batch.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
        )
        batch = await teacher.client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        requests = {p.key: {"purpose": p.purpose, "canonical": p.canonical} for p in teacher.deferred}
        teacher.con.execute(
            "INSERT INTO teacher_batches VALUES (?, ?, ?, 'submitted', ?, ?)",
            [batch.id, teacher.model, stage, json.dumps(requests), datetime.now(UTC).replace(tzinfo=None)],
        )
        batch_id = batch.id
    else:
        batch_id = open_batch[0]
    teacher.deferred.clear()
    return await _collect(teacher, batch_id, stage)


async def _collect(teacher: Teacher, batch_id: str, stage: str) -> int:
    while True:
        batch = await teacher.client.batches.retrieve(batch_id)
        if batch.status in _FINISHED:
            break
        await asyncio.sleep(teacher.cfg.batch_poll_s)
    (requests,) = teacher.con.execute("SELECT requests FROM teacher_batches WHERE batch_id = ?", [batch_id]).fetchone()
    requests = json.loads(requests)
    rows = []
    if batch.output_file_id:
        content = await teacher.client.files.content(batch.output_file_id)
        for line in content.text.splitlines():
            result = json.loads(line)
            request = requests.get(result["custom_id"])
            response = result.get("response") or {}
            body = response.get("body") or {}
            if request and response.get("status_code") == 200 and body.get("choices"):
                key, purpose, canonical = result["custom_id"], request["purpose"], request["canonical"]
                error = teacher.truncation(body)  # a cut-off reply is recorded, and asked again next run
                rows.append(call_row(key, stage, teacher.model, purpose, canonical, body, 0.0, 1, True, error))
    if rows:
        teacher.store.write(rows)
    teacher.con.execute("UPDATE teacher_batches SET status = ? WHERE batch_id = ?", [batch.status, batch_id])
    return sum(row[10] == "ok" for row in rows)
