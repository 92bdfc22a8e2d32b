"""The built-in teacher's questions: named referents that pick out one object, answers that follow from the boxes and
pixels, plausible distractors and balanced answer letters. Scenes are hand-made so the right answer is known."""

import collections
import json
import random
import re
from dataclasses import replace

import numpy as np
from PIL import Image

from drim_data.pipeline import run_pipeline
from drim_data.pixels.palette import confusions
from drim_data.recipe import GenerateConfig, load_recipe
from drim_data.stages import generate
from drim_data.teacher.builtin import (
    BuiltinTeacher,
    ImageFacts,
    Instance,
    anchor_name,
    colour_distractors,
    descriptions,
    relation,
)
from schemas.answers import LETTERS
from tests.conftest import query, write_recipe

W, H = 2000, 1000
ALL = GenerateConfig(short_answer_share=0.0, colour_labelled_only=False)
COORDINATES = re.compile(r"\d+\s*,\s*\d+|\(\s*\d+|\[\s*\d+|grid")


def boat(x, y, side=20, **kw) -> Instance:
    kw.setdefault("region_id", f"r{x}-{y}")
    return Instance("boat", (x, y, x + side, y + side), **kw)


def facts(*instances, complete=None, image_id="a" * 64) -> ImageFacts:
    """A scene; unless told otherwise, every class in it is boxed completely, as in a hand-made scene."""
    complete = {i.label for i in instances} if complete is None else complete
    return ImageFacts(image_id, W, H, list(instances), frozenset(complete))


def phrases(target, scene, cfg=ALL, avoid=frozenset()):
    return [p for _, p, _ in descriptions(target, scene, cfg, avoid)]


def ask(scene, kinds, cfg=ALL):
    return BuiltinTeacher().write_questions(scene, GenerateConfig(**{**cfg.__dict__, "question_types": kinds}))


# ---- referents ----


def test_a_lone_instance_is_named_by_its_class():
    ship = Instance("ship", (500, 500, 520, 540), region_id="s")
    assert phrases(ship, facts(ship, boat(100, 100), boat(900, 700))) == ["the ship"]


def test_a_class_not_boxed_completely_gets_no_description():
    """An unboxed boat further left would make "the leftmost boat" wrong, and a second ship "the ship" ambiguous."""
    left, right = boat(100, 480), boat(1800, 500)
    ship = Instance("ship", (500, 500, 520, 540), region_id="s")
    scene = facts(left, right, ship, complete=["ship"])
    assert phrases(left, scene) == [] and phrases(ship, scene) == ["the ship"]
    assert phrases(ship, facts(ship, complete=[])) == []
    assert not any("boat" in q["question"] for q in ask(scene, ["relative_position", "colour", "compare_size"]))
    assert "the leftmost boat" in phrases(left, facts(left, right, ship))


def test_extreme_and_second_positions_need_a_clear_gap():
    left, middle, right = boat(100, 480), boat(900, 490), boat(1800, 500)
    scene = facts(left, middle, right)
    assert "the leftmost boat" in phrases(left, scene)
    assert "the second boat from the left" in phrases(middle, scene)
    row = [boat(x, 500) for x in (100, 600, 1100, 1600)]
    assert "the third boat from the left" in phrases(row[2], facts(*row))
    fourth = phrases(row[3], facts(*row, boat(1900, 500)))
    assert not any(p.endswith("from the left") for p in fourth)  # counting to three, no further
    assert "the rightmost boat" in phrases(right, scene) and "the leftmost boat" not in phrases(right, scene)
    crowded = boat(130, 900)  # centre 30 px right of the leftmost one: 1.5% of the width, under the 2% margin
    assert not any("leftmost" in p for p in phrases(left, facts(left, middle, right, crowded)))


def crowd(x1, y1, x2, y2, label="boat") -> Instance:
    return Instance(label, (x1, y1, x2, y2), sure=False, crowd=True)


def test_a_description_holds_against_whatever_a_crowd_box_hides():
    """A marina of moored boats boxed as one crowd: the boat left of it is the leftmost; one right of its left edge
    is not, though it is the leftmost boat boxed singly."""
    left, right = boat(100, 480), boat(1800, 500)
    marina = crowd(300, 100, 600, 300)
    assert "the leftmost boat" in phrases(left, facts(left, right, marina))
    inside_span = boat(400, 700)  # left of every single box, but the marina reaches further left
    found = phrases(inside_span, facts(inside_span, right, marina))
    assert "the leftmost boat" not in found
    assert "the leftmost boat in the bottom half of the image" in found  # the marina lies in the top half
    assert "the leftmost boat" in phrases(inside_span, facts(inside_span, right))  # the crowd is what stops it
    assert not any("bottom" in p for p in phrases(left, facts(left, right, crowd(0, 900, 2000, 1000))))


def test_a_crowd_box_allows_no_size_or_colour_description_and_is_never_asked_about():
    big = boat(100, 480, side=80, colour="red", colour_share=0.9)
    small = boat(1800, 500, colour="white", colour_share=0.9)
    assert {"the largest boat", "the red boat"} <= set(phrases(big, facts(big, small)))
    found = phrases(big, facts(big, small, crowd(900, 100, 950, 150)))
    assert "the largest boat" not in found and "the red boat" not in found  # the crowd may hide a bigger, red one
    questions = ask(facts(big, small, crowd(900, 100, 950, 150)), ["colour", "relative_position", "compare_size"])
    assert questions and all([900, 100, 950, 150] not in q["target_boxes"] for q in questions)


def test_counts_skip_any_area_a_crowd_box_reaches_into():
    row = [boat(x, 100) for x in (100, 300, 500)] + [boat(1500, 800), boat(1800, 800)]
    asked = {q["question"].split("?")[0] for q in ask(facts(*row, complete=["boat"]), ["count"])}
    assert any("left half" in q for q in asked) and any("right half" in q for q in asked)
    with_marina = ask(facts(*row, crowd(1500, 550, 1700, 650), complete=["boat"]), ["count"])
    stems = {q["question"].split("?")[0] for q in with_marina}
    assert any("left half" in q for q in stems)  # the marina lies in the bottom-right quarter only
    assert not any("right half" in q or "bottom half" in q or "bottom-right" in q for q in stems)
    straddling = ask(facts(*row, crowd(900, 50, 1100, 150), complete=["boat"]), ["count"])
    assert not any("left half" in q["question"] for q in straddling)


def test_uniqueness_is_checked_against_every_instance_even_unsure_or_not_mined():
    target, other = boat(300, 400), boat(1500, 400)
    assert "the leftmost boat" in phrases(target, facts(target, other))
    unsure = boat(100, 100, sure=False, region_id=None)  # further left: 'the leftmost boat' would be ambiguous
    assert "the leftmost boat" not in phrases(target, facts(target, other, unsure))


def test_area_scoped_positions():
    a, b, c = boat(200, 100), boat(600, 150), boat(300, 800)
    scene = facts(a, b, c)
    assert "the second boat from the right in the top half of the image" in phrases(a, scene)
    assert "the leftmost boat" in phrases(a, scene)  # and not the redundant "... in the top half of the image"
    assert "the leftmost boat in the top half of the image" not in phrases(a, scene)
    assert "the boat in the bottom half of the image" in phrases(c, scene)
    on_edge = boat(700, 490)  # centred on the halfway line: top or bottom is not clear
    with_edge = phrases(c, facts(a, b, c, on_edge))
    assert "the boat in the bottom half of the image" not in with_edge  # it may be a second one there
    # ... but c is the leftmost there whether or not the boat on the line counts, and not the rightmost
    assert "the leftmost boat in the bottom half of the image" in with_edge
    assert not any("right" in p and "bottom half" in p for p in with_edge)
    assert not any("top half" in p for p in with_edge)


def test_the_name_of_an_object_leaned_on_never_nests():
    """ "The boat above the bottommost ship in the right half of the image" is unique and unreadable: an object that
    another description leans on is named by its class, an extreme or its size, never by an area or a relation."""
    target, lower, right_low, right_high = boat(300, 300), boat(600, 800), boat(1500, 900), boat(1700, 100)
    scene = facts(target, lower, right_low, right_high, Instance("oil island", (200, 600, 300, 700)))
    scoped = [p for _, p, _ in descriptions(target, scene, ALL)]
    assert any("of the image" in p for p in scoped) and any("island" in p for p in scoped)
    alone = [p for _, p, _ in descriptions(target, scene, ALL, anchors=False)]
    assert alone and not any("of the image" in p or "island" in p for p in alone)
    assert anchor_name(target, scene, ALL, frozenset()) == "the leftmost boat"
    assert anchor_name(target, scene, ALL, frozenset({"horizontal"})) in (None, "the second boat from the top")
    counts = ask(facts(target, lower, right_low, right_high, Instance("oil island", (200, 600, 300, 700))), ["count"])
    assert counts and not any(q["question"].count(" the ") > 3 for q in counts)


def test_the_only_two_of_a_class_are_never_placed_against_each_other():
    """ "Is the lion head nearest the right door left or right of the one nearest the left door?" says it."""
    heads = [Instance("lion head", (x, 500, x + 20, 520), region_id=f"h{x}") for x in (300, 1500)]
    assert ask(facts(*heads), ["relative_position"]) == []
    third = Instance("lion head", (1700, 100, 1720, 120), region_id="h3")
    assert ask(facts(*heads, third), ["relative_position"])


def test_nearest_a_named_object_needs_a_clear_margin():
    island = Instance("oil island", (1000, 400, 1200, 600), region_id=None)
    near, far = boat(1250, 480), boat(300, 100)
    assert "the boat nearest the oil island" in phrases(near, facts(near, far, island))
    rival = boat(1260, 650)  # almost as near: no longer clearly the nearest
    assert "the boat nearest the oil island" not in phrases(near, facts(near, far, rival, island))
    unsure = Instance("oil island", (1000, 400, 1200, 600), sure=False)
    assert not any("nearest" in p for p in phrases(near, facts(near, far, unsure)))


def test_sides_of_a_named_object_scope_a_description():
    island = Instance("oil island", (1000, 400, 1200, 600))
    west, east, far_east = boat(500, 480), boat(1400, 300), boat(1800, 700)
    scene = facts(west, east, far_east, island)
    assert "the boat further left than the oil island" in phrases(west, scene)
    assert "the leftmost boat further right than the oil island" in phrases(east, scene)
    on_edge = boat(1010, 900)  # centred just inside the island's left edge: left of it or not is not clear
    edged = facts(west, east, far_east, island, on_edge)
    assert "the boat further left than the oil island" not in phrases(west, edged)


def test_size_and_colour_descriptions():
    big, small = boat(500, 500, side=40), boat(1500, 200, side=20)
    scene = facts(big, small)
    assert "the largest boat" in phrases(big, scene) and "the smallest boat" in phrases(small, scene)
    close = boat(1500, 200, side=30)  # 1600 vs 900 px: clearly larger
    assert "the largest boat" in phrases(big, facts(big, close))
    closer = boat(1500, 200, side=35)  # 1600 vs 1225 px: not clearly larger
    assert "the largest boat" not in phrases(big, facts(big, closer))

    red = boat(500, 500, colour="red", colour_share=0.9)
    white = boat(1500, 500, colour="white", colour_share=0.9)
    assert "the red boat" in phrases(red, facts(red, white))
    recorded_red = boat(1500, 500, colour="maroon", colour_share=0.5, recorded_colour="red")
    assert "the red boat" not in phrases(red, facts(red, recorded_red))
    orange = boat(1500, 500, colour="orange", colour_share=0.9)  # red's near neighbour: 'the red boat' is unclear
    assert "the red boat" not in phrases(red, facts(red, orange))
    assert "the red boat" not in phrases(red, facts(red, white), avoid=frozenset({"colour"}))


def test_unlabelled_or_unsure_targets_are_never_asked_about():
    proposal = Instance("object", (100, 100, 120, 120), colour="red", colour_share=1.0, region_id="p")
    unsure = boat(500, 500, sure=False, colour="red", colour_share=1.0)
    not_mined = boat(900, 500, region_id=None, colour="red", colour_share=1.0)
    assert ask(facts(proposal, unsure, not_mined), ["colour", "relative_position", "text"]) == []


# ---- question types ----


def test_colour_is_the_measured_one_and_must_agree_with_the_labeller():
    ship = Instance("ship", (500, 500, 520, 540), colour="red", colour_share=0.8, region_id="s")
    (q,) = ask(facts(ship), ["colour"])
    assert q["question"].startswith("What is the main colour of the ship?")
    assert q["options"][ord(q["answer"]) - 65] == "red" and q["referent"] == ["the ship"]
    assert set(q["options"]) - {"red"} == set(colour_distractors("red")) and len(set(q["options"])) == 4
    faint = Instance("ship", ship.box, colour="red", colour_share=0.5, region_id="s")
    assert ask(facts(faint), ["colour"]) == []  # under min_colour_share
    disputed = Instance("ship", ship.box, colour="red", colour_share=0.8, recorded_colour="orange", region_id="s")
    assert ask(facts(disputed), ["colour"]) == []
    agreed = Instance("ship", ship.box, colour="red", colour_share=0.8, recorded_colour="red", region_id="s")
    assert len(ask(facts(agreed), ["colour"])) == 1
    speck = Instance("ship", (500, 500, 510, 540), colour="red", colour_share=0.9, region_id="s")  # 10 px wide
    assert ask(facts(speck), ["colour"]) == []
    labelled_only = GenerateConfig(short_answer_share=0.0)  # the default: a colour the labeller named
    assert ask(facts(ship), ["colour"], labelled_only) == []
    assert len(ask(facts(agreed), ["colour"], labelled_only)) == 1


def test_colour_distractors_are_near_but_clearly_other_colours():
    # tan is the nearest palette colour to beige, and silver to white, but too close to be wrong (under 30 in CIELAB)
    assert confusions("beige")[0] == "tan" and "tan" not in colour_distractors("beige")
    assert "beige" in confusions("white")[:4] and "beige" not in colour_distractors("white")
    assert "silver" in confusions("white")[:2] and "silver" not in colour_distractors("white")
    assert "white" not in colour_distractors("silver") and "gray" in colour_distractors("white")
    for name in ("red", "navy", "beige", "green"):
        found = colour_distractors(name)
        assert len(found) == 3 and name not in found
        assert found == [c for c in confusions(name) if c in found]  # nearest first


def test_counts_match_an_independent_count_and_only_for_complete_classes():
    rng = np.random.default_rng(1)
    boats = [boat(int(x), int(y)) for x, y in zip(rng.integers(50, 1900, 14), rng.integers(50, 900, 14), strict=True)]
    island = Instance("oil island", (900, 300, 1100, 500))
    scene = facts(*boats, island, complete=["boat", "oil island"])
    questions = ask(scene, ["count"])
    assert questions
    areas = {
        "in the left half of the image": lambda x, y: x < W / 2,
        "in the right half of the image": lambda x, y: x > W / 2,
        "in the top half of the image": lambda x, y: y < H / 2,
        "in the bottom half of the image": lambda x, y: y > H / 2,
        "in the top-left quarter of the image": lambda x, y: x < W / 2 and y < H / 2,
        "in the top-right quarter of the image": lambda x, y: x > W / 2 and y < H / 2,
        "in the bottom-left quarter of the image": lambda x, y: x < W / 2 and y > H / 2,
        "in the bottom-right quarter of the image": lambda x, y: x > W / 2 and y > H / 2,
        "further left than the oil island": lambda x, y: x < 900,
        "further right than the oil island": lambda x, y: x > 1100,
        "higher up than the oil island": lambda x, y: y < 300,
        "lower down than the oil island": lambda x, y: y > 500,
    }
    for q in questions:
        area = re.search(r"How many boats are there (.+?)\?", q["question"]).group(1)
        truth = sum(areas[area](*b.centre) for b in boats)
        assert q["options"][ord(q["answer"]) - 65] == str(truth) == str(len(q["target_boxes"]))
        assert sorted(int(o) for o in q["options"] if o != str(truth)) == sorted(
            int(o) for o in q["options"] if abs(int(o) - truth) in (1, 2)
        )
    assert ask(facts(*boats, island, complete=["oil island"]), ["count"]) == []  # boats are not all boxed here


def test_an_object_across_an_area_line_is_on_both_sides():
    """A band whose centre lies left of the tree but which runs past it is not "further left than the tree"."""
    tree = Instance("tree", (1500, 600, 1540, 700), small=False)
    short = [Instance("inscription", (x, 100, x + 60, 120), region_id=f"i{x}") for x in (200, 700)]
    band = Instance("inscription", (900, 300, 1800, 320), region_id="band")  # centre 1350, left of the tree
    stems = {q["question"].split("?")[0] for q in ask(facts(*short, tree), ["count"])}
    assert "How many inscriptions are there further left than the tree" in stems
    stems = {q["question"].split("?")[0] for q in ask(facts(*short, band, tree), ["count"])}
    assert "How many inscriptions are there further left than the tree" not in stems


def test_counts_skip_areas_with_an_instance_on_the_edge_or_an_unsure_box():
    row = [boat(x, 100) for x in (100, 300, 500)]
    scene = facts(*row, complete=["boat"])
    assert any("left half" in q["question"] for q in ask(scene, ["count"]))
    edge = boat(W // 2 - 10, 800)  # centred on the halfway line
    assert not any("left half" in q["question"] for q in ask(facts(*row, edge, complete=["boat"]), ["count"]))
    unsure = boat(700, 700, sure=False)
    assert not any("left half" in q["question"] for q in ask(facts(*row, unsure, complete=["boat"]), ["count"]))


def test_counts_of_objects_visible_without_zooming_are_not_asked():
    row = [boat(x, 100) for x in (100, 300, 500)]
    assert any("left half" in q["question"] for q in ask(facts(*row, complete=["boat"]), ["count"]))
    seen = [boat(x, 100, small=False) for x in (100, 300)] + [boat(500, 100)]  # two of three resolvable
    assert not any("left half" in q["question"] for q in ask(facts(*seen, complete=["boat"]), ["count"]))


def test_relative_position_is_asked_only_when_clear_on_one_axis():
    ship, island = (
        Instance("ship", (300, 480, 320, 520), region_id="s"),
        Instance("oil island", (1000, 400, 1200, 600)),
    )
    scene = facts(ship, island)
    assert relation(ship, island, scene, ALL) == "left" and relation(island, ship, scene, ALL) == "right"
    (q,) = ask(scene, ["relative_position"])
    assert q["question"].startswith("Where is the ship relative to the oil island?")
    assert sorted(q["options"]) == ["above", "below", "left", "right"]
    assert q["options"][ord(q["answer"]) - 65] == "left" and q["referent"] == ["the ship", "the oil island"]
    diagonal = Instance("ship", (700, 50, 720, 90), region_id="s")  # as far up as it is left: not clear
    assert relation(diagonal, island, facts(diagonal, island), ALL) is None
    touching = Instance("ship", (960, 480, 980, 520), region_id="s")  # 20 px from the island: no clear gap
    assert relation(touching, island, facts(touching, island), ALL) is None
    below = Instance("ship", (1090, 800, 1110, 840), region_id="s")
    assert relation(below, island, facts(below, island), ALL) == "below"


def test_relative_position_names_lean_on_no_third_object():
    """ "The boat nearest the island" is found by finding the island: its place in the view gives the answer."""
    rng, asked = np.random.default_rng(3), []
    for _ in range(20):
        island = Instance("oil island", (900, 400, 1000, 480), small=False)
        boats = [
            boat(int(x), int(y)) for x, y in zip(rng.integers(50, 1900, 6), rng.integers(50, 900, 6), strict=True)
        ]
        scene = facts(*boats, Instance("ship", (1400, 490, 1430, 510), region_id="s"), island)
        asked += [r for q in ask(scene, ["relative_position"]) for r in q["referent"]]
    assert len(asked) >= 20 and not any("nearest" in r or "'s" in r for r in asked)


def test_relative_position_is_not_asked_when_every_instance_stands_the_same_way():
    """Bags ride on people at the foot of the steps, the statue stands high: "below" needs no bag found."""
    bags = [Instance("bag", (x, 900, x + 20, 920), region_id=f"b{x}") for x in (200, 700, 1200)]
    statue = Instance("statue", (900, 100, 1100, 400), small=False)
    kinds = ["relative_position"]
    assert ask(facts(*bags, statue), kinds) == []
    high = Instance("bag", (1600, 150, 1620, 170), region_id="high")  # one on the balcony beside the statue
    asked = ask(facts(*bags, high, statue), kinds)
    assert asked and all(q["label"] == "bag" for q in asked)
    tiny_statue = replace(statue, small=True, region_id="s")  # the statue itself must be found...
    assert ask(facts(*bags, high, tiny_statue), kinds)
    assert ask(facts(*bags, tiny_statue), kinds) == []  # ... but every bag stands below it: no search for it either


def test_relative_position_offers_no_other_relation_that_could_be_true():
    """Far left and well below: "left" is the answer, so "below" may not be offered beside it."""
    island = Instance("oil island", (1000, 400, 1200, 600))
    low = Instance("ship", (100, 700, 120, 740), region_id="s")  # 900 px left, 100 px below the island's bottom
    scene = facts(low, island)
    assert relation(low, island, scene, ALL) == "left"
    (q,) = ask(scene, ["relative_position"])
    assert q["options"] in (["left", "right"], ["right", "left"])
    assert q["options"][ord(q["answer"]) - 65] == "left" and q["question"].endswith("Answer with the option's letter.")
    near = Instance("ship", (100, 610, 120, 650), region_id="s")  # 10 px below its bottom: "below" is true too
    (q,) = ask(facts(near, island), ["relative_position"])
    assert sorted(q["options"]) == ["left", "right"]
    level = Instance("ship", (100, 480, 120, 520), region_id="s")  # level with the island: all four may be offered
    (q,) = ask(facts(level, island), ["relative_position"])
    assert sorted(q["options"]) == ["above", "below", "left", "right"]


def test_two_option_questions_share_their_letters_evenly():
    letters = collections.Counter()
    for seed in range(80):
        island = Instance("oil island", (1000, 400, 1200, 600))
        y = 700 + seed % 5 * 40
        ships = [Instance("ship", (100, y, 120, y + 40), region_id="s")]
        letters.update(q["answer"] for q in ask(facts(*ships, island, image_id=f"{seed:064x}"), ["relative_position"]))
    assert set(letters) == {"A", "B"} and abs(letters["A"] - letters["B"]) <= 0.2 * sum(letters.values()), letters


def test_relative_position_referents_do_not_give_the_answer_away():
    boats = [boat(200, 480), boat(1600, 480)]
    island = Instance("oil island", (1000, 400, 1200, 600))
    for q in ask(facts(*boats, island), ["relative_position"]):
        assert not re.search(r"leftmost|rightmost|left half|right half", q["question"].split("?")[0]), q


def test_a_pair_of_targets_is_asked_about_one_way_round():
    """ "Is A left of B?" and "Is B left of A?" are one fact: asked both ways, one split would hold the other's
    answer."""
    ships = [
        Instance("ship", (100 + 500 * i, 100 + 200 * i, 120 + 500 * i, 140 + 200 * i), region_id=f"s{i}")
        for i in range(4)
    ]
    questions = ask(facts(*ships), ["relative_position"])
    pairs = [frozenset(tuple(b) for b in q["target_boxes"]) for q in questions]
    assert len(pairs) >= 3 and len(set(pairs)) == len(pairs)


def test_text_needs_ocr_to_agree_with_the_labeller():
    sign = Instance(
        "sign", (400, 400, 700, 420), text="KOMMET HER ZU MIR", ocr_text="KOMMET HER ZU MlR", region_id="g"
    )
    (q,) = ask(facts(sign), ["text"])
    assert q["answer"] == "KOMMET HER ZU MIR" and q["checker"] == "text" and q["referent"] == ["the sign"]
    for ocr in (None, "EINGANG"):
        unread = Instance("sign", sign.box, text=sign.text, ocr_text=ocr, region_id="g")
        assert ask(facts(unread), ["text"]) == []


def test_a_long_text_is_asked_by_its_first_or_last_word_where_that_word_lies():
    band = Instance(
        "inscription",
        (1000, 400, 1800, 420),
        text="KOMMET HER ZU MIR ALLE DIE IHR",
        ocr_text="OMMET HER ZU MIR AILE DIE IHR",
        region_id="g",
    )
    seen = {q["answer"]: q for q in ask(facts(band), ["text"])}
    assert set(seen) == {"KOMMET", "IHR"}
    first, last = seen["KOMMET"], seen["IHR"]
    assert first["question"].startswith("What is the first word of the inscription?")
    assert first["referent"] == ["the first word of the inscription"]
    (fx1, _, fx2, _), (lx1, _, lx2, _) = first["target_boxes"][0], last["target_boxes"][0]
    per_char = 800 / len(band.text)
    assert fx1 == 1000 and fx2 == round(1000 + (6 + 1 + 0.3 * 6) * per_char)  # "KOMMET" and its slack
    assert lx2 == 1800 and lx1 == round(1000 + (len(band.text) - 3 - 1 - 0.3 * 3) * per_char)
    short = Instance("sign", (400, 400, 700, 420), text="EINGANG", ocr_text="EINGANG", region_id="s")
    (q,) = ask(facts(short), ["text"])
    assert q["answer"] == "EINGANG" and q["target_boxes"] == [[400, 400, 700, 420]]


def test_a_thing_a_person_has_is_named_by_its_person():
    left, right = Instance("person", (200, 300, 300, 600)), Instance("person", (1500, 300, 1600, 600))
    bags = [Instance("bag", (210, 400, 240, 440)), Instance("bag", (1510, 400, 1540, 440))]
    found = phrases(bags[0], facts(left, right, *bags), avoid=frozenset({"vertical"}))
    assert "the leftmost person's bag" in found
    across = phrases(bags[0], facts(left, right, *bags), avoid=frozenset({"horizontal"}))
    assert not any("leftmost" in p for p in across)  # asked left or right, its person's name must not say
    between = Instance("bag", (1490, 400, 1530, 440))
    crowd = facts(left, right, Instance("person", (1450, 300, 1520, 600)), bags[0], between)
    assert not any("person's" in p for p in phrases(between, crowd))  # half in two people's boxes: whose?
    two = facts(left, right, bags[0], Instance("bag", (250, 500, 280, 540)), bags[1])
    assert not any("person's" in p for p in phrases(bags[0], two))  # the person has two bags


def test_sizes_cut_by_the_image_edge_are_never_compared():
    far, near = Instance("person", (400, 300, 430, 380)), Instance("person", (1200, 200, 1300, 500))
    cut = Instance("person", (1600, 950, 1640, 1000))  # its legs below the frame: small only because cut
    assert "the smallest person" in phrases(far, facts(far, near))
    assert not any("smallest" in p or "largest" in p for p in phrases(far, facts(far, near, cut)))
    long_ship = Instance("ship", (100, 480, 160, 490), region_id="a")
    cut_ship = Instance("ship", (1960, 480, 2000, 490), region_id="b")  # 40 px inside the frame, longer beyond
    assert ask(facts(long_ship, cut_ship), ["compare_size"]) == []


def test_a_look_alike_class_of_similar_length_counts_against_a_description():
    target, other_boat = boat(400, 500, side=17), boat(1500, 500, side=17)
    small_ship = Instance("ship", (300, 500, 322, 522))  # 22 px: a viewer could take it for a boat
    big_ship = Instance("ship", (300, 500, 400, 520))  # 100 px: plainly not a boat
    alike = GenerateConfig(look_alike=[["ship", "boat"]])
    assert "the leftmost boat" in phrases(target, facts(target, other_boat, small_ship))  # classes apart: unique
    assert "the leftmost boat" not in phrases(target, facts(target, other_boat, small_ship), alike)
    assert "the leftmost boat" in phrases(target, facts(target, other_boat, big_ship), alike)
    assert phrases(target, facts(target, small_ship), alike) != ["the boat"]  # no longer the only one


def test_size_comparison_needs_a_clear_ratio_and_names_that_do_not_speak_of_size():
    long_ship = Instance("ship", (100, 480, 160, 490), region_id="a")  # 60 px long
    short_ship = Instance("ship", (1500, 480, 1540, 490), region_id="b")  # 40 px: 1.5 times shorter
    questions = ask(facts(long_ship, short_ship), ["compare_size"])
    assert len(questions) == 1  # one question per pair, not the same pair both ways
    (q,) = questions
    asked_first = q["target_boxes"][0] == [100, 480, 160, 490]
    assert q["answer"] == ("longer" if asked_first else "shorter") and q["checker"] == "text"
    assert not re.search(r"largest|smallest|longest", q["question"])
    assert set(q["referent"]) == {"the leftmost ship", "the rightmost ship"}
    alike = Instance("ship", (1500, 480, 1550, 490), region_id="b")  # 50 px: within the length ratio
    assert ask(facts(long_ship, alike), ["compare_size"]) == []
    boat_beside = Instance("boat", (1500, 480, 1520, 490), region_id="c")  # another class is not compared
    assert ask(facts(long_ship, boat_beside), ["compare_size"]) == []


# ---- answer letters ----


def scene_for(seed: int) -> ImageFacts:
    """A random harbour: boats (some red), ships and an island, boats boxed completely."""
    rng = random.Random(seed)
    found = [Instance("oil island", (900, 350, 1100, 550))]
    for _ in range(rng.randint(3, 9)):
        colour = rng.choice(["red", "white", "blue", "green"])
        x, y = rng.randint(20, 1950), rng.randint(20, 950)
        found.append(boat(x, y, side=rng.randint(10, 30), colour=colour, colour_share=0.9))
    for _ in range(rng.randint(1, 3)):
        x, y = rng.randint(20, 1900), rng.randint(20, 900)
        found.append(Instance("ship", (x, y, x + 40, y + 60), colour="gray", colour_share=0.9, region_id=f"s{x}"))
    return facts(*found, complete=["boat", "ship", "oil island"], image_id=f"{seed:064x}")


def test_answer_letters_are_balanced_within_each_image_and_across_many():
    """Among the questions with as many options, within an image and over many."""
    letters = collections.defaultdict(collections.Counter)
    for seed in range(150):
        per_image = collections.defaultdict(collections.Counter)
        for q in ask(scene_for(seed), ["colour", "count", "relative_position"]):
            if q["options"]:
                per_image[len(q["options"])][q["answer"]] += 1
        for n, counts in per_image.items():
            assert max(counts.values()) - min(counts.get(x, 0) for x in "ABCD"[:n]) <= 1, (n, counts)
            letters[n] += counts
    assert sum(letters[4].values()) > 300 and sum(letters[2].values()) > 50
    for n, counts in letters.items():
        total = sum(counts.values())
        assert all(abs(counts[x] / total - 1 / n) <= 0.1 / n for x in "ABCD"[:n]), counts  # within 10% of uniform


def test_questions_never_point_with_coordinates_and_are_deterministic():
    for seed in range(30):
        scene = scene_for(seed)
        questions = ask(scene, ["colour", "count", "relative_position"])
        assert questions == ask(scene, ["colour", "count", "relative_position"])
        for q in questions:
            assert not COORDINATES.search(q["question"]) and all(not COORDINATES.search(r) for r in q["referent"])
            assert all(isinstance(r, str) and r.startswith("the ") for r in q["referent"])
            assert all(r in q["question"] or q["question_type"] == "count" for r in q["referent"])


def test_adding_a_question_type_leaves_the_others_worded_as_they_were():
    """Each writer draws from its own random stream: the colour questions name the same objects in the same words,
    short or multiple choice alike, whatever else is asked (only a letter may move, as letters balance per image)."""

    def stems(questions):
        return sorted((q["question"].split("\n")[0], sorted(q["options"]), q["checker"]) for q in questions)

    for seed in range(30):
        scene = scene_for(seed)
        alone = ask(scene, ["colour"])
        among = [q for q in ask(scene, ["count", "colour", "relative_position"]) if q["question_type"] == "colour"]
        assert stems(alone) == stems(among)


# ---- on real pixels, through the stage ----


def test_generate_measures_each_object_on_its_own_pixels(tmp_path):
    """A real image with painted objects and a COCO file: the stage measures, names and asks."""
    rgb = np.full((1500, 2000, 3), (40, 70, 110), np.uint8)  # open water
    painted = {"red": (200, 30, 30), "white": (240, 240, 240), "green": (40, 150, 60)}
    boxes = {"red": (300, 300, 318, 330), "white": (1500, 700, 1518, 730), "green": (900, 1200, 918, 1230)}
    for name, (x1, y1, x2, y2) in boxes.items():
        rgb[y1:y2, x1:x2] = painted[name]
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb).save(images / "harbour.png")
    coco = {
        "images": [
            {"id": 1, "file_name": "harbour.png", "width": 2000, "height": 1500, "complete_categories": ["boat"]}
        ],
        "categories": [{"id": 1, "name": "boat"}],
        "annotations": [
            {"id": i, "image_id": 1, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            | ({"attributes": {"colour": "orange"}} if name == "green" else {})  # the labeller disagrees
            for i, (name, b) in enumerate(boxes.items())
        ],
    }
    (tmp_path / "boats.json").write_text(json.dumps(coco))
    recipe = write_recipe(
        tmp_path,
        images,
        annotations=False,
        ingest={"annotations": [{"format": "coco", "path": str(tmp_path / "boats.json")}]},
        generate={"question_types": ["colour"], "short_answer_share": 1.0, "colour_labelled_only": False},
    )
    run_pipeline(load_recipe(recipe), until="generate")
    found = dict(query(tmp_path / "state.duckdb", "SELECT referent, answer FROM questions"))
    leftmost = json.dumps(["the leftmost boat"])
    assert found.get(leftmost, "red") == "red" and found.get(json.dumps(["the rightmost boat"]), "white") == "white"
    assert set(found.values()) <= {"red", "white"} and found  # the green boat's colour is disputed: not asked
    assert all("green" not in r for r in found)


def test_text_is_not_asked_without_ocr(monkeypatch, tmp_path):
    """Until OCR is installed, the stage reads no text and the teacher asks no text question."""
    monkeypatch.setattr(generate, "read_text", None)
    image = Image.new("RGB", (400, 100))
    view = load_recipe(write_recipe(tmp_path, tmp_path)).view
    sign = generate._instance(image, "sign", (50, 40, 350, 60), {"text": "EINGANG"}, "g", view, np.asarray(image))
    assert sign.text == "EINGANG" and sign.ocr_text is None
    assert ask(facts(sign), ["text"]) == []


def test_a_region_is_measured_on_its_own_crop_even_past_the_image_edge(tmp_path):
    """A box reaching past the edge is measured on the part inside the image: the red object there, not padding."""
    image = Image.new("RGB", (400, 100), (90, 90, 90))
    image.paste((220, 20, 20), (370, 40, 400, 70))
    view = load_recipe(write_recipe(tmp_path, tmp_path)).view
    boat = generate._instance(image, "boat", (360, 30, 420, 80), {}, "r", view, np.asarray(image))
    assert boat.colour == "red" and boat.box == (360.0, 30.0, 420.0, 80.0)


def test_bundled_recipes_ask_named_questions_of_several_types(tmp_path):
    from tests.conftest import REPO

    types = set()
    for name in ("demo", "fixtures"):
        text = (REPO / "pipelines" / f"{name}.yaml").read_text()
        text = re.sub(r"(?m)^db: .*$", f"db: {tmp_path / name / 'state.duckdb'}", text)
        text = re.sub(r"(?m)^output_dir: .*$", f"output_dir: {tmp_path / name / 'out'}", text)
        (tmp_path / f"{name}.yaml").write_text(text.replace("../data", str(REPO / "data")))
        run_pipeline(load_recipe(tmp_path / f"{name}.yaml"), until="generate")
        rows = query(
            tmp_path / name / "state.duckdb", "SELECT question_type, question, referent, label FROM questions"
        )
        types |= {t for t, *_ in rows}
        for _, question, referents, label in rows:
            assert not COORDINATES.search(question) and label != "object"
            assert all(not COORDINATES.search(r) for r in json.loads(referents))
    assert types >= {"colour", "count", "relative_position", "compare_size", "text"}


# ---- recognition ----


def test_recognition_asks_what_a_named_person_has_with_exactly_one_option_true():
    """Each thing on a person is asked about by naming the person only; no other option's class touches them, so
    only the answer is true; a thing seen in the view, or options from classes not boxed completely, ask nothing."""
    walker, runner = (
        Instance("person", (100, 500, 160, 660), small=False),
        Instance("person", (1500, 500, 1560, 660), small=False),
    )
    bag = Instance("bag", (110, 580, 125, 600), region_id="b")
    camera = Instance("camera", (140, 540, 150, 550), region_id="c")  # the walker's too
    phone = Instance("phone", (1510, 560, 1518, 575), region_id="p")  # the runner's
    scarf = Instance("scarf", (1520, 510, 1540, 525), region_id="s", small=False)  # the runner's, seen in the view
    away = [
        Instance("bottle", (900, 900, 910, 920), region_id="o"),
        Instance("book", (700, 100, 720, 115), region_id="k"),
    ]
    away += [
        Instance("cap", (1000, 300, 1010, 306), region_id="x"),
        Instance("watch", (1100, 300, 1106, 306), region_id="w"),
    ]
    things = {"b": bag, "c": camera, "p": phone, "s": scarf}
    found = ask(facts(walker, runner, bag, camera, phone, scarf, *away), ["recognition"])
    asked = {}
    for q in found:
        (rid,) = q["target_region_ids"]
        person = walker if rid in "bc" else runner
        options = q["options"]
        assert q["checker"] == "choice" and options[LETTERS.index(q["answer"])] == things[rid].label
        assert len(options) >= 3 and not any(o in q["question"].split("?")[0] for o in options)
        on_person = {
            i.label for i in (bag, camera, phone, scarf) if i.box[0] < person.box[2] and i.box[2] > person.box[0]
        }
        assert on_person & set(options) == {
            things[rid].label
        }  # the walker's camera is no option of the bag's question
        asked[rid] = q["question"].split("?")[0]
    assert asked == {
        "b": "Which of these is the leftmost person carrying",
        "c": "Which of these is the leftmost person carrying",
        "p": "Which of these is the rightmost person carrying",
    }  # the scarf is seen in the view
    few = facts(walker, runner, bag, camera, phone, complete={"person", "bag", "camera", "phone"})
    assert [q["target_region_ids"] for q in ask(few, ["recognition"])] == [["p"]]  # the bag's only option: phone
