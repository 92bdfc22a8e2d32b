"""Each stage's logic on real pixels: proposals, measurements, questions, verification, executed trajectories."""

import json

import duckdb
import numpy as np
import pytest
from PIL import Image

from drim_data.pipeline import run_pipeline
from drim_data.pixels.candidates import region_problem
from drim_data.pixels.images import decode
from drim_data.pixels.measure import measure
from drim_data.pixels.proposer import propose
from drim_data.pixels.sources import image_bytes
from drim_data.recipe import MineConfig, ViewConfig, load_recipe
from drim_data.stages.trajectories import replay
from drim_data.stages.verify import difficulty
from schemas.geometry import iou
from schemas.tool import min_side_in_global_view
from tests.conftest import SHIPS, query, write_recipe

# Three small saturated objects on open water, like boats seen from orbit.
PLANTED = [
    (692, 443, 710, 457, (230, 30, 30)),
    (1793, 1342, 1807, 1358, (30, 30, 230)),
    (642, 994, 658, 1006, (250, 230, 20)),
]


@pytest.fixture(scope="module")
def harbour_with_planted_objects() -> np.ndarray:
    """The real harbour scene with three small saturated objects painted in at known places."""
    rgb = np.asarray(Image.open(SHIPS).convert("RGB")).copy()
    for x1, y1, x2, y2, colour in PLANTED:
        rgb[y1:y2, x1:x2] = colour
    return rgb


def test_proposer_finds_planted_small_objects(harbour_with_planted_objects):
    boxes = propose(harbour_with_planted_objects, top_k=100, min_side=8, max_side=70)
    assert 0 < len(boxes) <= 100
    assert (np.diff(boxes[:, 4]) <= 0).all()  # best first
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # fitted to each blob: the shorter side and
    assert (np.minimum(w, h) >= 8).all() and (np.sqrt(w * h) <= 70).all()  # the size are within the window
    for x1, y1, x2, y2, _ in PLANTED:  # the blue one has the water's luminance: only its saturation stands out
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        assert any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes), (x1, y1)


def test_measurement_names_planted_colours(harbour_with_planted_objects):
    names = [measure(harbour_with_planted_objects[y1:y2, x1:x2]).colour for x1, y1, x2, y2, _ in PLANTED]
    assert names == ["red", "blue", "yellow"]
    m = measure(np.full((10, 10, 3), 250, np.uint8))
    assert (m.colour, m.colour_share, round(m.brightness)) == ("white", 1.0, 250)


@pytest.mark.parametrize(
    "box, problem",
    [
        ((100, 100, 120, 120), None),
        ((100, 100, 400, 400), "too_large"),
        ((100, 100, 104, 140), "too_small"),
        ((2, 100, 20, 120), "at_border"),
        ((980, 100, 998, 120), "at_border"),
        ((100, 100, 130, 130), "visible_without_zoom"),  # 30 px wide in a global view of the whole image
    ],
)
def test_region_filters(box, problem):
    assert region_problem(box, 1000, 1000, MineConfig(), ViewConfig()) == problem


def test_global_view_size_and_difficulty():
    # a 4000x3000 image seen at 1M pixels is scaled by ~0.289
    assert min_side_in_global_view([[0, 0, 40, 80]], 4000, 3000, 1_000_000) == pytest.approx(11.547, abs=1e-3)
    cfg = ViewConfig(min_resolvable_px=24)
    assert [difficulty(s, 1, cfg) for s in (20, 10, 4)] == ["easy", "medium", "hard"]
    assert difficulty(20, 2, cfg) == "medium"


@pytest.fixture(scope="module")
def mined_db(tmp_path_factory):
    from tests.conftest import DEMO_ANNOTATIONS, DEMO_IMAGES

    folder = tmp_path_factory.mktemp("stages")
    images = folder / "images"
    images.mkdir()
    for name in (
        "neon_2019_YELL_2_541000_4977000_image_crop.png",
        "planet_shipsnet_scene_2.jpg",
        "planet_shipsnet_scene_3.jpg",
    ):
        (images / name).write_bytes((DEMO_IMAGES / name).read_bytes())
    labelled = {"format": "coco", "path": str(DEMO_ANNOTATIONS / "labelled.coco.json")}
    voc = {"format": "voc", "path": str(DEMO_ANNOTATIONS), "complete": ["Tree"]}
    recipe = load_recipe(
        write_recipe(folder, images, ingest={"annotations": [voc, labelled]}, mine={"unique_radius": 0})
    )
    run_pipeline(recipe)
    return recipe


def test_verified_items_need_zooming_and_refer_unambiguously(mined_db):
    kept = query(mined_db.db, "SELECT min_side_global FROM verdicts WHERE kept")
    dropped = dict(query(mined_db.db, "SELECT reason, count(*) FROM verdicts WHERE NOT kept GROUP BY reason"))
    assert kept and all(s < mined_db.view.min_resolvable_px for (s,) in kept)
    assert set(dropped) <= {"visible_without_zoom", "solvable_without_zoom", "ambiguous_referent", "duplicate"}


def test_trajectories_replay_and_their_zooms_approach_the_targets(mined_db):
    con = duckdb.connect(str(mined_db.db), read_only=True)
    rows = con.execute(
        "SELECT t.question_id, t.pattern, t.messages, q.target_boxes, i.image_id FROM trajectories t "
        "JOIN questions q USING (question_id) JOIN images i USING (image_id)"
    ).fetchall()
    assert {p for _, p, *_ in rows} <= {"coarse_to_fine", "direct", "multi_target", "reflective"}
    assert "multi_target" in {p for _, p, *_ in rows}
    for qid, pattern, messages, targets, image_id in rows:
        image = decode(image_bytes(con, image_id))
        stored = con.execute(
            "SELECT crop_sha256, box_px FROM observations WHERE question_id = ? ORDER BY turn", [qid]
        ).fetchall()
        assert replay(image, json.loads(messages), mined_db.trajectories.crop_quality) == [s for s, _ in stored]
        boxes = [json.loads(b) for _, b in stored]
        targets = json.loads(targets)
        assert all(
            any(b[0] <= t[0] and b[1] <= t[1] and b[2] >= t[2] and b[3] >= t[3] for b in boxes) for t in targets
        )
        assert all(a != b and iou(a, b) < 0.8 for a, b in zip(boxes, boxes[1:], strict=False))
        if pattern == "coarse_to_fine":
            area = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
            assert len(boxes) == 2 and area[1] < area[0]  # coarse to fine narrows down
        if pattern == "reflective":
            t, first = targets[0], boxes[0]
            assert min(first[2], t[2]) <= max(first[0], t[0]) or min(first[3], t[3]) <= max(first[1], t[1])
    con.close()


def _dark_water(side: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(40, 2, (side, side, 3)), 0, 255).astype(np.uint8)


def test_an_elongated_hull_gets_a_box_of_its_own_aspect():
    rgb = _dark_water()
    hull = (180, 150, 190, 190)  # 10 x 40: a ship seen from above
    rgb[hull[1] : hull[3], hull[0] : hull[2]] = 200
    boxes = propose(rgb, top_k=10, min_side=4, max_side=150)
    assert iou(tuple(boxes[0][:4]), hull) >= 0.5  # a square box at one scale could not reach 0.5


def test_a_textured_area_does_not_take_every_proposal():
    rgb = _dark_water()
    rng = np.random.default_rng(1)
    rgb[:200, :200] = rng.integers(0, 255, (200, 200, 1), dtype=np.uint8)  # clutter, like a city
    for x, y in [(300, 300), (260, 340), (340, 260)]:  # three boats on open water
        rgb[y : y + 8, x : x + 8] = 220
    boxes = propose(rgb, top_k=20, min_side=4, max_side=60)
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    for x, y in [(304, 304), (264, 344), (344, 264)]:
        assert (np.abs(centres - (x, y)).max(axis=1) < 4).any(), (x, y)


def test_a_constant_border_yields_no_proposals():
    rgb = _dark_water()
    rgb[:, :120] = 0  # a no-data strip, as on a satellite scene's edge
    rgb[200:208, 300:308] = 220
    boxes = propose(rgb, top_k=50, min_side=4, max_side=60)
    assert len(boxes) and (boxes[:, 0] >= 120).all()


def test_a_constant_line_along_the_edge_is_no_no_data_area():
    rgb = _dark_water()
    rgb[0, :] = 0  # one constant row at the edge (a scan line, a frame): no area, so nothing next to it is dropped
    rgb[6:14, 200:208] = 220  # a boat close to it
    boxes = propose(rgb, top_k=10, min_side=4, max_side=60)
    assert max(iou(tuple(b[:4]), (200, 6, 208, 14)) for b in boxes) >= 0.5


def test_a_row_of_boats_gets_a_box_for_each_first():
    rgb = _dark_water()
    boats = [(150 + 16 * i, 200, 158 + 16 * i, 208) for i in range(5)]  # moored side by side, 8 px apart
    for x1, y1, x2, y2 in boats:
        rgb[y1:y2, x1:x2] = 220
    best = propose(rgb, top_k=20, min_side=4, max_side=150)[: len(boats)]  # a box around the row ranks below them
    assert all(max(iou(tuple(b[:4]), boat) for b in best) >= 0.8 for boat in boats)
