"""The `name` stage against the local OpenAI-wire server: labels, rejections, bad replies, the cache, and resets."""

import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drim_data.db import connect, reset_stage
from drim_data.pipeline import run_pipeline
from drim_data.recipe import load_recipe
from drim_data.teacher.replies import ReplyError, read_name
from tests.conftest import SHIPS, query
from tests.fake_teacher import competent_teacher, images_of, task_of
from tests.openai_server import FakeOpenAI
from tests.test_teacher_stages import KEY_ENV, SECRET, teacher_recipe

BOAT = {"label": "Boat", "whole": True, "description": "a white boat with a dark deck.", "reject": ""}
VALUES = st.none() | st.booleans() | st.integers() | st.text(max_size=30) | st.lists(st.text(max_size=5), max_size=2)
REPLIES = st.dictionaries(st.sampled_from(["label", "whole", "description", "reject", "x"]), VALUES, max_size=5)
REGIONS = "SELECT region_id, source, label, x1, y1, x2, y2 FROM regions ORDER BY region_id"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.mark.parametrize(
    "doc, expected",
    [
        (BOAT, {"label": "boat", "whole": True, "description": "a white boat with a dark deck."}),
        (
            {"label": "mast", "whole": False, "description": "", "reject": ""},
            {"label": "mast", "whole": False, "description": ""},
        ),
        ({"label": "", "whole": False, "reject": " shadow on water "}, {"reject": "shadow on water"}),
    ],
)
def test_a_name_reply_is_a_name_or_a_rejection(doc, expected):
    assert read_name(doc) == expected


@pytest.mark.parametrize("doc", [{"label": "object", "whole": True}, {"label": "boat"}, {"whole": True}, {}])
def test_a_reply_that_names_no_class_is_unusable(doc):
    with pytest.raises(ReplyError, match="label|whole"):
        read_name(doc)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(REPLIES)
def test_any_name_reply_gives_a_value_or_a_reply_error(doc):
    try:
        found = read_name(doc)
    except ReplyError as exc:
        assert exc.reason == "unparseable_reply" and exc.detail
        return
    assert set(found) in ({"reject"}, {"label", "whole", "description"})


def one_of_each():
    """Names the first crop it is shown, rejects the second and answers the third (and its repair) with prose."""
    seen: dict[str, int] = {}

    def reply(body):
        if task_of(body) != "name":
            return competent_teacher(body)
        crop = body["messages"][1]["content"][0]["image_url"]["url"]
        n = seen.setdefault(crop, len(seen))
        if n == 0:
            return json.dumps(BOAT)
        if n == 1:
            return json.dumps({"label": "", "whole": False, "description": "", "reject": "open water"})
        return "Looks like something, hard to say."

    return reply


def test_name_labels_rejects_and_drops_bad_replies_and_a_rerun_asks_nothing(tmp_path):
    harbour = tmp_path / "images"
    harbour.mkdir()
    shutil.copy(SHIPS, harbour)  # one image: three proposals shown
    with FakeOpenAI(one_of_each()) as server:
        recipe = load_recipe(teacher_recipe(tmp_path, harbour, server, ["name"], annotations=False, names_per_image=3))
        run_pipeline(recipe, until="mine")
        mined = query(recipe.db, REGIONS)
        run_pipeline(recipe, until="name")
        asked = len(server.successful())
        run_pipeline(recipe, until="name")
        assert len(server.successful()) == asked == 4  # three proposals and one repair request; the rerun: none

        names = query(recipe.db, "SELECT region_id, label, description FROM names ORDER BY label NULLS LAST")
        drops = dict(query(recipe.db, "SELECT reason, detail FROM drops WHERE stage = 'name'"))
        assert len(names) == 3 and names[0][1:] == ("boat", "a white boat with a dark deck.")
        assert set(drops) == {"not_an_object", "unparseable_reply"} and drops["not_an_object"] == "open water"
        after = query(recipe.db, REGIONS)
        kept = {r[0]: r for r in after}
        assert kept[names[0][0]][1:3] == ("proposal", "boat")
        assert {r[0] for r in mined} - set(kept) == {n[0] for n in names[1:]}  # the rejected and the unreadable
        assert sum(1 for r in after if r[2] == "object") == sum(1 for r in mined if r[2] == "object") - 3
        first = [r.body for r in server.successful() if task_of(r.body) == "name"][0]
        outlined = images_of(first)[0]
        assert outlined.width * outlined.height >= 256 * 28 * 28  # upsampled by the zoom tool's rules

        con = connect(recipe.db)
        reset_stage(con, "name")  # what a changed setting does: the proposals come back as mining wrote them
        con.close()
        assert query(recipe.db, REGIONS) == mined
        run_pipeline(recipe, until="name")
        assert len(server.successful()) == asked  # the same requests, answered from the cache
        assert query(recipe.db, REGIONS) == after


def test_a_named_proposal_becomes_the_referent_of_model_questions(tmp_path, small_images):
    def namer(body):
        return json.dumps(BOAT) if task_of(body) == "name" else competent_teacher(body)

    with FakeOpenAI(namer) as server:
        recipe = load_recipe(teacher_recipe(tmp_path, small_images, server, ["name", "questions"], annotations=False))
        run_pipeline(recipe, until="generate")
    named = {r for (r,) in query(recipe.db, "SELECT region_id FROM regions WHERE label = 'boat'")}
    questions = query(recipe.db, "SELECT label, target_region_ids, referent FROM questions WHERE label = 'boat'")
    assert named and questions
    for _, targets, referent in questions:
        assert set(json.loads(targets)) <= named and all("boat" in r for r in json.loads(referent))
    asked = [r.body["messages"][0]["content"] for r in server.successful() if task_of(r.body) == "questions"]
    told = "The object is a boat. It looks like this: a white boat with a dark deck."
    assert any(told in system for system in asked)
    assert all("no class name" not in system for system in asked)  # every proposal asked about was named first
