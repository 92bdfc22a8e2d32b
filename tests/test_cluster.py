"""Partitioned runs on a local Ray: the same version as one machine, partitions that resume alone, a merge."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import ray

from drim_data.cluster import largest_first, partition_db, partition_of, run_partitioned
from drim_data.errors import RunFault
from drim_data.recipe import EndpointConfig, TeacherConfig, load_recipe
from drim_data.teacher import limits
from tests.conftest import DEMO_IMAGES, demo_settings, query, write_recipe
from tests.openai_server import FakeOpenAI

PARTITIONS = 4


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def rows(version: Path, split: str) -> list[dict]:
    return pq.read_table(version / "data" / split).to_pylist()


def runs_since(db: Path, count: int) -> list[tuple]:
    """The stage runs a database recorded after its first `count`, as (stage, processed)."""
    return query(db, f"SELECT stage, processed FROM stage_runs ORDER BY rowid OFFSET {count}")


def test_partitions_with_the_most_pixels_are_submitted_first():
    # on two workers, shares of 2, 2 and 8 take 10 in index order (2 + 8 after 2) and 8 largest first
    assert largest_first([4, 4, 6, 8]) == [3, 2, 0, 1]
    assert largest_first([2, 2, 8]) == [2, 0, 1]
    assert largest_first([5, 0, 5]) == [0, 2, 1]


def test_four_partitions_write_the_rows_one_machine_writes_and_resume_alone(tmp_path, demo_version, local_ray):
    recipe = load_recipe(write_recipe(tmp_path, DEMO_IMAGES, **demo_settings()))
    result = run_partitioned(recipe, PARTITIONS)
    assert result.export.written and result.export.version == 1
    for split in ("sft", "rl"):
        assert rows(result.export.path, split) == rows(demo_version, split)  # the same ids, the same rows
    parts = [partition_db(recipe, k, PARTITIONS) for k in range(PARTITIONS)]
    held = [query(p, "SELECT image_id FROM images") for p in parts]
    ingested = query(recipe.db, "SELECT image_id FROM images")
    assert sorted(i for h in held for (i,) in h) == sorted(i for (i,) in ingested)
    assert all(partition_of(i, PARTITIONS) == k for k, h in enumerate(held) for (i,) in h)

    # a partition killed during trajectories holds its whole items only: take back the last ones it wrote
    busy = max(range(PARTITIONS), key=lambda k: query(parts[k], "SELECT count(*) FROM trajectories")[0][0])
    con = duckdb.connect(str(parts[busy]))
    lost = [q for (q,) in con.execute("SELECT item_id FROM done WHERE stage = 'trajectories' ORDER BY 1").fetchall()]
    lost = lost[len(lost) // 2 :]
    for table, column in (("trajectories", "question_id"), ("observations", "question_id"), ("done", "item_id")):
        con.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT unnest(?::VARCHAR[]))", [lost])
    con.close()
    before = [query(p, "SELECT count(*) FROM stage_runs")[0][0] for p in parts]

    again = run_partitioned(recipe, PARTITIONS)
    for k, part in enumerate(parts):  # only the killed partition did any work, and only what it had lost
        redone = {stage: n for stage, n in runs_since(part, before[k]) if n}
        assert redone == ({"trajectories": len(lost)} if k == busy else {}), k
    assert not again.export.written and again.export.version == 1  # the same rows: nothing new to export


def test_a_partition_that_fails_stops_the_run_naming_it_and_exports_nothing(tmp_path, small_images, local_ray):
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "PATH", "max_attempts": 1}
    teacher = {"stages": ["questions"], "endpoint": endpoint}  # nothing listens on port 9
    recipe = load_recipe(write_recipe(tmp_path, small_images, teacher=teacher))
    with pytest.raises(RunFault, match=r"partition \d of 2 failed.*127.0.0.1:9.*rerun to resume it"):
        run_partitioned(recipe, 2)
    assert not (tmp_path / "out").exists()
    assert query(recipe.db, "SELECT count(*) FROM regions") == [(0,)]  # nothing was merged


def _ask_for_a_while(base_url: str, db: str, partition: int, shared: dict, asks: int, seconds: float) -> float:
    """In a Ray worker: one partition's teacher sends `asks` different requests at once, and gives up on those
    still waiting after `seconds`; returns when it started."""
    import asyncio

    from drim_data.db import connect as open_db
    from drim_data.teacher import limits
    from drim_data.teacher.client import Teacher

    limits.use_shared(shared, partition)
    cfg = EndpointConfig(base_url=base_url, model="m", api_key_env="PATH", requests_per_minute=RPM)
    teacher = Teacher(cfg, open_db(Path(db)))

    started = time.monotonic()

    async def main() -> None:
        messages = [[{"role": "user", "content": f"question {partition}.{i}"}] for i in range(asks)]
        sends = [teacher.ask(m, purpose="t", stage="verify", prompt_version="v") for m in messages]
        try:
            await asyncio.wait_for(asyncio.gather(*sends), seconds)
        except TimeoutError:
            pass
        await teacher.close()

    asyncio.run(main())
    return started


RPM = 30


@pytest.mark.parametrize("shared", [True, False])
def test_partitions_draw_on_one_request_budget(tmp_path, local_ray, shared):
    """30 requests a minute for 4 partitions of 12 requests each: in the first 3 seconds the server sees the
    budget's 30 (and the 1.5 it refills), not the 48 four budgets of 30 would let through."""
    teacher = TeacherConfig(
        stages=["verification"], endpoint=EndpointConfig("http://x/v1", "m", requests_per_minute=RPM)
    )
    with FakeOpenAI(lambda body: "ok") as server:
        endpoint = dataclasses.replace(teacher.endpoint, base_url=server.base_url, api_key_env="PATH")
        actors = limits.start_shared(dataclasses.replace(teacher, endpoint=endpoint)) if shared else {}
        task = ray.remote(_ask_for_a_while)
        starts = ray.get(
            [task.remote(server.base_url, str(tmp_path / f"{k}.duckdb"), k, actors, 12, 3.0) for k in range(4)]
        )
        answered = server.successful()
    window = max(starts) + 3.0 - min(starts)  # every partition gave up 3 s after it started
    if shared:
        assert RPM - 2 <= len(answered) <= RPM + RPM / 60 * window + 1, (len(answered), window)
    else:
        assert len(answered) == 48


def test_a_partition_follows_a_renamed_file(tmp_path, small_images):
    """Seeding copies where each image lives now: a partition reading the old path would drop it as missing."""
    from drim_data.cluster import _seed
    from drim_data.pipeline import run_pipeline, stage_fingerprint

    recipe = load_recipe(write_recipe(tmp_path, small_images, annotations=False))
    part = partition_db(recipe, 0, 1)
    for _ in range(2):
        run_pipeline(recipe, until="ingest")
        ids = [i for (i,) in query(recipe.db, "SELECT image_id FROM images ORDER BY 1")]
        _seed(recipe, part, ids, stage_fingerprint(recipe, "ingest", ""))
        assert query(part, "SELECT uri FROM images ORDER BY 1") == query(
            recipe.db, "SELECT uri FROM images ORDER BY 1"
        )
        first = sorted(small_images.iterdir())[0]
        first.rename(first.with_name("renamed-" + first.name))
    assert any("renamed-" in uri for (uri,) in query(part, "SELECT uri FROM images"))
