"""The runner tells an item's bad input, a fault of the whole run and an interrupt apart, and loses nothing."""

import asyncio
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from drim_data.cli import app
from drim_data.errors import Drop, RunFault
from drim_data.pipeline import run_pipeline
from drim_data.recipe import load_recipe
from drim_data.stages import generate
from tests.conftest import query, write_recipe
from tests.openai_server import FakeOpenAI
from tests.test_resume import shard_hashes

KEY_ENV = "DRIM_TEST_RUNNER_KEY"


def _fail_on_second_image(monkeypatch, exc: BaseException) -> None:
    real, seen = generate._generate, []

    def flaky(ctx, stats, image_id, width, height):
        seen.append(image_id)
        if len(seen) == 2:
            raise exc
        return real(ctx, stats, image_id, width, height)

    monkeypatch.setattr(generate, "_generate", flaky)


def _state(db: Path) -> dict:
    return {
        "generated": query(db, "SELECT count(*) FROM done WHERE stage = 'generate'")[0][0],
        # what the run's failures left behind (an image with nothing to ask about is an ordinary outcome)
        "drops": query(db, "SELECT stage, reason FROM drops WHERE stage = 'generate' AND reason != 'no_questions'"),
        "exports": query(db, "SELECT count(*) FROM exports")[0][0],
    }


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory) -> dict[str, str]:
    from tests.conftest import HARBOUR, NEON

    folder = tmp_path_factory.mktemp("clean")
    (folder / "images").mkdir()
    for src in (NEON, HARBOUR):
        (folder / "images" / src.name).write_bytes(src.read_bytes())
    return shard_hashes(run_pipeline(load_recipe(write_recipe(folder, folder / "images"))).export.path)


@pytest.mark.parametrize(
    "interrupt",
    [
        KeyboardInterrupt(),
        duckdb.InterruptException("INTERRUPT Error: Interrupted"),
        RuntimeError("Query interrupted"),
    ],
)
def test_an_interrupt_records_nothing_exports_nothing_and_the_rerun_matches_a_clean_run(
    tmp_path, small_images, monkeypatch, clean_shards, interrupt
):
    recipe = load_recipe(write_recipe(tmp_path, small_images))
    _fail_on_second_image(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe)
    assert _state(recipe.db) == {"generated": 1, "drops": [], "exports": 0}
    assert not (tmp_path / "out" / "test-set" / "v1").exists()

    monkeypatch.undo()
    assert shard_hashes(run_pipeline(recipe).export.path) == clean_shards


@pytest.mark.parametrize(
    "fault", [RunFault("the endpoint refused the key"), OSError(errno.ENOSPC, "No space left on device", "x.duckdb")]
)
def test_a_run_fault_stops_the_run_and_marks_nothing_more_done(tmp_path, small_images, monkeypatch, fault):
    recipe = load_recipe(write_recipe(tmp_path, small_images))
    _fail_on_second_image(monkeypatch, fault)
    with pytest.raises(RunFault, match="refused the key|No space left on device"):
        run_pipeline(recipe)
    assert _state(recipe.db) == {"generated": 1, "drops": [], "exports": 0}


def test_a_drop_is_done_and_an_unexpected_error_is_retried_by_the_next_run(tmp_path, small_images, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path, small_images))
    _fail_on_second_image(monkeypatch, Drop("unusable_image", "no pixels"))
    run_pipeline(recipe, until="generate")
    assert _state(recipe.db) == {"generated": 2, "drops": [("generate", "unusable_image")], "exports": 0}

    recipe = load_recipe(write_recipe(tmp_path / "other", small_images))
    _fail_on_second_image(monkeypatch, ZeroDivisionError("a bug"))
    run_pipeline(recipe, until="generate")
    assert _state(recipe.db) == {"generated": 1, "drops": [("generate", "error")], "exports": 0}
    monkeypatch.undo()
    run_pipeline(recipe, until="generate")  # fixed: the item is tried again and its old drop goes
    assert _state(recipe.db) == {"generated": 2, "drops": [], "exports": 0}


def test_the_cli_exits_130_on_an_interrupt_and_2_on_a_run_fault(tmp_path, small_images, monkeypatch):
    recipe = write_recipe(tmp_path, small_images)
    _fail_on_second_image(monkeypatch, KeyboardInterrupt())
    result = CliRunner().invoke(app, ["generate", str(recipe), "--no-progress"])
    assert result.exit_code == 130 and "interrupted: nothing was exported" in result.output
    _fail_on_second_image(monkeypatch, RunFault("the endpoint refused the key"))
    result = CliRunner().invoke(app, ["generate", str(write_recipe(tmp_path / "b", small_images)), "--no-progress"])
    assert result.exit_code == 2 and "error: the endpoint refused the key" in result.output
    assert "Traceback" not in result.output


def _lenient_teacher(body: dict) -> str:
    """Every referent unambiguous, every answer "A"; with the lenient thresholds below, every item is kept."""
    first = body["messages"][0]["content"]
    validating = isinstance(first, str) and first.startswith("TASK: validate")
    return '{"unambiguous": true}' if validating else '{"answer": "A"}'


LENIENT = {"votes": 1, "min_agreement": 0.0, "solver_samples": 1, "solver_max_pass": 1.0, "crop_min_pass": 0.0}


def _sigint_when(recipe: Path, marker: str, delay: float, env: dict) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "drim_data", "generate", str(recipe), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith(marker):
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            break
    output += proc.stdout.read().splitlines(keepends=True)
    proc.wait()
    assert "Traceback" not in "".join(output), "".join(output)
    return proc.returncode


@pytest.mark.parametrize(
    ("path", "marker", "delay"), [("builtin", "stage trajectories:", 0.0), ("model", "stage verify:", 0.3)]
)
def test_ctrl_c_stops_cleanly_and_the_rerun_matches_a_clean_run(tmp_path, small_images, path, marker, delay):
    sections = {}
    if path == "model":
        endpoint = {"api_key_env": KEY_ENV, "model": "t", "max_in_flight": 4}
        sections = {"teacher": {"stages": ["verification"], "endpoint": endpoint, "verification": LENIENT}}
    with FakeOpenAI(_lenient_teacher, latency=0.5) as server:  # slow enough that the signal finds calls in flight
        if path == "model":
            sections["teacher"]["endpoint"]["base_url"] = server.base_url
        clean = run_pipeline_with_key(write_recipe(tmp_path / "clean", small_images, **sections))
        recipe = write_recipe(tmp_path / "stopped", small_images, **sections)
        code = _sigint_when(recipe, marker, delay, {KEY_ENV: "k"})
        db = tmp_path / "stopped" / "state.duckdb"
        assert code == 130
        if path == "model":  # stopped in verification, with teacher calls in flight
            verified = query(db, "SELECT count(*) FROM done WHERE stage = 'verify'")[0][0]
            assert verified < query(db, "SELECT count(*) FROM questions")[0][0]
        assert query(db, "SELECT count(*) FROM drops WHERE reason = 'error' OR reason LIKE 'teacher_%'") == [(0,)]
        assert query(db, "SELECT count(*) FROM exports") == [(0,)]
        assert not (tmp_path / "stopped" / "out" / "test-set" / "v1").exists()
        assert shard_hashes(run_pipeline_with_key(recipe).export.path) == shard_hashes(clean.export.path)


def run_pipeline_with_key(recipe: Path):
    os.environ[KEY_ENV] = "k"
    try:
        return run_pipeline(load_recipe(recipe))
    finally:
        del os.environ[KEY_ENV]


def test_status_reads_a_database_that_a_run_holds(tmp_path, small_images):
    recipe = write_recipe(tmp_path, small_images)
    run_pipeline(load_recipe(recipe), until="mine")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(tmp_path / 'state.duckdb')!r}); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(tmp_path / "state.duckdb"), read_only=True)
        result = CliRunner().invoke(app, ["status", str(recipe)], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert re.search(r"mine\s*│\s*2\s*│\s*[1-9]\d* regions", result.output), result.output
    finally:
        holder.kill()
        holder.wait()


class _SlowClosingTeacher:
    """Stands in for an endpoint client whose close takes a moment, as a real connection pool's does."""

    class cfg:
        batch = False

    closed = False

    async def close(self) -> None:
        self.closed = True
        await asyncio.sleep(0.2)


def test_a_run_fault_cancels_the_other_items_before_the_clients_close(tmp_path, small_images):
    from drim_data.db import connect
    from drim_data.stages.contract import Context, StageStats

    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "t", "api_key_env": KEY_ENV}
    recipe = load_recipe(write_recipe(tmp_path, small_images, teacher={"stages": ["questions"], "endpoint": endpoint}))
    con = connect(recipe.db)
    ctx = Context(con, recipe, teacher=None)
    client = ctx.models["teacher"] = _SlowClosingTeacher()

    async def handle(row):
        if row[0] == "a":
            raise RunFault("refused")
        await asyncio.sleep(0.1)  # a request in flight when the fault stops the run
        if client.closed:
            raise RuntimeError("client has been closed")
        return lambda: None

    with pytest.raises(RunFault, match="refused"):
        ctx.for_each_pending_async(StageStats("generate"), "SELECT * FROM (VALUES ('a'), ('b')) t(id)", handle)
    assert con.execute("SELECT count(*) FROM drops").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM done").fetchone() == (0,)
    con.close()
