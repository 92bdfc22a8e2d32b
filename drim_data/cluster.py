"""Partitioned runs on Ray: one ingest, N partitions that each run the ordinary pipeline on their own database, one
merge that writes one version.

Images are split by content hash, so identical images always share a partition. Each partition database has one
writer (its Ray task) and resumes on its own: a rerun redoes only what a killed partition left undone. The merge
copies every partition's stage outputs into the recipe's own database, where export runs as in a single-node run;
the version is the same whichever way it was made.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from drim_data.db import connect
from drim_data.errors import DrimError, RunFault
from drim_data.pipeline import RunResult, run_pipeline, stage_fingerprint
from drim_data.recipe import Recipe
from drim_data.stages import ORDER
from drim_data.stages.contract import StageStats, Track, _no_progress

# What ingest writes: each partition gets its images' rows of these, as if it had ingested them itself.
INGEST_TABLES = ("files", "images", "annotations", "complete_categories")
# What the later stages write, merged from every partition (teacher calls from all of them, whatever their stage).
STAGE_TABLES = ("regions", "names", "questions", "verdicts", "votes", "trajectories", "observations")
SHARED_TABLES = ("teacher_calls", "teacher_batches")


def partition_of(image_id: str, partitions: int) -> int:
    """An image's partition, from its content hash (its id)."""
    return int(image_id[:15], 16) % partitions


def largest_first(pixels: list[int]) -> list[int]:
    """Partitions in the order to submit them: most pixels (most mining) first, ties by index."""
    return sorted(range(len(pixels)), key=lambda k: (-pixels[k], k))


def partition_db(recipe: Recipe, index: int, partitions: int) -> Path:
    return recipe.db.with_name(f"{recipe.db.stem}.parts") / f"{index}-of-{partitions}.duckdb"


def run_partitioned(
    recipe: Recipe, partitions: int, address: str | None = None, track: Track = _no_progress
) -> RunResult:
    """Ingest, run the partitions as Ray tasks (at most one per CPU Ray offers), merge, export.

    `address` is a running cluster's (`auto`, `ray://host:10001`); None starts a local Ray on this machine. A
    partition that fails stops the run with its error once the others have finished; a rerun resumes it.
    """
    if partitions < 1:
        raise DrimError(f"--partitions must be at least 1, not {partitions}")
    ingest = run_pipeline(recipe, track, until="ingest")
    ingested = stage_fingerprint(recipe, "ingest", "")
    with connect(recipe.db) as main:
        images = main.execute("SELECT image_id, width * height FROM images ORDER BY image_id").fetchall()
    shares = [[i for i, _ in images if partition_of(i, partitions) == k] for k in range(partitions)]
    pixels = [sum(p for i, p in images if partition_of(i, partitions) == k) for k in range(partitions)]
    for k, share in enumerate(shares):
        _seed(recipe, partition_db(recipe, k, partitions), share, ingested)
    stats = _run_tasks(recipe, pixels, address, track)
    _merge(recipe, [partition_db(recipe, k, partitions) for k in range(partitions)])
    result = run_pipeline(recipe, track, after=ORDER[-1])
    return RunResult(ingest.stages + _summed(stats), result.export)


def _seed(recipe: Recipe, path: Path, image_ids: list[str], ingest_fingerprint: str) -> None:
    """Give a partition its images as ingest left them (where they live, their boxes), afresh every run: these rows
    are small, and a renamed file or a changed box must reach the partition. Its later work is kept."""
    with connect(path) as con:
        con.execute(f"ATTACH '{recipe.db}' AS main_db (READ_ONLY)")
        new = con.execute("SELECT fingerprint FROM stage_state WHERE stage = 'ingest'").fetchone() is None
        con.begin()
        con.execute("CREATE TEMP TABLE share (image_id VARCHAR)")
        if image_ids:
            con.executemany("INSERT INTO share VALUES (?)", [[i] for i in image_ids])
        for table in INGEST_TABLES:
            con.execute(f"DELETE FROM {table}")
            con.execute(f"INSERT INTO {table} SELECT * FROM main_db.{table} WHERE image_id IN (SELECT * FROM share)")
        if new:  # a new partition starts with every answer already paid for
            for table in SHARED_TABLES:
                con.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM main_db.{table}")
        con.execute("INSERT OR REPLACE INTO stage_state VALUES ('ingest', ?)", [ingest_fingerprint])
        con.commit()


def _run_tasks(recipe: Recipe, pixels: list[int], address: str | None, track: Track) -> list[list[StageStats]]:
    """Each partition's stats, in partition order. The partitions are submitted `largest_first`: hash shares are
    uneven, and starting the longest tasks first leaves the fewest workers idle at the end."""
    import ray

    from drim_data.teacher import limits

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        shared = limits.start_shared(recipe.teacher)  # one budget per endpoint for every partition
        task, partitions = ray.remote(_partition), len(pixels)
        submitted = {k: task.remote(recipe, k, partitions, shared) for k in largest_first(pixels)}
        refs = [submitted[k] for k in range(partitions)]
        try:
            outcomes = _gather(refs, shared, track)
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        failures = [(k, exc) for k, exc in enumerate(outcomes) if isinstance(exc, BaseException)]
        if failures:
            k, exc = failures[0]
            others = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise RunFault(f"partition {k} of {partitions} failed{others}: {_cause(exc)}; rerun to resume it")
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def _gather(refs: list, shared: dict, track: Track) -> list:
    """Every task's stats or its exception, waiting for all: a failure does not abandon the others' work, and the
    places in flight an ended or failed partition still held are given back to the others at once."""
    import ray

    from drim_data.teacher import limits

    outcomes: list = [None] * len(refs)
    pending = list(refs)
    for _ in track(range(len(refs)), "partitions", len(refs)):
        ready, pending = ray.wait(pending, num_returns=1)
        k = refs.index(ready[0])
        try:
            outcomes[k] = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            outcomes[k] = exc
        limits.forget_partition(shared, k)  # whatever places it still holds, ended or died
    return outcomes


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else str(exc).strip().splitlines()[-1]


def _partition(recipe: Recipe, index: int, partitions: int, shared: dict) -> list[StageStats]:
    """One partition, in a Ray worker: the ordinary pipeline after ingest, on the partition's own database, on the
    one core Ray gave it (mining's own worker processes would share it)."""
    from drim_data.pixels.workers import one_core
    from drim_data.teacher import limits

    one_core()
    limits.use_shared(shared, index)
    mine = dataclasses.replace(recipe.mine, workers=1)  # not part of any fingerprint
    part = dataclasses.replace(recipe, db=partition_db(recipe, index, partitions), mine=mine)
    return run_pipeline(part, after="ingest", until=ORDER[-1]).stages


def _merge(recipe: Recipe, parts: list[Path]) -> None:
    """The recipe's database takes every partition's stage outputs, markers and drops, replacing its own; teacher
    calls are added to those it holds. A row two partitions both hold is kept once."""
    with connect(recipe.db) as con:
        con.begin()
        later = ORDER[1:]
        marks = ", ".join(f"'{s}'" for s in later)
        for table in STAGE_TABLES:
            con.execute(f"DELETE FROM {table}")
        for table in ("done", "drops", "stage_state", "stage_runs"):
            con.execute(f"DELETE FROM {table} WHERE stage IN ({marks})")
        for i, path in enumerate(parts):
            con.execute(f"ATTACH '{path}' AS part{i} (READ_ONLY)")
        for table in STAGE_TABLES + ("done", "drops", "stage_runs"):
            union = " UNION ALL ".join(f"SELECT * FROM part{i}.{table}" for i in range(len(parts)))
            where = f" WHERE stage IN ({marks})" if table in ("done", "drops", "stage_runs") else ""
            keyed = table not in ("votes", "drops", "stage_runs")
            distinct = "" if table == "stage_runs" else "DISTINCT "
            con.execute(f"INSERT {'OR IGNORE ' * keyed}INTO {table} SELECT {distinct}* FROM ({union}){where}")
        for table in SHARED_TABLES:
            for i in range(len(parts)):
                con.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM part{i}.{table}")
        states = con.execute(
            " UNION ".join(f"SELECT * FROM part{i}.stage_state WHERE stage IN ({marks})" for i in range(len(parts)))
        ).fetchall()
        if len(states) != len(later):
            raise DrimError(f"the partitions ran with different settings: {sorted(states)}")
        con.executemany("INSERT INTO stage_state VALUES (?, ?)", [list(s) for s in states])
        con.commit()
        for i in range(len(parts)):
            con.execute(f"DETACH part{i}")


def _summed(per_partition: list[list[StageStats]]) -> list[StageStats]:
    """The partitions' stats added up per stage, for the run's summary."""
    total: dict[str, StageStats] = {}
    for stats in per_partition:
        for s in stats:
            t = total.setdefault(s.stage, StageStats(s.stage))
            t.processed += s.processed
            t.counts.update(s.counts)
            t.seconds = max(t.seconds, s.seconds)  # partitions run side by side
    return list(total.values())
