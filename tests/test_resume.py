"""Crashes lose nothing: a killed run resumes to the same shards, and a failed export leaves no half version."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from drim_data.errors import RunFault
from drim_data.pipeline import run_pipeline
from drim_data.recipe import load_recipe
from drim_data.stages import export
from tests.conftest import query, write_recipe


def shard_hashes(version: Path) -> dict[str, str]:
    return {
        str(p.relative_to(version)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(version.glob("data/*/*.parquet"))
    }


def generate_until_killed(recipe: Path, stage: str) -> int:
    """Run the CLI and SIGKILL it as soon as it announces `stage`; returns the exit code."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "drim_data", "generate", str(recipe), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    for line in proc.stdout:
        if line.startswith(f"stage {stage}:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    return proc.returncode


@pytest.mark.parametrize("stage", ["mine", "trajectories"])
def test_killed_run_resumes_to_identical_shards(tmp_path, small_images, stage):
    clean = run_pipeline(load_recipe(write_recipe(tmp_path / "clean", small_images)))

    recipe = write_recipe(tmp_path / "killed", small_images)
    assert generate_until_killed(recipe, stage) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "out" / "test-set" / "v1").exists()
    resumed = run_pipeline(load_recipe(recipe))

    assert resumed.export.version == 1
    assert shard_hashes(resumed.export.path) == shard_hashes(clean.export.path)
    # every stage's state matches the uninterrupted run's, drops (a table without a key) included
    sql = (
        "SELECT (SELECT count(*) FROM regions), (SELECT count(*) FROM questions), (SELECT count(*) FROM verdicts), "
        "(SELECT count(*) FROM trajectories), (SELECT count(*) FROM observations), (SELECT count(*) FROM done), "
        "(SELECT list(stage || item_id || reason ORDER BY stage, item_id, reason) FROM drops)"
    )
    resumed_state = query(tmp_path / "killed" / "state.duckdb", sql)
    assert resumed_state == query(tmp_path / "clean" / "state.duckdb", sql)
    assert min(resumed_state[0][:5]) > 0


def test_failed_export_leaves_no_half_version_and_the_rerun_completes(tmp_path, small_images, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path, small_images))
    real_write = export._write_split

    def crash_on_rl(ctx, staging, split, *rest):
        if split == "rl":
            raise OSError("disk full")
        return real_write(ctx, staging, split, *rest)

    monkeypatch.setattr(export, "_write_split", crash_on_rl)
    root = tmp_path / "out" / "test-set"
    with pytest.raises(RunFault, match=f"cannot write version v1 in {root}: disk full"):
        run_pipeline(recipe)
    assert list(root.iterdir()) == []  # neither a version nor its staging folder is left

    monkeypatch.setattr(export, "_write_split", real_write)
    result = run_pipeline(recipe)
    assert result.export.written and result.export.version == 1
    assert sorted(p.name for p in root.iterdir()) == ["v1"]
    manifest = json.loads((root / "v1" / "manifest.json").read_text())
    assert set(manifest["shards"]) == set(shard_hashes(root / "v1"))


def test_version_renamed_but_not_recorded_is_adopted_not_rewritten(tmp_path, small_images, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path, small_images))

    def die(*args):
        raise KeyboardInterrupt  # killed between the rename and the database record

    monkeypatch.setattr(export, "_register", die)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe)
    monkeypatch.undo()
    v1 = tmp_path / "out" / "test-set" / "v1"
    before = shard_hashes(v1)
    result = run_pipeline(recipe)
    assert result.export.version == 1 and shard_hashes(v1) == before
    assert not (v1.parent / "v2").exists()
    assert not run_pipeline(recipe).export.written
