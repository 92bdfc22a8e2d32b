"""Model-teacher stages end to end against a local OpenAI-compatible server playing a competent teacher."""

import base64
import collections
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest
from PIL import Image

from drim_data.pipeline import run_pipeline
from drim_data.recipe import RecipeError, load_recipe
from drim_data.status import read_status
from tests.conftest import query, write_recipe
from tests.openai_server import FakeOpenAI, Reply, completion

KEY_ENV = "DRIM_TEST_TEACHER_KEY"
SECRET = "sk-test-secret-abcdef0123456789"
TRUTH = "green"  # the fake teacher 'sees' every object as green


def _task(body: dict) -> str:
    first = body["messages"][0]["content"]
    return re.match(r"TASK: (\w+)", first).group(1) if isinstance(first, str) else ""


def _question(body: dict) -> str:
    return next(
        p["text"]
        for m in body["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "text"
    )


def _correct(question: str) -> str:
    options = re.findall(r"^([A-D])\. (.+)$", question, re.MULTILINE)
    return next((letter for letter, text in options if text == TRUTH), TRUTH)


OUTLINES = {
    "magenta": lambda r, g, b: (r > 180) & (g < 90) & (b > 180),
    "cyan": lambda r, g, b: (r < 90) & (g > 180) & (b > 180),
}
LOCATED: dict[str, tuple[int, int]] = {}  # the fake teacher's memory: each referent it wrote, and where it saw it
COORDINATES = re.compile(r"\d+\s*,\s*\d+|\(\s*\d+|\[\s*\d+|0-1000|grid")


def _images(body: dict) -> list[Image.Image]:
    parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
    return [
        Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).convert("RGB")
        for p in parts
        if p["type"] == "image_url"
    ]


def _outlined(view: Image.Image, colour: str) -> tuple[int, int]:
    """Where the outline of a colour is drawn in the view, on the 0..1000 grid: what a teacher sees."""
    rgb = np.asarray(view).astype(int)
    ys, xs = np.nonzero(OUTLINES[colour](rgb[..., 0], rgb[..., 1], rgb[..., 2]))
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    return round(cx / view.width * 1000), round(cy / view.height * 1000)


def _name(body: dict, colour: str) -> str:
    """A referring expression with no coordinates in it, remembered with where the object is."""
    x, y = _outlined(_images(body)[0], colour)
    label = re.search(r"The object is an? ([\w ]+)\.", body["messages"][0]["content"])
    name = f"the {label.group(1) if label else 'thing'} number {'abcdefghij'[x % 10]}{'abcdefghij'[y % 10]}{colour}"
    LOCATED[name] = (x, y)
    return name


def _centres(question: str) -> list[tuple[int, int]]:
    return [xy for name, xy in sorted(LOCATED.items(), key=lambda kv: question.find(kv[0])) if name in question]


def competent_teacher(body: dict):
    """Answers like a good teacher would, from what the request itself says and shows."""
    task = _task(body)
    if task == "ground":
        return json.dumps({"objects": [{"label": "buoy", "bbox_2d": [480, 480, 515, 520]}]})
    if task == "questions":
        referent = _name(body, "magenta")
        return json.dumps(
            {
                "referent": referent,
                "questions": [
                    {
                        "type": "attribute",
                        "question": f"What colour is {referent}?",
                        "options": ["red", TRUTH, "blue", "white"],
                        "answer": TRUTH,
                    },
                    {"type": "count", "question": f"How many parts has {referent}?", "options": [], "answer": "oops"},
                    {
                        "type": "attribute",
                        "question": f"What colour is {referent} at (10, 20)?",
                        "options": [],
                        "answer": "red",
                    },
                    {"type": "bogus", "question": "Something else entirely?", "options": [], "answer": "x"},
                ],
            }
        )
    if task == "questions_pair":
        a, b = _name(body, "magenta"), _name(body, "cyan")
        return (
            "```json\n"
            + json.dumps(
                {
                    "referents": [a, b],
                    "questions": [
                        {
                            "type": "multi_target",
                            "question": f"Do {a} and {b} share a colour?",
                            "options": [],
                            "answer": "yes",
                        }
                    ],
                }
            )
            + "\n```"
        )
    if task == "answer":
        question = _question(body)
        if "whole scene" in body["messages"][0]["content"]:
            return json.dumps({"answer": "C"})  # the solver cannot tell without zooming
        return json.dumps({"answer": "yes" if "share a colour" in question else _correct(question)})
    if task == "validate":
        return json.dumps({"unambiguous": True, "reason": "one object"})
    if task == "trajectory":
        question = _question(body)
        zooms_done = sum(1 for m in body["messages"] if m["role"] == "assistant")
        centres = _centres(question)
        if zooms_done < len(centres):
            x, y = centres[zooms_done]
            call = {"name": "zoom_in", "arguments": {"bbox_2d": [x - 30, y - 30, x + 30, y + 30]}}
            return f"<think>I need a closer look at ({x}, {y}).</think>\n<tool_call>{json.dumps(call)}</tool_call>"
        answer = "yes" if "share a colour" in question else _correct(question)
        return f"<think>Now I can see it.</think>\n<answer>{answer}</answer>"
    return Reply(400)


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
    return [_question(body)] if task == "trajectory" else texts


def test_no_prompt_names_a_place_by_coordinates(tmp_path, small_images):
    with FakeOpenAI(competent_teacher) as server:
        recipe = load_recipe(
            teacher_recipe(tmp_path, small_images, server, ["questions", "verification", "trajectories"])
        )
        run_pipeline(recipe)
    seen = collections.Counter()
    for request in server.successful():
        task = _task(request.body)
        seen[task] += 1
        for t in _texts(request.body, task):
            assert not COORDINATES.search(t), (task, t)
        if task == "questions":
            assert (
                "The object is a" in request.body["messages"][0]["content"]
                or "no class name" in (request.body["messages"][0]["content"])
            )
            assert len(_images(request.body)) == 2  # the outlined whole view and the crop
    assert {"questions", "questions_pair", "answer", "validate", "trajectory"} <= set(seen)
    dropped = query(recipe.db, "SELECT count(*) FROM questions WHERE question LIKE '%(10, 20)%'")
    assert dropped == [(0,)]  # a question that points with coordinates is left out


def test_faults_end_in_completed_or_dropped_with_reason(tmp_path, small_images):
    calls = {"n": 0}
    regions: dict[str, int] = {}  # each region's crop, numbered as first seen: the first is refused, the next garbled

    def flaky(body):
        calls["n"] += 1
        task, n = _task(body), calls["n"]
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
