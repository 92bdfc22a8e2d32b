"""The rules that decide what survives, each pinned on a real database: verify's referent and repeat checks,
ground's merge threshold and uniqueness, and a retried item's old drops."""

import json
import re
import shutil

import duckdb
import pytest

from drim_data.pipeline import run_pipeline
from drim_data.pixels.candidates import region_problem
from drim_data.recipe import load_recipe
from drim_data.stages.ground import MERGE_IOU
from drim_data.teacher.boxes import Frame
from schemas.geometry import centre_grid, distance, iou, pixels_to_grid
from tests.conftest import HARBOUR, NEON, SHIPS, query, write_recipe
from tests.openai_server import FakeOpenAI, Reply
from tests.test_teacher_stages import KEY_ENV, SECRET, competent_teacher, teacher_recipe

W, H = 2001, 1749  # the harbour scene


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Both photos mined and given the built-in teacher's questions, verify not yet run: (images, database)."""
    folder = tmp_path_factory.mktemp("generated")
    images = folder / "images"
    images.mkdir()
    for src in (NEON, HARBOUR):
        shutil.copy(src, images / src.name)
    recipe = load_recipe(write_recipe(folder, images))
    run_pipeline(recipe, until="generate")
    return images, recipe.db


def fresh_copy(tmp_path, generated):
    """A recipe of its own over a copy of the generated database, so a test can change what verify will see."""
    images, db = generated
    recipe = load_recipe(write_recipe(tmp_path, images))
    shutil.copy(db, recipe.db)
    return recipe


def single_target_questions(con) -> list[tuple]:
    """(question_id, image_id, region label, x1, y1, x2, y2, width, height) of the one-target questions."""
    return con.execute(
        "SELECT q.question_id, q.image_id, r.label, r.x1, r.y1, r.x2, r.y2, i.width, i.height FROM questions q "
        "JOIN regions r ON r.region_id = json_extract_string(q.target_region_ids, '$[0]') "
        "JOIN images i ON i.image_id = q.image_id WHERE json_array_length(q.target_region_ids) = 1"
    ).fetchall()


def add_neighbours(recipe, grid_offset: int, label: str | None) -> list[tuple]:
    """Beside each one-target question's region, a region `grid_offset` grid units to its right, with `label` (or
    the region's own); returns the questions with their target's label."""
    con = duckdb.connect(str(recipe.db))
    questions = single_target_questions(con)
    for qid, image_id, own, x1, y1, x2, y2, width, _ in questions:
        dx = round(grid_offset / 1000 * width)
        box = [x1 + dx, y1, x2 + dx, y2]
        row = [f"n-{qid}", image_id, "annotation", label or own, *box, 1.0]
        con.execute("INSERT OR IGNORE INTO regions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    con.close()
    return [(qid, own.lower()) for qid, _, own, *_ in questions]


def verdicts(recipe) -> dict[str, str | None]:
    return dict(query(recipe.db, "SELECT question_id, reason FROM verdicts"))


@pytest.mark.parametrize(
    "offset, label, ambiguous",
    [
        (10, None, lambda own: True),  # another of its own label 10 grid units away could be taken for it
        (10, "kite", lambda own: False),  # a labelled referent is not confused with another label
        (60, None, lambda own: False),  # beyond mine.unique_radius (40)
    ],
)
def test_verify_drops_a_referent_another_region_could_be_taken_for(tmp_path, generated, offset, label, ambiguous):
    recipe = fresh_copy(tmp_path, generated)
    questions = add_neighbours(recipe, offset, label)
    run_pipeline(recipe, until="verify")
    reasons = verdicts(recipe)
    judged = [(qid, own) for qid, own in questions if reasons[qid] != "visible_without_zoom"]  # checked first
    assert judged and {own for _, own in judged} <= {"boat", "ship"}  # the named targets reach the check
    for qid, own in judged:
        assert (reasons[qid] == "ambiguous_referent") == ambiguous(own), (own, reasons[qid])


def test_verify_reads_the_radius_from_mine(tmp_path, generated):
    images, _ = generated
    wide = load_recipe(write_recipe(tmp_path, images, mine={"unique_radius": 80}))
    assert wide.mine.unique_radius == 80
    # the same neighbours 60 grid units away are now within the radius (mine reruns too: its setting changed)
    run_pipeline(wide, until="generate")
    questions = add_neighbours(wide, 60, None)
    run_pipeline(wide, until="verify")
    reasons = verdicts(wide)
    assert questions and all(reasons[q] in ("ambiguous_referent", "visible_without_zoom") for q, _ in questions)
    assert any(reasons[q] == "ambiguous_referent" for q, _ in questions)


def test_verify_keeps_one_of_two_questions_that_ask_the_same(tmp_path, generated):
    recipe = fresh_copy(tmp_path, generated)
    con = duckdb.connect(str(recipe.db))
    originals = [qid for (qid,) in con.execute("SELECT question_id FROM questions").fetchall()]
    # the same question in other words: same image, type, targets and answer
    con.execute(
        "INSERT INTO questions SELECT 'again-' || question_id, image_id, question_type, 'Say: ' || question, "
        "options, answer, checker, label, target_region_ids, target_boxes, referent FROM questions"
    )
    con.close()
    run_pipeline(recipe, until="verify")
    reasons = verdicts(recipe)
    pairs = [(reasons[q], reasons[f"again-{q}"]) for q in originals]
    kept_pairs = [p for p in pairs if None in p]
    assert kept_pairs, "some question must survive verify"
    assert all(sorted(p, key=str) == [None, "duplicate"] for p in kept_pairs)  # one kept, its repeat dropped
    assert all(a == b for a, b in pairs if a is not None and b is not None)  # otherwise both fail alike


def test_a_short_answer_wording_of_a_kept_choice_question_is_a_duplicate(tmp_path, generated):
    recipe = fresh_copy(tmp_path, generated)
    con = duckdb.connect(str(recipe.db))
    chosen = "json_extract_string(options, '$[' || (ascii(answer) - 65) || ']')"
    choices = [qid for (qid,) in con.execute("SELECT question_id FROM questions WHERE checker = 'choice'").fetchall()]
    # the same question asked for a short answer: no options, the correct option's text as the answer
    con.execute(
        "INSERT INTO questions SELECT 'short-' || question_id, image_id, question_type, 'Say: ' || question, '[]', "
        f"{chosen}, 'text', label, target_region_ids, target_boxes, referent FROM questions WHERE checker = 'choice'"
    )
    con.close()
    run_pipeline(recipe, until="verify")
    reasons = verdicts(recipe)
    kept = [q for q in choices if reasons[q] is None]
    assert kept, "some multiple-choice question must survive verify"
    assert all(
        reasons[f"short-{q}"] == "duplicate" for q in kept if reasons.get(f"short-{q}") != "solvable_without_zoom"
    )
    assert sum(reasons[f"short-{q}"] == "duplicate" for q in kept) >= 1


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def harbour_proposals(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SHIPS, images / SHIPS.name)
    return images


def test_ground_merges_above_the_threshold_adds_below_it_and_drops_a_confusable_box(tmp_path, api_key):
    images = harbour_proposals(tmp_path)
    plain = load_recipe(write_recipe(tmp_path, images, annotations=False))
    run_pipeline(plain, until="mine")
    regions = query(plain.db, "SELECT region_id, label, x1, y1, x2, y2 FROM regions ORDER BY region_id")
    assert regions and {label for _, label, *_ in regions} == {"object"}
    rid, _, *box = next(r for r in regions if 200 < r[2] and r[4] < W - 200 and 200 < r[3] and r[5] < H - 200)
    side = box[2] - box[0]

    def on_tile(shift: float) -> tuple[list[int], tuple]:
        """A teacher box: the region moved right by `shift` of its width, as grid and as the pixels ground maps."""
        dx = round(shift * side)
        grid = pixels_to_grid([box[0] + dx, box[1], box[2] + dx, box[3]], W, H)
        return grid, tuple(round(v) for v in Frame("grid1000", (W, H)).to_region(grid, (0, 0, W, H)))

    (same, same_px), (beside, beside_px), (twin, twin_px) = on_tile(0.15), on_tile(0.5), on_tile(1.1)
    assert iou(same_px, box) > MERGE_IOU > iou(beside_px, box)  # the premise: one box above, one below
    assert iou(twin_px, beside_px) < MERGE_IOU and iou(twin_px, box) == 0
    assert distance(centre_grid(twin_px, W, H), centre_grid(beside_px, W, H)) < plain.mine.unique_radius
    assert region_problem(beside_px, W, H, plain.mine, plain.view) is None
    assert region_problem(twin_px, W, H, plain.mine, plain.view) is None

    objects = [("buoy", same), ("kite", beside), ("kite", twin)]

    def teacher(body):
        if re.match(r"TASK: ground", body["messages"][0]["content"]):
            return json.dumps({"objects": [{"label": label, "bbox_2d": grid} for label, grid in objects]})
        return Reply(400)

    with FakeOpenAI(teacher) as server:
        recipe = load_recipe(teacher_recipe(tmp_path, images, server, ["ground"], annotations=False, tile_grid=1))
        run_pipeline(recipe, until="ground")
    after = query(recipe.db, "SELECT region_id, source, label, x1, y1, x2, y2 FROM regions ORDER BY region_id")
    assert len(after) == len(regions) + 1
    assert (rid, "proposal", "buoy", *box) in after  # above the threshold: the same object, now named
    assert [r[2:] for r in after if r[1] == "teacher"] == [("kite", *beside_px)]  # below it: a new region
    assert query(recipe.db, "SELECT reason FROM drops WHERE stage = 'ground'") == [("not_unique",)]  # its twin


def test_a_retried_item_keeps_no_old_drop(tmp_path, small_images, api_key):
    """A teacher call that failed leaves its image pending with a drop; the retry that succeeds clears it."""
    failing = {"on": True}

    def teacher(body):
        if failing["on"] and body["messages"][0]["content"].startswith("TASK: questions"):
            return Reply(500)  # every request for questions fails
        return competent_teacher(body)

    with FakeOpenAI(teacher) as server:
        path = teacher_recipe(tmp_path, small_images, server, ["questions"])
        recipe = load_recipe(path)
        run_pipeline(recipe, until="generate")
        first = query(recipe.db, "SELECT item_id, reason FROM drops WHERE stage = 'generate'")
        failing["on"] = False
        run_pipeline(recipe, until="generate")
    harbour = query(recipe.db, f"SELECT image_id FROM files WHERE path LIKE '%{HARBOUR.name}'")[0][0]
    assert [reason for item, reason in first if item == harbour] == ["teacher_http_500"]
    assert query(recipe.db, f"SELECT count(*) FROM questions WHERE image_id = '{harbour}'")[0][0] > 0
    assert query(recipe.db, "SELECT item_id, reason FROM drops WHERE reason LIKE 'teacher_%'") == []
