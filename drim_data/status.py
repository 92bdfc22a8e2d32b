"""What a recipe's database holds: counts per stage, drops by reason, teacher calls, time spent, versions, and what
the model calls cost per item verify kept."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from drim_data.stages import ORDER, sql_order
from drim_data.teacher.builtin import MODEL as BUILTIN

STAGE_COUNTS = {
    "ingest": "SELECT count(*) FILTER (status = 'ok') FROM files",
    "mine": "SELECT count(*) FROM regions WHERE source != 'teacher'",
    "ground": "SELECT count(*) FROM regions WHERE source = 'teacher'",
    "name": "SELECT count(*) FROM names WHERE label IS NOT NULL",
    "generate": "SELECT count(*) FROM questions",
    "verify": "SELECT count(*) FROM verdicts WHERE kept",
    "trajectories": "SELECT count(*) FROM trajectories",
}
OUTPUT_NAMES = {
    "ingest": "images",
    "mine": "regions",
    "ground": "regions",
    "name": "named",
    "generate": "questions",
    "verify": "kept",
    "trajectories": "trajectories",
}


@dataclass
class StageStatus:
    stage: str
    processed: int
    output: int
    output_name: str
    dropped: int
    seconds: float


@dataclass
class Status:
    stages: list[StageStatus]
    drops: list[tuple[str, str, int]]  # stage, reason, count
    teacher: list[tuple]  # stage, model, ok calls, failed calls, prompt tokens, completion tokens, cost or None
    versions: list[tuple[int, int | None, int, int, str]]  # version, parent, sft rows, rl rows, path
    kept: int  # items verify kept
    per_kept: list[StageCost]  # model calls by stage, then all stages together


@dataclass
class StageCost:
    """A stage's model calls (distinct requests, ok or failed) and their tokens: in all, and per item verify kept."""

    stage: str  # or "all"
    calls: int
    prompt_tokens: int
    completion_tokens: int
    calls_per_kept: float | None  # None while nothing is kept
    tokens_per_kept: float | None  # prompt and completion tokens together


def _cost(price, prompt_tokens: int, completion_tokens: int, batch_prompt_tokens: int) -> float | None:
    """Cost from the recipe's price per million tokens; Batch API calls cost half."""
    if price is None:
        return None
    batch_share = batch_prompt_tokens / prompt_tokens if prompt_tokens else 0.0
    full = (prompt_tokens * price.input + completion_tokens * price.output) / 1e6
    return full * (1 - 0.5 * batch_share)


def read_status(con: duckdb.DuckDBPyConnection, prices: dict | None = None) -> Status:
    """Counts, drops and teacher usage; `prices` maps model names to a recipe Price for cost."""
    prices = prices or {}
    stages = []
    for stage in ORDER:
        sql = STAGE_COUNTS[stage]
        processed = con.execute("SELECT count(*) FROM done WHERE stage = ?", [stage]).fetchone()[0]
        if stage == "ingest":
            processed = con.execute("SELECT count(*) FROM files").fetchone()[0]
        dropped = con.execute("SELECT count(*) FROM drops WHERE stage = ?", [stage]).fetchone()[0]
        seconds = con.execute("SELECT coalesce(sum(seconds), 0) FROM stage_runs WHERE stage = ?", [stage]).fetchone()
        stages.append(
            StageStatus(stage, processed, con.execute(sql).fetchone()[0], OUTPUT_NAMES[stage], dropped, seconds[0])
        )
    drops = con.execute(
        f"SELECT stage, reason, count(*) AS n FROM drops GROUP BY stage, reason ORDER BY {sql_order()}, n DESC, reason"
    ).fetchall()
    teacher = [
        (*row[:6], _cost(prices.get(row[1]), row[4], row[5], row[6]))
        for row in con.execute(
            "SELECT stage, model, count(*) FILTER (status = 'ok'), count(*) FILTER (status = 'failed'), "
            "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), "
            "coalesce(sum(prompt_tokens) FILTER (via_batch), 0) FROM teacher_calls GROUP BY stage, model "
            f"ORDER BY {sql_order()}, model"
        ).fetchall()
    ]
    versions = con.execute("SELECT version, parent, rows_sft, rows_rl, path FROM exports ORDER BY version").fetchall()
    kept = con.execute("SELECT count(*) FROM verdicts WHERE kept").fetchone()[0]
    return Status(stages, drops, teacher, versions, kept, stage_costs(con, kept))


def stage_costs(con: duckdb.DuckDBPyConnection, kept: int) -> list[StageCost]:
    """Model calls and tokens by stage, then in all, per kept item; the built-in teacher's logged calls are free."""
    rows = con.execute(
        "SELECT coalesce(stage, 'all'), count(*), coalesce(sum(prompt_tokens), 0), "
        "coalesce(sum(completion_tokens), 0) FROM teacher_calls WHERE model != ? "
        f"GROUP BY ROLLUP (stage) ORDER BY stage IS NULL, {sql_order()}",
        [BUILTIN],
    ).fetchall()
    if len(rows) < 2:  # no model call: at most the rollup's empty total
        return []
    return [
        StageCost(stage, n, p, c, n / kept if kept else None, (p + c) / kept if kept else None)
        for stage, n, p, c in rows
    ]
