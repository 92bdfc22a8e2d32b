"""The blind solver both ways: it answers items whose targets are large in the global view, not those that are tiny;
and verify drops what it answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from drim_data.pipeline import run_pipeline
from drim_data.pixels import solver
from drim_data.pixels.images import decode
from drim_data.pixels.palette import colour_name, object_pixels
from drim_data.pixels.solver import BlindItem, blind_answer
from drim_data.recipe import load_recipe
from schemas.answers import is_correct
from schemas.tool import global_view, global_view_size
from tests.conftest import DEMO_IMAGES, SHIPS, query, write_recipe

VIEW_PIXELS = 1003520


def view_of(image: Image.Image) -> Image.Image:
    return global_view(image, global_view_size(image.width, image.height, VIEW_PIXELS))


def colour_item(image: Image.Image, box, options=()) -> tuple[BlindItem, str]:
    """A colour question as the built-in teacher writes it: the answer measured on the full-resolution pixels."""
    colour = colour_name(object_pixels(np.asarray(image), box))[0]
    options = list(options)
    checker, answer = ("choice", "ABCD"[options.index(colour)]) if colour in options else ("text", colour)
    return BlindItem("colour", "ship", [list(box)], image.width, image.height, options, checker), answer


def labelled(kinds=("ship", "boat")):
    coco = json.loads((DEMO_IMAGES.parent / "annotations" / "labelled.coco.json").read_text())
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for a in coco["annotations"]:
        if names[a["category_id"]] in kinds and not a.get("iscrowd"):
            x, y, w, h = a["bbox"]
            yield files[a["image_id"]], (x, y, x + w, y + h)


@pytest.fixture(scope="module")
def demo_images() -> dict[str, Image.Image]:
    return {f: Image.open(DEMO_IMAGES / f).convert("RGB") for f in {f for f, _ in labelled()}}


def enlarged(image: Image.Image, box) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The target's surroundings (4x its size) upsampled to a 1000 px photo: the same object, now large."""
    x1, y1, x2, y2 = box
    side = 2 * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    window = (cx - side, cy - side, cx + side, cy + side)
    scale = 1000 / (2 * side)
    crop = image.crop(window).resize((1000, 1000), Image.Resampling.BICUBIC)
    return crop, tuple(round((v - o) * scale) for v, o in zip(box, window[:2] * 2, strict=True))


def test_large_targets_are_answered_and_tiny_ones_are_not(demo_images):
    """Control set: each labelled ship and boat enlarged; its tiny original is not answered."""
    large, tiny, tiny_total = [], 0, 0
    views = {f: view_of(image) for f, image in demo_images.items()}
    for f, box in labelled():
        image, view = demo_images[f], views[f]
        big, big_box = enlarged(image, box)
        item, answer = colour_item(big, big_box)
        large.append(is_correct(item.checker, blind_answer(view_of(big), item), answer))
        item, answer = colour_item(image, box)
        s = view.width / image.width
        if not solver._findable(tuple(v * s for v in box)):
            tiny_total += 1
            tiny += is_correct(item.checker, blind_answer(view, item), answer)
    assert len(large) >= 60 and sum(large) >= 0.9 * len(large), sum(large)
    assert tiny_total >= 25 and tiny == 0


def test_a_saturated_target_too_small_to_find_is_not_answered():
    image = Image.new("RGB", (3000, 3000), (30, 90, 200))
    ImageDraw.Draw(image).rectangle((1000, 1000, 1014, 1014), fill=(220, 30, 30))  # 5 px in a 1000 px view
    item, answer = colour_item(image, (1000, 1000, 1015, 1015), options=["red", "blue", "green", "yellow"])
    assert answer == "A" and blind_answer(view_of(image), item) is None
    ImageDraw.Draw(image).rectangle((2000, 2000, 2089, 2089), fill=(220, 30, 30))  # 30 px there
    item, answer = colour_item(image, (2000, 2000, 2090, 2090), options=["green", "red", "blue", "yellow"])
    assert answer == "B" and blind_answer(view_of(image), item) == "B"


def scene_with(boxes, size=3000) -> Image.Image:
    image = Image.new("RGB", (size, size), (30, 60, 70))
    for box in boxes:
        ImageDraw.Draw(image).rectangle(box, fill=(235, 235, 230))
    return image


def test_counting_at_view_scale_merges_what_touches_and_misses_what_is_tiny():
    apart = [(300, 300, 360, 360), (900, 300, 960, 360), (1500, 1500, 1560, 1560)]
    touching = [(300, 300, 360, 360), (363, 300, 423, 360), (1500, 1500, 1560, 1560)]  # 1 px apart in the view
    tiny = [(300, 300, 310, 310), (900, 300, 910, 310)]

    def count(boxes, options=(), checker="number"):
        item = BlindItem("count", "boat", [list(b) for b in boxes], 3000, 3000, list(options), checker)
        return blind_answer(view_of(scene_with(boxes)), item)

    assert count(apart) == "3"
    assert count(touching) == "2"  # the eye sees two blobs; the answer is 3
    assert count(tiny) is None
    assert count(apart, ["2", "4", "3", "5"], "choice") == "C"


def test_relative_position_only_when_both_objects_are_found():
    def relation(boxes, options):
        item = BlindItem("relative_position", "boat", [list(b) for b in boxes], 3000, 3000, options, "choice")
        return blind_answer(view_of(scene_with(boxes)), item)

    options = ["to the right of it", "to the left of it"]
    assert relation([(300, 1000, 360, 1060), (2000, 1100, 2060, 1160)], options) == "B"
    assert relation([(2000, 1000, 2060, 1060), (300, 1100, 360, 1160)], options) == "A"
    assert relation([(1000, 2500, 1060, 2560), (1100, 300, 1160, 360)], ["above", "below"]) == "B"
    assert relation([(300, 1000, 310, 1010), (2000, 1100, 2060, 1160)], options) is None


def test_a_long_thin_hull_is_recognised_by_its_area_not_its_narrow_side():
    hull, buoy, island = (300, 1000, 408, 1030), (300, 1000, 330, 1030), (2000, 1100, 2060, 1160)  # view: 36x10, 10x10
    options = ["to the right of it", "to the left of it"]
    for box, expected in ((hull, "B"), (buoy, None)):
        item = BlindItem("relative_position", "ship", [list(box), list(island)], 3000, 3000, options, "choice")
        assert blind_answer(view_of(scene_with([box, island])), item) == expected


def test_a_slim_object_that_stands_out_is_recognised_by_its_length():
    """A red hull 21x6 px in the view on dark water is seen as a ship, and its colour with it; the same outline in
    stone on stone is not, nor is a compact red blob of about the same area."""
    cases = [
        ((25, 45, 70), (220, 30, 30), (300, 1000, 363, 1018), "red"),  # view: 21x6 px
        ((150, 148, 140), (165, 162, 155), (300, 1000, 363, 1018), None),
        ((25, 45, 70), (220, 30, 30), (300, 1000, 330, 1036), None),  # view: 10x12 px
    ]
    for ground, paint, box, expected in cases:
        image = Image.new("RGB", (3000, 3000), ground)
        ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=paint)
        view = view_of(image)
        item = BlindItem("colour", "ship", [list(box)], 3000, 3000, [], "text")
        assert blind_answer(view, item) == expected, (paint, box)
        seen = solver.identifiable_in_view(box, np.asarray(view), 3000, 3000)
        assert seen == (expected is not None)


def test_a_slim_object_lying_diagonally_is_as_slim_as_one_along_its_box():
    """A red hull about 17 px long and 3 px wide in the view, lying at 55 degrees: its box (10x14 px) is not slim,
    the hull is. A compact blob with a box as large is not recognised."""
    water, red = (25, 45, 70), (220, 30, 30)
    hull = Image.new("RGB", (3000, 3000), water)
    ImageDraw.Draw(hull).line([(300, 1040), (330, 1000)], fill=red, width=9)  # view: about 10x14 px box
    blob = Image.new("RGB", (3000, 3000), water)
    ImageDraw.Draw(blob).ellipse((300, 1000, 330, 1040), fill=red)
    box = (296, 997, 334, 1043)
    for image, expected in ((hull, True), (blob, False)):
        view = np.asarray(view_of(image))
        assert solver.identifiable_in_view(box, view, 3000, 3000) == expected


def test_a_thing_is_recognised_as_its_class_only_where_the_view_shows_it_well():
    options = ["phone", "bag", "camera"]
    for box, expected in (((1000, 1000, 1090, 1090), "B"), ((1000, 1000, 1030, 1030), None)):  # view: 30 or 10 px
        item = BlindItem("recognition", "bag", [list(box)], 3000, 3000, options, "choice")
        assert blind_answer(view_of(scene_with([box])), item) == expected


def test_size_comparison_when_either_object_is_found():
    def compare(boxes):
        item = BlindItem("compare_size", "ship", [list(b) for b in boxes], 3000, 3000, [], "text")
        return blind_answer(view_of(scene_with(boxes)), item)

    assert compare([(300, 1000, 450, 1060), (2000, 1100, 2090, 1160)]) == "longer"  # 50 vs 30 px in the view
    assert compare([(2000, 1100, 2090, 1160), (300, 1000, 450, 1060)]) == "shorter"
    assert compare([(300, 1000, 336, 1024), (2000, 1100, 2090, 1160)]) == "shorter"  # a 12x8 px speck beside a hull
    assert compare([(300, 1000, 354, 1015), (2000, 1100, 2090, 1160)]) == "shorter"  # an 18x5 px hull: seen
    assert compare([(300, 1000, 315, 1015), (2000, 1100, 2090, 1160)]) == "shorter"  # a hull beside nothing to see
    assert compare([(300, 1000, 315, 1015), (2000, 1100, 2012, 1112)]) is None  # 5x5 and 4x4 px: neither is found


def test_text_is_read_from_the_view():
    sign = Image.new("RGB", (1600, 1200), (200, 200, 195))
    ImageDraw.Draw(sign).text((400, 500), "HARBOUR 42", fill=(20, 20, 30), font=ImageFont.load_default(size=120))
    item = BlindItem("text", "sign", [[380, 490, 1300, 650]], 1600, 1200, [], "text")
    assert is_correct("text", blind_answer(view_of(sign), item), "HARBOUR 42")
    options = ["HARBOUR 24", "HARBOUR 42", "HARBOR 42"]
    assert blind_answer(view_of(sign), BlindItem("text", "sign", item.targets, 1600, 1200, options, "choice")) == "B"


def test_the_berlin_inscription_is_not_read_from_the_view():
    from tests.test_ocr import BERLIN, INSCRIPTION

    berlin = Image.open(BERLIN).convert("RGB")
    truth = "KOMMET HER ZU MIR ALLE DIE IHR MUEHSELIG UND BELADEN SEID ICH WILL EUCH ERQUICKEN"
    item = BlindItem("text", "sign", [list(INSCRIPTION)], berlin.width, berlin.height, [], "text")
    assert not is_correct("text", blind_answer(view_of(berlin), item), truth)


@pytest.fixture(scope="module")
def verified_harbour(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blind")
    images = folder / "images"
    images.mkdir()
    for scene in (SHIPS, DEMO_IMAGES / "planet_shipsnet_scene_3.jpg"):
        (images / scene.name).write_bytes(scene.read_bytes())
    # the class-named boxes of the two harbours at 1 MP: some are seen well enough to answer, some are not
    recipe = load_recipe(write_recipe(folder, images, view={"max_pixels": 1_003_520}))
    run_pipeline(recipe, until="verify")
    return recipe


def test_verify_drops_what_the_blind_solver_answers(verified_harbour):
    rows = query(
        verified_harbour.db,
        "SELECT q.question_type, q.options, q.answer, q.checker, q.label, q.target_boxes, i.width, i.height, "
        "v.reason, i.uri FROM questions q JOIN verdicts v USING (question_id) JOIN images i USING (image_id) "
        "WHERE v.reason IS DISTINCT FROM 'visible_without_zoom'",
    )
    solved = {True: 0, False: 0}
    for qtype, options, answer, checker, label, targets, width, height, reason, uri in rows:
        image = decode(Path(uri).read_bytes())  # the image, by its reference
        view = global_view(image, global_view_size(image.width, image.height, verified_harbour.view.max_pixels))
        item = BlindItem(qtype, label, json.loads(targets), width, height, json.loads(options), checker)
        correct = is_correct(checker, blind_answer(view, item), answer)
        assert correct == (reason == "solvable_without_zoom"), (qtype, answer, reason)
        solved[correct] += 1
    assert solved[True] >= 2 and solved[False] >= 2  # both verdicts occur, each as the solver decides
