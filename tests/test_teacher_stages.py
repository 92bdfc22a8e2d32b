"""Model-teacher stages end to end against a local OpenAI-compatible server playing a competent teacher."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from drim_data.pipeline import run_pipeline
from drim_data.recipe import RecipeError, load_recipe
from drim_data.status import read_status
from tests.conftest import write_recipe
from tests.fake_teacher import competent_teacher, task_of
from tests.openai_server import FakeOpenAI, Reply, completion

KEY_ENV = "DRIM_TEST_TEACHER_KEY"
SECRET = "sk-test-secret-abcdef0123456789"


def teacher_recipe(tmp_path, images, server, stages, **teacher):
    return write_recipe(
        tmp_path,
        images,
        teacher={
            "stages": stages,
            "questions_per_image": 6,
            "endpoint": {
                "base_url": server.base_url,
                "model": "big-vlm",
                "api_key_env": KEY_ENV,
                "backoff_base_s": 0.01,
                "backoff_max_s": 0.02,
                "max_in_flight": 8,
                "price": {"input": 2.0, "output": 8.0},
            },
            "verification": {"votes": 3, "solver_samples": 2},
            **teacher,
        },
    )


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def test_model_teacher_drives_questions_verification_and_trajectories(tmp_path, small_images):
    with FakeOpenAI(competent_teacher) as server:
        recipe = load_recipe(
            teacher_recipe(tmp_path, small_images, server, ["ground", "questions", "verification", "trajectories"])
        )
        result = run_pipeline(recipe)
    assert result.export.written
    con = duckdb.connect(str(recipe.db), read_only=True)
    q = dict(con.execute("SELECT question_type, count(*) FROM questions GROUP BY 1").fetchall())
    assert q.get("attribute", 0) > 0 and q.get("multi_target", 0) > 0 and "bogus" not in q
    assert con.execute("SELECT count(*) FROM regions WHERE source = 'teacher'").fetchone()[0] > 0
    kept_votes = dict(
        con.execute(
            "SELECT role, bool_and(correct) FROM votes JOIN verdicts USING (question_id) WHERE kept GROUP BY role"
        ).fetchall()
    )
    assert kept_votes == {"vote": True, "validator": True, "solver_full": False, "solver_crop": True}
    verdicts = con.execute(
        "SELECT DISTINCT v.reason FROM questions q JOIN verdicts v USING (question_id) JOIN votes USING (question_id) "
        "WHERE q.answer = 'oops'"
    ).fetchall()
    assert verdicts == [("teacher_disagrees",)]  # the teacher's own votes reject its unanswerable count
    patterns = dict(con.execute("SELECT pattern, count(*) FROM trajectories GROUP BY 1").fetchall())
    assert patterns.get("direct", 0) > 0 and patterns.get("multi_target", 0) > 0
    steps = con.execute("SELECT count(*) FROM observations").fetchone()[0]
    assert steps == sum(n * (2 if p == "multi_target" else 1) for p, n in patterns.items())
    tokens = con.execute("SELECT sum(prompt_tokens), sum(completion_tokens) FROM teacher_calls").fetchone()
    n = len(server.successful())
    assert tokens == (100 * n, 20 * n)  # the fake server reports 100 + 20 tokens per reply
    status = read_status(con, {"big-vlm": recipe.teacher.endpoint.price})
    assert sum(row[2] for row in status.teacher) == n and all(row[3] == 0 for row in status.teacher)
    assert sum(row[6] for row in status.teacher) == pytest.approx((100 * n * 2.0 + 20 * n * 8.0) / 1e6)
    assert {row[0] for row in status.teacher} == {"ground", "generate", "verify", "trajectories"}
    everything = json.dumps(con.execute("SELECT * FROM teacher_calls").fetchall(), default=str)
    con.close()
    assert SECRET not in everything
    for path in result.export.path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_faults_end_in_completed_or_dropped_with_reason(tmp_path, small_images):
    calls = {"n": 0}

    def flaky(body):
        calls["n"] += 1
        task, n = task_of(body), calls["n"]
        if n % 7 == 0:
            return Reply(429, headers={"Retry-After": "0"})
        if n % 11 == 0:
            return Reply(500)
        if n % 13 == 0:
            return Reply(drop=True)
        system = body["messages"][0]["content"]
        x = int(re.search(r"centred at \((\d+),", system).group(1)) if task == "questions" else 2
        if x % 4 == 0:
            return completion(None, refusal="I cannot help with that.")
        if x % 4 == 1:  # malformed, and so is the reply to the repair request
            return '{"questions": [{"type": "attribute", "question": "trunc'
        if task == "trajectory" and n % 5 == 0:
            call = {"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 1, 1]}}
            return f"<think>Zooming.</think><tool_call>{json.dumps(call)}</tool_call>"
        return competent_teacher(body)

    with FakeOpenAI(flaky) as server:
        recipe = load_recipe(
            teacher_recipe(tmp_path, small_images, server, ["questions", "verification", "trajectories"])
        )
        result = run_pipeline(recipe)
    con = duckdb.connect(str(recipe.db), read_only=True)
    reasons = dict(con.execute("SELECT reason, count(*) FROM drops GROUP BY 1").fetchall())
    pending = con.execute(
        "SELECT count(*) FROM questions q JOIN verdicts v USING (question_id) WHERE v.kept AND question_id NOT IN "
        "(SELECT item_id FROM done WHERE stage = 'trajectories')"
    ).fetchone()[0]
    con.close()
    assert {"refusal", "unparseable_reply"} <= set(reasons)
    assert "invalid_zoom" in reasons  # a 1x1-pixel box is refused by the tool spec
    assert pending == 0 and "error" not in reasons
    assert result.export.written


def test_killed_teacher_run_never_resends_a_successful_request(tmp_path, small_images):
    with FakeOpenAI(competent_teacher, latency=0.01) as server:
        recipe = teacher_recipe(tmp_path, small_images, server, ["questions", "verification", "trajectories"])
        server.hold_after = 40
        proc = subprocess.Popen(
            [sys.executable, "-m", "drim_data", "generate", str(recipe), "--no-progress"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, KEY_ENV: SECRET},
        )
        while len(server.successful()) < 40 and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(1.0)  # let the client store every response it was sent
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.hold_after = None
        server.release.set()
        first_run = len(server.successful())
        result = run_pipeline(load_recipe(recipe))
    digests = [r.digest for r in server.successful()]
    assert first_run >= 40 and len(digests) > first_run
    assert len(digests) == len(set(digests))  # no successful request was ever sent twice
    assert result.export.written and result.export.version == 1


def test_stages_need_an_endpoint(tmp_path, small_images):
    path = write_recipe(tmp_path, small_images, teacher={"stages": ["questions"]})
    with pytest.raises(RecipeError, match="need teacher.endpoint"):
        load_recipe(path)
