"""Mine: candidate small-object regions per image, from annotations and proposals, each drop with its reason.

Worker processes decode, propose and measure (`drim_data.pixels.candidates`); this process alone writes the
database, in image order and in small transactions, so a killed run resumes where it stopped and the result does
not depend on the number of workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool

import pyarrow as pa

from drim_data.errors import DrimError
from drim_data.pixels.annotations import SINGLE_SQL
from drim_data.pixels.candidates import Job, Mined, mine_image
from drim_data.pixels.sources import image_ref
from drim_data.pixels.workers import cpu_count, ordered_map
from drim_data.stages.contract import Context, StageStats
from schemas.tables import validate_table

NAME = "mine"
# 4: a crowd box is never a region; 5: proposals are segments, sought at the sizes the filters keep; 6: segments at
# two contrast levels (6, 24), none at half a blob's peak, on a pyramid of exact halves
VERSION = "6"

PENDING = """
SELECT i.image_id FROM images i
WHERE i.image_id IN (SELECT image_id FROM files WHERE status = 'ok')
  AND i.image_id NOT IN (SELECT item_id FROM done WHERE stage = 'mine')
ORDER BY i.image_id
"""
ANNOTATIONS = f"""
SELECT image_id, label, x1, y1, x2, y2 FROM annotations
WHERE image_id NOT IN (SELECT item_id FROM done WHERE stage = 'mine') AND {SINGLE_SQL}
ORDER BY image_id, x1, y1, x2, y2, label
"""
BATCH_IMAGES = 32  # images written per transaction ...
BATCH_SECONDS = 2.0  # ... or fewer, when they take longer than this to come


def run(ctx: Context) -> StageStats:
    stats = StageStats(NAME)
    pending = [row[0] for row in ctx.con.execute(PENDING).fetchall()]
    # unless set, a worker per core, each with enough images to be worth its start-up (about a second)
    workers = min(ctx.recipe.mine.workers or min(cpu_count(), len(pending) // 8), len(pending))
    results = ordered_map(mine_image, _jobs(ctx, pending), workers, preload="drim_data.pixels.candidates")
    batch: list[Mined] = []
    started = time.monotonic()
    try:
        for mined in ctx.track(results, NAME, len(pending)):
            batch.append(mined)
            if len(batch) >= BATCH_IMAGES or time.monotonic() - started > BATCH_SECONDS:
                _write(ctx, stats, batch)
                batch, started = [], time.monotonic()
        _write(ctx, stats, batch)
    except BrokenProcessPool as exc:
        raise DrimError(
            "a mining worker died (out of memory, or a script calling the pipeline without "
            "`if __name__ == '__main__':`); mine.workers: 1 mines in this process"
        ) from exc
    return stats


def _jobs(ctx: Context, pending: list[str]) -> Iterator[Job]:
    """One job per image, carrying its reference: the worker reads its bytes, and only if proposals need them."""
    boxes: dict[str, list[tuple]] = {}
    for image_id, *box in ctx.con.execute(ANNOTATIONS).fetchall():
        boxes.setdefault(image_id, []).append(tuple(box))
    for image_id in pending:
        width, height = ctx.con.execute("SELECT width, height FROM images WHERE image_id = ?", [image_id]).fetchone()
        ref = image_ref(ctx.con, image_id)
        yield Job(image_id, ref, width, height, boxes.get(image_id, []), ctx.recipe.mine, ctx.recipe.view)


def _write(ctx: Context, stats: StageStats, batch: list[Mined]) -> None:
    """One transaction per batch of images: a killed run loses at most the batch in flight."""
    if not batch:
        return
    con = ctx.con
    con.begin()
    _insert(con, "INSERT OR IGNORE INTO regions", [row for mined in batch for row in mined.regions])
    drops = [(NAME, region_id, reason, "") for mined in batch for region_id, reason in mined.drops]
    for mined in batch:
        if mined.dropped:
            drops.append((NAME, mined.image_id, mined.dropped[0], mined.dropped[1][:2000]))
        elif mined.error:
            drops.append((NAME, mined.image_id, "error", mined.error[:2000]))
        elif not mined.regions:
            drops.append((NAME, mined.image_id, "no_regions", ""))
        stats.count("regions", len(mined.regions))
    _insert(con, "INSERT INTO drops", drops)
    _insert(con, "INSERT INTO done", [(NAME, mined.image_id) for mined in batch])
    con.commit()
    for _, _, reason, _ in drops:
        stats.count(f"dropped:{reason}")
    stats.processed += len(batch)


def _insert(con, statement: str, rows: list[tuple]) -> None:
    """`statement` SELECT * FROM the rows, passed as an Arrow table: DuckDB binds parameters one by one, slowly."""
    if rows:
        con.register("batch", pa.table({f"c{i}": list(column) for i, column in enumerate(zip(*rows, strict=True))}))
        con.execute(f"{statement} SELECT * FROM batch")
        con.unregister("batch")


def validate(con) -> None:
    validate_table(con, "regions", "SELECT * FROM regions")
