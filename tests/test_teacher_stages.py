"""Model-teacher stages end to end against a local OpenAI-compatible server playing a competent teacher."""

import collections
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import duckdb
import pytest
from typer.testing import CliRunner

from drim_data.cli import app
from drim_data.db import connect, reset_stage
from drim_data.errors import RunFault
from drim_data.pipeline import run_pipeline
from drim_data.recipe import RecipeError, load_recipe
from drim_data.status import read_status
from tests.conftest import query, write_recipe
from tests.fake_teacher import (
    COORDINATES,
    LOCATED,
    competent_teacher,
    images_of,
    mixed_verifier,
    question_of,
    task_of,
)
from tests.openai_server import FakeOpenAI, Reply, completion

KEY_ENV = "DRIM_TEST_TEACHER_KEY"
SECRET = "sk-test-secret-abcdef0123456789"


def teacher_recipe(tmp_path, images, server, stages, base_url=None, annotations=True, **teacher):
    return write_recipe(
        tmp_path,
        images,
        annotations,
        teacher={
            "stages": stages,
            "questions_per_image": 6,
            "endpoint": {
                "base_url": base_url or server.base_url,
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
    referents = [json.loads(r) for (r,) in con.execute("SELECT referent FROM questions").fetchall()]
    assert referents and all(all(name in LOCATED for name in r) for r in referents)  # the teacher's own names
    assert all(not COORDINATES.search(q) for (q,) in con.execute("SELECT question FROM questions").fetchall())
    everything = json.dumps(con.execute("SELECT * FROM teacher_calls").fetchall(), default=str)
    con.close()
    assert SECRET not in everything
    for path in result.export.path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def _texts(body: dict, task: str) -> list[str]:
    """The words a request puts before the model: every text part, or for a trajectory the question alone."""
    texts = [
        m["content"] if isinstance(m["content"], str) else p["text"]
        for m in body["messages"]
        for p in (m["content"] if isinstance(m["content"], list) else [{"type": "text"}])
        if p["type"] == "text"
    ]
    return [question_of(body)] if task == "trajectory" else texts


def test_no_prompt_names_a_place_by_coordinates(tmp_path, small_images):
    with FakeOpenAI(competent_teacher) as server:
        recipe = load_recipe(
            teacher_recipe(tmp_path, small_images, server, ["questions", "verification", "trajectories"])
        )
        run_pipeline(recipe)
    seen = collections.Counter()
    for request in server.successful():
        task = task_of(request.body)
        seen[task] += 1
        for t in _texts(request.body, task):
            assert not COORDINATES.search(t), (task, t)
        if task == "questions":
            assert (
                "The object is a" in request.body["messages"][0]["content"]
                or "no class name" in (request.body["messages"][0]["content"])
            )
            assert len(images_of(request.body)) == 2  # the outlined whole view and the crop
    assert {"questions", "questions_pair", "answer", "validate", "trajectory"} <= set(seen)
    dropped = query(recipe.db, "SELECT count(*) FROM questions WHERE question LIKE '%(10, 20)%'")
    assert dropped == [(0,)]  # a question that points with coordinates is left out


def test_faults_end_in_completed_or_dropped_with_reason(tmp_path, small_images):
    calls = {"n": 0}
    regions: dict[str, int] = {}  # each region's crop, numbered as first seen: the first is refused, the next garbled

    def flaky(body):
        calls["n"] += 1
        task, n = task_of(body), calls["n"]
        if n % 7 == 0:
            return Reply(429, headers={"Retry-After": "0"})
        if n % 11 == 0:
            return Reply(500)
        if n % 13 == 0:
            return Reply(drop=True)
        crop = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"][-1]["image_url"]["url"]
        x = regions.setdefault(hashlib.sha256(crop.encode()).hexdigest(), len(regions)) if task == "questions" else 2
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


FAULT_STAGES = ["ground", "questions"]  # the first two model stages: enough to show nothing runs past a fault
MODEL_STAGES = ("ground", "generate", "verify", "trajectories")


def shard_digests(export) -> dict[str, str]:
    manifest = json.loads((export.path / "manifest.json").read_text())
    return {name: shard["sha256"] for name, shard in manifest["shards"].items()}


def closed_port_url() -> str:
    with socket.socket() as probe:  # bound and released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


@pytest.mark.parametrize("fault", ["missing_key", "unauthorized", "unreachable", "malformed_url"])
def test_run_faults_stop_the_run_and_a_fixed_rerun_equals_a_clean_run(tmp_path, small_images, monkeypatch, fault):
    refuse = {"on": False}

    def endpoint(body):
        return Reply(401) if refuse["on"] else competent_teacher(body)

    with FakeOpenAI(endpoint) as server:
        clean = run_pipeline(load_recipe(teacher_recipe(tmp_path / "clean", small_images, server, FAULT_STAGES)))
        refuse["on"] = fault == "unauthorized"
        broken_url = {"unreachable": closed_port_url(), "malformed_url": server.base_url.removeprefix("http://")}
        path = teacher_recipe(tmp_path / "faulted", small_images, server, FAULT_STAGES, broken_url.get(fault))
        if fault == "missing_key":
            monkeypatch.delenv(KEY_ENV)
        with pytest.raises(RecipeError if fault == "malformed_url" else RunFault) as err:  # a URL is checked on load
            run_pipeline(load_recipe(path))
        named = {"missing_key": KEY_ENV, "unauthorized": server.base_url}.get(fault, broken_url.get(fault))
        assert named in str(err.value)
        db = tmp_path / "faulted" / "state.duckdb"
        stages = ", ".join(f"'{s}'" for s in MODEL_STAGES)
        if fault == "malformed_url":  # refused before anything ran
            assert not db.exists()
        else:
            assert query(db, f"SELECT count(*) FROM done WHERE stage IN ({stages})") == [(0,)]
            assert query(db, f"SELECT count(*) FROM drops WHERE stage IN ({stages})") == [(0,)]
        monkeypatch.setenv(KEY_ENV, SECRET)
        refuse["on"] = False
        fixed = run_pipeline(load_recipe(teacher_recipe(tmp_path / "faulted", small_images, server, FAULT_STAGES)))
    assert clean.export.written and fixed.export.written
    assert shard_digests(fixed.export) == shard_digests(clean.export)


def test_the_cli_exits_non_zero_naming_the_endpoint_and_the_variable(tmp_path, small_images):
    with FakeOpenAI(lambda body: Reply(401)) as server:
        path = teacher_recipe(tmp_path, small_images, server, ["questions"])
        result = CliRunner().invoke(app, ["generate", str(path), "--no-progress"], env={KEY_ENV: SECRET})
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and server.base_url in output and KEY_ENV in output
    assert "Traceback" not in output and SECRET not in output


def test_an_echoed_key_reaches_neither_the_database_nor_the_drops(tmp_path, small_images):
    with FakeOpenAI(lambda body: Reply(500, echo_headers=True)) as server:
        recipe = load_recipe(teacher_recipe(tmp_path, small_images, server, ["ground"]))
        run_pipeline(recipe, until="ground")
    drops = query(recipe.db, "SELECT reason, detail FROM drops WHERE stage = 'ground'")
    assert drops and all(r == "teacher_http_500" and "Authorization: [redacted]" in d for r, d in drops)
    assert SECRET.encode() not in recipe.db.read_bytes()


def test_an_unreadable_tile_costs_that_tile_only(tmp_path, small_images):
    spoiled: set[str] = set()

    def one_bad_tile(body):
        if task_of(body) == "ground":
            url = body["messages"][1]["content"][0]["image_url"]["url"]
            if not spoiled or url in spoiled:  # the first tile asked, and its repair request
                spoiled.add(url)
                return "I see some objects but cannot list them."
        return competent_teacher(body)

    with FakeOpenAI(one_bad_tile) as server:
        recipe = load_recipe(teacher_recipe(tmp_path, small_images, server, ["ground"]))
        run_pipeline(recipe, until="ground")
    drops = query(recipe.db, "SELECT item_id, reason FROM drops WHERE stage = 'ground' AND item_id LIKE '%:tile%'")
    assert [reason for _, reason in drops] == ["unparseable_reply"]
    image_id = drops[0][0].split(":tile")[0]
    kept = query(recipe.db, f"SELECT count(*) FROM regions WHERE source = 'teacher' AND image_id = '{image_id}'")
    labelled = query(recipe.db, f"SELECT count(*) FROM regions WHERE label = 'buoy' AND image_id = '{image_id}'")
    assert kept[0][0] + labelled[0][0] > 0  # the other tiles' boxes were kept
    assert query(recipe.db, "SELECT count(*) FROM done WHERE stage = 'ground'") == [(2,)]


def test_an_unusable_trajectory_reply_gets_a_repair_request(tmp_path, small_images):
    def rambling_first(body):
        if task_of(body) == "trajectory" and len(body["messages"]) == 2:  # each question's first turn
            return "Hmm, that is a tricky one."  # neither a tool call nor an answer
        return competent_teacher(body)

    with FakeOpenAI(rambling_first) as server:
        recipe = load_recipe(
            teacher_recipe(tmp_path, small_images, server, ["questions", "verification", "trajectories"])
        )
        run_pipeline(recipe)
    repairs = [r for r in server.successful() if "could not be used" in json.dumps(r.body["messages"][-1])]
    assert repairs and all("Hmm, that is a tricky one." in json.dumps(r.body["messages"]) for r in repairs)
    assert query(recipe.db, "SELECT count(*) FROM drops WHERE stage = 'trajectories' AND reason = 'no_answer'") == [
        (0,)
    ]
    assert query(recipe.db, "SELECT count(*) FROM trajectories")[0][0] > 0


def test_cascaded_verification_keeps_the_same_items_for_fewer_calls_and_reuses_the_cache(tmp_path, small_images):
    def verify_with(folder, cascade):
        """Verification over a copy of the generated questions: its verdicts and the requests answered."""
        if not folder.exists():
            shutil.copytree(tmp_path / "generated", folder)
        server.log.clear()
        checks = {"votes": 3, "solver_samples": 2, "cascade": cascade}
        path = teacher_recipe(folder, small_images, server, ["questions", "verification"], verification=checks)
        run_pipeline(load_recipe(path), until="verify")
        verdicts = query(folder / "state.duckdb", "SELECT question_id, reason FROM verdicts ORDER BY 1")
        return verdicts, len(server.successful())

    with FakeOpenAI(mixed_verifier()) as server:  # one server: the same base_url, so generate is not redone
        generated = teacher_recipe(tmp_path / "generated", small_images, server, ["questions"])
        run_pipeline(load_recipe(generated), until="generate")
        all_at_once, everything = verify_with(tmp_path / "all", False)
        cascaded, fewer = verify_with(tmp_path / "cascade", True)
        con = connect(tmp_path / "all" / "state.duckdb")  # the cascade over the all-at-once cache: the same keys
        reset_stage(con, "verify")
        con.close()
        again = verify_with(tmp_path / "all", True)
    reasons = collections.Counter(reason for _, reason in all_at_once)
    assert reasons[None] and reasons["teacher_disagrees"] and len(reasons) >= 4  # kept ones and several drops
    assert cascaded == all_at_once and 0 < fewer < everything
    assert again == (all_at_once, 0)

    con = duckdb.connect(str(tmp_path / "cascade" / "state.duckdb"), read_only=True)
    status = read_status(con)
    stored = con.execute("SELECT count(*) FROM teacher_calls WHERE stage = 'verify'").fetchone()[0]
    con.close()
    verify = next(c for c in status.per_kept if c.stage == "verify")
    assert status.kept == reasons[None] and verify.calls == stored == fewer
    assert verify.calls_per_kept == fewer / status.kept and verify.tokens_per_kept == 120 * fewer / status.kept
    assert status.per_kept[-1].stage == "all" and status.per_kept[-1].calls > fewer  # and the questions' calls
    shown = CliRunner().invoke(app, ["status", str(tmp_path / "cascade" / "recipe.yaml")], env={"COLUMNS": "200"})
    assert f"model calls per kept item ({status.kept} kept by verify)" in shown.output
    assert f"{verify.calls_per_kept:.1f}" in shown.output.split("per kept item")[1]
