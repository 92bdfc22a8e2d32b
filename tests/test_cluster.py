"""Partitioned runs on a local Ray: the same version as one machine, partitions that resume alone, a merge."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import ray

from drim_data.cluster import partition_db, partition_of, run_partitioned
from drim_data.errors import RunFault
from drim_data.recipe import load_recipe
from tests.conftest import DEMO_IMAGES, demo_settings, query, write_recipe

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
