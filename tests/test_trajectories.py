"""Built-in trajectories search: each rule of the zoom plan, the reflective split, and think text that is measured.

Items are built on the real harbour photo with its hand-labelled boxes; nothing is read from question text.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import statistics
from pathlib import Path

import duckdb
import numpy as np
import pytest
import yaml
from PIL import Image

from drim_data.errors import Drop
from drim_data.recipe import ExportConfig, IngestConfig, Recipe, TrajectoryConfig
from drim_data.stages.export import image_splits
from drim_data.stages.narration import Narrator, crop_colour, instances_in, own_colour
from drim_data.stages.questions import Question
from drim_data.stages.search import (
    MIN_GAIN,
    MIN_OFFSET,
    PlanRejected,
    Scene,
    Zoom,
    centre,
    contains,
    detail,
    distractors,
    gains,
    gains_detail,
    intersects,
    off_centre,
    output_size,
    plan,
    violations,
)
from drim_data.stages.trajectories import build, judge
from schemas.tool import ZOOM, global_view_scale, grid_to_pixels, iou
from tests.conftest import DEMO_ANNOTATIONS, REPO, SHIPS

VIEW_PIXELS = 1003520  # a 1M-pixel view, Qwen's default
W, H = 2001, 1749  # the harbour photo
G = global_view_scale(W, H, VIEW_PIXELS)


@pytest.fixture(scope="module")
def harbour() -> tuple[Image.Image, Scene]:
    coco = json.loads((DEMO_ANNOTATIONS / "labelled.coco.json").read_text())
    (info,) = [i for i in coco["images"] if i["file_name"] == SHIPS.name]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    single, crowds = [], []
    for a in coco["annotations"]:
        if a["image_id"] == info["id"]:
            x, y, w, h = a["bbox"]
            (crowds if a.get("iscrowd") else single).append((names[a["category_id"]], (x, y, x + w, y + h)))
    scene = Scene(W, H, single, frozenset(info["complete_categories"]), crowds=crowds)
    return Image.open(SHIPS).convert("RGB"), scene


def question(qid: str, qtype: str, label: str, targets: list, answer: str = "x", options=(), checker: str = "text"):
    return Question(qid, "img", qtype, "?", list(options), answer, checker, label, [], targets, [], W, H)


def recipe(**trajectories) -> Recipe:
    return Recipe("t", IngestConfig(Path(".")), Path("db"), Path("out"), trajectories=TrajectoryConfig(**trajectories))


def boxes_of(scene: Scene, label: str) -> list[list[float]]:
    return [list(b) for b in scene.instances(label)]


def zoom(grid, role="coarse", subject=(0, 0, 1, 1), avoid=(), need=0.0) -> Zoom:
    return Zoom(list(grid), grid_to_pixels(grid, W, H), role, tuple(subject), 0, tuple(avoid), need)


# -- detail ---------------------------------------------------------------------------------------------------


def test_detail_is_computed_as_the_zoom_tool_scales(harbour):
    image, _ = harbour
    for box in [(0, 0, 60, 40), (100, 100, 600, 500), (0, 0, 2001, 1749), (500, 500, 1500, 1400), (10, 10, 38, 200)]:
        assert output_size(box) == ZOOM.crop(image, box).size
    assert detail((0, 0, 448, 448)) == 1.0 and detail((0, 0, 224, 224)) == 2.0


# -- the rules, one by one --------------------------------------------------------------------------------------


def test_violations_name_each_broken_rule():
    target = (1000, 800, 1010, 810)
    far = grid_to_pixels([400, 380, 640, 620], W, H)  # holds the target well away from its centre
    good = [zoom([400, 380, 640, 620], "coarse", target), zoom([495, 452, 510, 470], "fine", target)]
    assert off_centre(far, target) >= MIN_OFFSET
    assert violations(good, G, 5) == []
    assert violations(good * 3, G, 5)[0] == "too_many_zooms"
    assert "identical_zooms" in violations([good[0], good[0]], G, 5)
    near = zoom([402, 382, 640, 620], "fine", target)  # IoU about 0.98 with the coarse box
    assert "near_identical_zooms" in violations([good[0], near], G, 5)
    flat = zoom([420, 400, 620, 600], "fine", target)  # a little tighter, same detail
    assert "no_detail_gain" in violations([good[0], flat], G, 5)
    assert "no_detail_gain" in violations([zoom([0, 0, 1000, 1000], "coarse", target)], G, 5)
    assert "zoom_is_the_whole_view" in violations([zoom([0, 0, 1000, 1000], "coarse", target)], G, 5)
    assert "zoom_is_the_whole_view" in violations([zoom([100, 0, 1000, 600], "coarse", target)], G, 5)
    assert "zoom_is_the_whole_view" not in violations([zoom([300, 0, 1000, 700], "coarse", target)], G, 5)
    centred = zoom([450, 411, 560, 515], "direct", target)
    assert "zoom_centred_on_target" in violations([centred], G, 5)
    assert "zoom_misses_target" in violations([zoom([0, 0, 200, 200], "coarse", target)], G, 5)
    wanted = [zoom(z.grid, z.role, target, need=4.8) for z in good]  # a 10 px target shown at 48 px
    assert violations(wanted, G, 5) == []  # the fine zoom shows it at 14x
    assert violations(wanted[:1], G, 5) == ["not_enough_detail"]  # the coarse one alone at 1.9x
    miss = zoom([480, 440, 560, 520], "miss", (1100, 900, 1110, 910), avoid=[target])
    assert "reflective_miss_overlaps_target" in violations([miss, good[1]], G, 5)


def test_a_zoom_onto_somewhere_new_refines_the_global_view():
    a, b = (0, 0, 400, 400), (1200, 1200, 1300, 1300)
    (d1, base1), (d2, base2) = gains([a, b], [detail(a), detail(b)], G)
    assert base1 == G and base2 == G  # b is not inside a: what it refines is the whole image
    inner = (100, 100, 150, 150)
    assert gains([a, inner], [detail(a), detail(inner)], G)[1][1] == detail(a)
    assert gains_detail(1.0, 0.7) and not gains_detail(1.0, 1.0) and gains_detail(3.0, 2.0)


# -- planning on the real scene -----------------------------------------------------------------------------------


def plans(scene: Scene, label: str, cfg: TrajectoryConfig, ids=range(3)):
    for target in boxes_of(scene, label):
        for i in ids:
            item = question(f"{label}-{target}-{i}", "colour", label, [target])
            yield item, *plan(item, scene, cfg, G, 5)


def test_searches_reach_the_target_off_centre_with_real_detail_gains(harbour):
    _, scene = harbour
    cfg, positions, n = TrajectoryConfig(reflective_share=0), set(), 0
    for item, zooms, pattern in plans(scene, "boat", cfg):
        target = item.targets[0]
        assert pattern in ("coarse_to_fine", "direct")
        assert all(contains(z.box, target) for z in zooms)
        first = zooms[0]
        assert off_centre(first.box, target) >= MIN_OFFSET  # the question gives no position to centre on
        (tx, ty), (x1, y1, x2, y2) = centre(target), first.box
        positions.add((round((tx - x1) / (x2 - x1), 1), round((ty - y1) / (y2 - y1), 1)))
        steps = gains([z.box for z in zooms], [detail(z.box) for z in zooms], G)
        assert all(now >= MIN_GAIN * before or now >= 1 > before for now, before in steps)
        if pattern == "coarse_to_fine":
            assert len(zooms) == 2 and steps[1][1] == detail(zooms[0].box)  # the fine zoom refines the coarse one
            assert iou(zooms[0].box, zooms[1].box) < 0.8
        n += 1
    assert n == 3 * len(scene.instances("boat"))  # every boat, three items each: none is dropped
    assert len(positions) >= 6  # the offset moves with the item: the target is not always in one spot


def test_a_share_of_items_needs_only_one_zoom_with_enough_detail(harbour):
    _, scene = harbour
    cfg = TrajectoryConfig(reflective_share=0, single_zoom_share=0.3)
    target = boxes_of(scene, "boat")[5]
    found = [plan(question(f"q{i}", "colour", "boat", [target]), scene, cfg, G, 5) for i in range(300)]
    direct = [zooms for zooms, pattern in found if pattern == "direct"]
    assert 0.22 <= len(direct) / len(found) <= 0.38
    short = min(target[2] - target[0], target[3] - target[1])
    assert all(len(z) == 1 and short * detail(z[0].box) >= cfg.min_target_px for z in direct)
    assert all(len(z) == 2 for z, pattern in found if pattern == "coarse_to_fine")
    item = question("q0", "colour", "boat", [target])  # the stage's own picks override the hash
    assert plan(item, scene, cfg, G, 5, single=True)[1] == "direct"
    assert plan(item, scene, cfg, G, 5, single=False)[1] == "coarse_to_fine"


def test_reflective_items_look_at_a_real_distractor_that_is_not_the_target(harbour):
    _, scene = harbour
    cfg = TrajectoryConfig(reflective_share=1.0)
    boats = {tuple(b) for b in scene.instances("boat")}
    n = 0
    for item, zooms, pattern in plans(scene, "boat", cfg, ids=range(1)):
        target = item.targets[0]
        assert pattern == "reflective"
        miss, *rest = zooms
        assert miss.role == "miss" and miss.subject in boats and miss.subject != tuple(target)
        assert contains(miss.box, miss.subject) and not intersects(miss.box, target)
        assert contains(rest[-1].box, target) and not contains(rest[0].box, miss.subject)
        n += 1
    assert n == len(boats)


def test_a_distractor_whose_look_would_show_the_target_is_passed_over():
    target = (1000, 800, 1010, 810)
    beside = (1016, 800, 1026, 810)  # nearest, but any zoom that shows it well shows the target too
    further = (1300, 800, 1310, 810)
    scene = Scene(W, H, [("boat", target), ("boat", beside), ("boat", further)], frozenset({"boat"}))
    zooms, pattern = plan(question("q", "colour", "boat", [list(target)]), scene, TrajectoryConfig(1.0), G, 5)
    assert pattern == "reflective" and zooms[0].subject == further


def test_a_look_alike_inside_a_crowd_box_may_be_one_and_is_no_distractor():
    target, boxed = (1000, 800, 1010, 810), (1600, 800, 1610, 810)
    inside, outside = (300, 300, 310, 310), (1300, 500, 1310, 510)
    scene = Scene(W, H, [("boat", target), ("boat", boxed)], frozenset({"boat"}), [inside, outside])
    assert set(distractors(target, [target], scene, "boat")) == {boxed, inside, outside}
    marina = [("boat", (250, 250, 400, 400))]
    crowded = Scene(W, H, scene.annotations, scene.complete, scene.lookalikes, marina)
    assert set(distractors(target, [target], crowded, "boat")) == {boxed, outside}
    assert instances_in((0, 0, 1200, 1000), scene, "boat") == "1 boat"
    assert instances_in((0, 0, 1200, 1000), crowded, "boat") == "at least 1 boat"  # the marina may hold more
    assert instances_in((900, 700, 1200, 1000), crowded, "boat") == "1 boat"


def test_reflective_and_single_zoom_picks_keep_their_shares_however_few_items(harbour):
    """Only SFT shows a dialogue: a share of an image's SFT items first looks at a distractor, spread evenly so
    the share holds for a handful of items, and no RL item does, nor a recognition item (its look would say the
    answer). A share of all kept items tries one zoom first, spread the same way. Given the scene, the reflective
    share goes to items that have something to mistake for their target."""
    from types import SimpleNamespace

    from drim_data.stages.trajectories import image_picks

    _, scene = harbour
    boat = boxes_of(scene, "boat")[0]
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE questions (question_id VARCHAR, image_id VARCHAR, question_type VARCHAR, label VARCHAR, "
        "target_boxes JSON)"
    )
    con.execute("CREATE TABLE verdicts (question_id VARCHAR, kept BOOLEAN)")

    def add(qid, image, kind="colour", label="boat", box=boat, kept=True):
        con.execute("INSERT INTO questions VALUES (?, ?, ?, ?, ?)", [qid, image, kind, label, json.dumps([box])])
        con.execute("INSERT INTO verdicts VALUES (?, ?)", [qid, kept])

    for image, n in (("a", 40), ("b", 5), ("c", 1)):
        for i in range(n):  # every other item about a class with no other instance: nothing to mistake it for
            add(f"{image}-{i}", image, label="boat" if i % 2 == 0 else "lighthouse")
    add("a-dropped", "a", kept=False)
    for i in range(6):
        add(f"a-r{i}", "a", kind="recognition")
    for share in (0.0, 0.3, 1.0):
        recipe = SimpleNamespace(
            trajectories=TrajectoryConfig(reflective_share=share, single_zoom_share=1 - share),
            export=ExportConfig(rl_share=0.5, split_by="item"),
        )
        for image, n in (("a", 40), ("b", 5), ("c", 1)):
            picks = image_picks(con, image, recipe, scene)
            kept = [f"{image}-{i}" for i in range(n)] + ([f"a-r{i}" for i in range(6)] if image == "a" else [])
            kinds = {q: "recognition" if "-r" in q else "colour" for q in kept}
            splits = image_splits(image, kept, recipe.export, kinds=kinds)
            sft = [f"{image}-{i}" for i in range(n) if splits[f"{image}-{i}"] == "sft"]
            able = {q for q in sft if int(q.split("-")[1]) % 2 == 0}  # never an RL, dropped or lighthouse item
            assert picks["reflective"] <= able
            wanted = min(share * len(sft), len(able))
            assert abs(len(picks["reflective"]) - wanted) < 1, (image, share, len(picks["reflective"]), wanted)
            assert picks["single"] <= set(kept) and abs(len(picks["single"]) - (1 - share) * len(kept)) < 1


def test_multi_target_questions_zoom_to_each_target(harbour):
    _, scene = harbour
    ships = boxes_of(scene, "ship")
    cfg = TrajectoryConfig(reflective_share=0)
    zooms, pattern = plan(question("rel", "relative_position", "ship", [ships[0], ships[4]]), scene, cfg, G, 5)
    assert pattern == "multi_target" and [z.target for z in zooms] == [0, 1]
    assert contains(zooms[0].box, ships[0]) and contains(zooms[1].box, ships[4])
    close = [[1000, 800, 1012, 812], [1020, 800, 1032, 812]]  # too close for a zoom each: one shows both
    (one,), pattern = plan(question("c", "compare_brightness", "boat", close), scene, cfg, G, 5)
    assert all(contains(one.box, t) for t in close)


def test_where_a_long_thin_object_stands_is_shown_by_a_zoom_that_holds_it_whole(harbour):
    """A position question needs its objects found, not read: an 800x27 px band is shown whole, at the most detail
    a zoom holding it gives, rather than refused because no such zoom could show its 27 px height at 48 px. The
    small one is still shown at 48 px across."""
    _, scene = harbour
    band, small = [300, 1500, 1100, 1527], [1500, 1200, 1514, 1214]
    item = question("band", "relative_position", "inscription", [band, small], answer="left")
    zooms, pattern = plan(item, scene, TrajectoryConfig(reflective_share=0), G, 5)
    assert pattern == "multi_target" and any(contains(z.box, band) for z in zooms)
    assert any(contains(z.box, small) and detail(z.box) * 14 >= 48 for z in zooms)
    assert violations(zooms, G, 5) == []


def test_count_zooms_hold_every_counted_instance(harbour):
    _, scene = harbour
    counted = [b for b in boxes_of(scene, "boat") if b[0] > 1850 and b[1] < 600]
    assert len(counted) >= 3
    for i in range(8):
        zooms, _ = plan(question(f"n{i}", "count", "boat", counted), scene, TrajectoryConfig(), G, 5)
        assert all(contains(zooms[-1].box, b) for b in counted)


def test_a_count_that_needs_little_detail_still_zooms_into_part_of_the_image(harbour):
    """Two large boats counted at 12 px each need hardly more detail than the view: the widest zoom that shows them
    well would cover the image, so the zoom is the widest that is still a zoom."""
    _, scene = harbour
    counted = [[1000, 700, 1080, 760], [1300, 720, 1380, 790]]
    small_view = global_view_scale(W, H, 512 * 512)
    for i in range(8):
        item = question(f"wide{i}", "count", "boat", counted, answer="2", checker="number")
        zooms, _ = plan(item, scene, TrajectoryConfig(reflective_share=0), small_view, 5)
        assert all(contains(zooms[-1].box, b) for b in counted)
        assert all((z.grid[2] - z.grid[0]) * (z.grid[3] - z.grid[1]) <= 0.5 * 1000 * 1000 for z in zooms)


def test_a_count_is_framed_by_its_instances_with_context_counted_in_instances(harbour):
    """Three 14 px boats along a 300 px line: the closest zoom holds the line and a few boats' lengths around it
    (twice that when one zoom is the whole search), not six times the line's length, which showed each boat at a
    third of the size (one 1113 px zoom)."""
    _, scene = harbour
    counted = [[900, 1000, 914, 1014], [1043, 1000, 1057, 1014], [1186, 1000, 1200, 1014]]
    for i in range(8):
        item = question(f"line{i}", "count", "boat", counted, answer="3", checker="number")
        zooms, _ = plan(item, scene, TrajectoryConfig(reflective_share=0), G, 5)
        side = max(zooms[-1].box[2] - zooms[-1].box[0], zooms[-1].box[3] - zooms[-1].box[1])
        assert all(contains(zooms[-1].box, b) for b in counted)
        assert side <= 2 * (1.2 * 300 + 6 * 14), zooms[-1].box


def test_a_count_too_spread_out_for_one_zoom_is_counted_view_by_view(harbour):
    image, scene = harbour
    ships = boxes_of(scene, "ship")
    counted = ships  # all of them, from corner to corner: no one zoom gains detail over the whole view
    assert len(counted) >= 3
    item = question("spread", "count", "ship", counted, answer=str(len(counted)), checker="number")
    zooms, pattern = plan(item, scene, TrajectoryConfig(reflective_share=0), G, 5)
    assert pattern == "multi_target" and len(zooms) >= 2
    assert all(any(contains(z.box, b) for z in zooms) for b in counted)  # every one is seen up close
    assert violations(zooms, G, 5) == []
    thinks, _, _ = dialogue(image, scene, item, reflective_share=0)
    parts = [int(n) for n in re.findall(r"(\d+) of the ships asked about are here", " ".join(thinks))]
    last = re.search(r"holds .*?, (\d+) of them asked about; with the ([\d and]+) seen before, (\d+) are", thinks[-1])
    assert last, thinks[-1]
    seen = parts + [int(last.group(1))]
    assert sum(seen) == int(last.group(3)) == len(counted) and all(n > 0 for n in seen)
    wrong = question("spread-wrong", "count", "ship", counted, answer=str(len(counted) + 1), checker="number")
    with pytest.raises(Drop):
        dialogue(image, scene, wrong, reflective_share=0)


def test_a_target_no_zoom_can_show_better_is_dropped(harbour):
    image, scene = harbour
    whole = [[20, 20, W - 20, H - 20]]
    with pytest.raises(PlanRejected) as found:
        plan(question("big", "colour", "boat", whole), scene, TrajectoryConfig(), G, 5)
    assert found.value.reason == "no_detail_gain"
    with pytest.raises(Drop) as dropped:
        build(image, question("big", "colour", "boat", whole), scene, recipe())
    assert dropped.value.reason == "no_detail_gain"


def test_the_turn_limit_holds(harbour):
    _, scene = harbour
    for zooms, _ in (
        plan(
            question(f"m{i}", "colour", "boat", [boxes_of(scene, "boat")[2]]),
            scene,
            TrajectoryConfig(reflective_share=1.0),
            G,
            2,
        )
        for i in range(20)
    ):
        assert len(zooms) <= 2
    with pytest.raises(PlanRejected):
        plan(question("m", "colour", "boat", [boxes_of(scene, "boat")[2]]), scene, TrajectoryConfig(), G, 0)


# -- think text -------------------------------------------------------------------------------------------------


def dialogue(image, scene, item, **cfg) -> tuple[list[str], list[Image.Image], list[list[int]]]:
    messages, turns, _ = build(image, item, scene, recipe(**cfg))
    thinks = [
        re.search(r"<think>(.*)</think>", m["content"][-1]["text"], re.S).group(1)
        for m in messages
        if m["role"] == "assistant"
    ]
    crops = [Image.open(io.BytesIO(t["crop"])) for t in turns]
    return thinks, crops, [t["box_px"] for t in turns]


def colour_answer(image, box) -> str:
    from drim_data.pixels.measure import measure

    return measure(np.asarray(image.crop(tuple(box)))).colour


def test_think_text_states_what_each_crop_shows(harbour):
    image, scene = harbour
    ships = boxes_of(scene, "ship")  # every ship here is boxed: counts are exact
    checked = 0
    for i, target in enumerate(ships):
        item = question(f"s{i}", "colour", "ship", [target], answer=colour_answer(image, target))
        thinks, crops, boxes = dialogue(image, scene, item, reflective_share=0.5)
        for think, crop, box in zip(thinks[1:], crops, boxes, strict=False):
            said = re.search(r"is (\d+)% (\w+) and holds (\w+) (ships?)", think)
            if not said:
                continue
            name, share = crop_colour(crop)  # the stored crop is a JPEG of the one described: a point or two apart
            assert said.group(2) == name and abs(int(said.group(1)) - share * 100) <= 2
            inside = sum(contains(box, (*centre(s), *centre(s))) for s in ships)
            assert said.group(3) == (str(inside) if inside else "no")
            checked += 1
        assert str(item.answer) in thinks[-1]
    assert checked >= 5


def test_a_colour_is_said_only_where_its_measurement_can_be_trusted(harbour):
    image, scene = harbour
    ships = [[round(v) for v in b] for b in boxes_of(scene, "ship")]
    ship = next(s for s in ships if own_colour(image, s)[1] >= 0.6)
    item = question("s", "colour", "ship", [ship])
    measured = own_colour(image, ship)[0]
    unsure = next(s for s in ships if own_colour(image, s)[1] < 0.6)  # a hull that blends with the water
    assert "%" not in Narrator(item, scene, image, 0.5, 24).describe(unsure, 1.0)
    said = Narrator(item, scene, image, 0.5, 24).describe(ship, 1.0)
    assert said.startswith(f"{measured} (")
    disagreeing = dataclasses.replace(scene, colours={tuple(ship): "pink" if measured != "pink" else "navy"})
    assert measured not in Narrator(item, disagreeing, image, 0.5, 24).describe(ship, 1.0)
    agreeing = dataclasses.replace(scene, colours={tuple(ship): measured})
    assert Narrator(item, agreeing, image, 0.5, 24).describe(ship, 1.0) == said


def test_too_small_is_said_only_when_it_is(harbour):
    image, scene = harbour
    small = boxes_of(scene, "boat")[5]
    island = list(scene.instances("oil island")[0])  # 108x71 px: about 58x38 px in the global view
    assert min(island[2] - island[0], island[3] - island[1]) * G >= 24
    said = {}
    for name, box in (("small", small), ("island", island)):
        item = question(name, "colour", "thing", [box], answer=colour_answer(image, box))
        thinks, _, _ = dialogue(image, scene, item, reflective_share=0)
        said[name] = thinks[0]
    assert "under the 24 px it takes" in said["small"] and re.search(r"spans about \d\.\dx\d\.\d px", said["small"])
    assert "under the" not in said["island"] and "certain" in said["island"]


def test_think_texts_differ_from_item_to_item(harbour):
    image, scene = harbour
    texts = []
    for i, target in enumerate(boxes_of(scene, "boat")[:12]):
        item = question(f"d{i}", "colour", "boat", [target], answer=colour_answer(image, target))
        texts += dialogue(image, scene, item)[0]
    assert len(set(texts)) / len(texts) >= 0.9


def test_an_answer_the_crop_does_not_bear_out_is_dropped(harbour):
    image, scene = harbour
    target = boxes_of(scene, "boat")[5]
    wrong = next(c for c in ("red", "green", "purple") if c != colour_answer(image, target))
    with pytest.raises(Drop) as found:
        build(image, question("w", "colour", "boat", [target], answer=wrong), scene, recipe())
    assert found.value.reason == "colour_not_confirmed"
    with pytest.raises(Drop) as found:
        counted = [b for b in boxes_of(scene, "boat") if b[0] > 1850 and b[1] < 600]
        build(image, question("n", "count", "boat", counted, answer=str(len(counted) + 1)), scene, recipe())
    assert found.value.reason == "count_not_confirmed"


# -- the demo ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    from drim_data.pipeline import run_pipeline
    from drim_data.recipe import load_recipe

    folder = tmp_path_factory.mktemp("demo-search")
    spec = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    spec["db"], spec["output_dir"] = str(folder / "demo.duckdb"), str(folder / "out")
    spec["ingest"]["images"] = str(REPO / "data" / "demo" / "images")
    for source in spec["ingest"]["annotations"]:
        source["path"] = str((REPO / "pipelines" / source["path"]).resolve())
    (folder / "demo.yaml").write_text(yaml.safe_dump(spec))
    result = run_pipeline(load_recipe(folder / "demo.yaml"))
    return folder / "demo.duckdb", result.export.path


def test_demo_trajectories_search(demo):
    import pyarrow.parquet as pq

    db, version = demo
    rows = [r for f in sorted((version / "data" / "sft").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    con = duckdb.connect(str(db), read_only=True)
    stored = con.execute("SELECT question_id, box_px FROM observations ORDER BY question_id, turn").fetchall()
    con.close()
    by_item: dict[str, list] = {}
    for qid, box in stored:
        by_item.setdefault(qid, []).append(json.loads(box))
    pairs = [(a, b) for boxes in by_item.values() for a, b in zip(boxes, boxes[1:], strict=False)]
    assert pairs and not any(a == b for a, b in pairs)
    assert sum(iou(a, b) >= 0.8 for a, b in pairs) <= 0.05 * len(pairs)
    step_gains = []
    for r in rows:
        boxes = [
            grid_to_pixels(json.loads(c["function"]["arguments"])["bbox_2d"], r["width"], r["height"])
            for m in r["messages"]
            for c in m["tool_calls"] or []
        ]
        scale = r["global_view_size"][0] / r["width"]
        step_gains += [now / before for now, before in gains(boxes, [detail(b) for b in boxes], scale)]
    assert statistics.median(step_gains) >= 1.5
    assert sum(r["pattern"] == "reflective" for r in rows) >= 0.15 * len(rows)
    thinks = [
        t
        for r in rows
        for m in r["messages"]
        for t in re.findall(r"<think>(.*?)</think>", m["content"][-1]["text"] or "", re.S)
    ]
    assert len(set(thinks)) >= 0.5 * len(thinks)


def test_a_model_trajectory_that_ends_wrong_or_misses_its_target_is_a_drop_with_its_reason():
    item = question("m", "colour", "boat", [[400, 400, 420, 420]], answer="red")
    reached, elsewhere = [{"box_px": [300, 300, 500, 500]}], [{"box_px": [0, 0, 100, 100]}]
    with pytest.raises(Drop) as wrong:
        judge(item, reached, "<answer>blue</answer>")
    with pytest.raises(Drop) as missed:
        judge(item, elsewhere, "<answer>red</answer>")
    assert (wrong.value.reason, missed.value.reason) == ("wrong_final_answer", "zoom_misses_target")
    assert judge(item, reached, "<answer>red</answer>") == "direct"
    assert judge(item, [*elsewhere, *reached], "<answer>red</answer>") == "reflective"


def test_a_recognition_dialogue_names_the_thing_only_in_its_last_think(harbour):
    """What the thing is, is the answer: no think before the last says its class, and no reflective look at another
    of its class (which would say it) is made, even for an item picked for one."""
    image, scene = harbour
    patterns = set()
    for i, target in enumerate(boxes_of(scene, "boat")[:8]):
        item = question(f"r{i}", "recognition", "boat", [target], "A", ["boat", "ship", "tank"], "choice")
        item = dataclasses.replace(item, referent=["the thing the leftmost person is carrying"])
        for reflective in (None, True):
            messages, _, pattern = build(image, item, scene, recipe(), reflective)
            thinks = [m["content"][-1]["text"] for m in messages if m["role"] == "assistant"]
            assert not any("boat" in t for t in thinks[:-1]), thinks
            assert "it is a boat. The answer is boat." in thinks[-1]
            patterns.add(pattern)
    assert "reflective" not in patterns and "coarse_to_fine" in patterns
