"""Boxes in a teacher's own convention: the conversion, and `ground` and a trajectory's zoom against a local
OpenAI-compatible server whose teacher answers in each convention over the image it received."""

import asyncio
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from drim_data.db import connect
from drim_data.pipeline import run_pipeline, stage_settings
from drim_data.recipe import EndpointConfig, RecipeError, load_recipe
from drim_data.teacher.boxes import Frame
from drim_data.teacher.client import Teacher
from drim_data.teacher.replies import ReplyError
from drim_data.teacher.tasks import drive_trajectory
from schemas.tool import SYSTEM_PROMPT, system_prompt
from tests.conftest import query, write_recipe
from tests.fake_teacher import images_of, task_of
from tests.openai_server import FakeOpenAI, Reply

KEY_ENV = "DRIM_TEST_TEACHER_KEY"
CONVENTIONS = ["grid1000", "pixels", "unit", "yx1000"]
W, H = 1440, 1080  # 2x2 ground tiles of 800x600, each sent at 400x300 under TILE_BUDGET
OBJECT = (200, 160, 280, 220)  # a red block in the first tile only, edges on whole pixels of every sent size
TILE_BUDGET = 400 * 300
VIEW, VIEW_BUDGET = (720, 540), 360 * 270  # a trajectory's view, sent at a quarter of the original's side


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-boxes")


def scene() -> Image.Image:
    image = Image.new("RGB", (W, H), (30, 30, 30))
    ImageDraw.Draw(image).rectangle((OBJECT[0], OBJECT[1], OBJECT[2] - 1, OBJECT[3] - 1), fill=(255, 0, 0))
    return image


def answer_in(convention: str, image: Image.Image) -> list[float] | None:
    """The red block's box as a model of that convention writes it, over the image it was sent; None if unseen."""
    rgb = np.asarray(image).astype(int)
    ys, xs = np.nonzero((rgb[..., 0] > 128) & (rgb[..., 1] < 100))
    if not len(xs):
        return None
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    w, h = image.size
    if convention == "pixels":
        return [int(x1), int(y1), int(x2), int(y2)]
    if convention == "unit":
        return [round(x1 / w, 3), round(y1 / h, 3), round(x2 / w, 3), round(y2 / h, 3)]
    grid = [round(x1 / w * 1000), round(y1 / h * 1000), round(x2 / w * 1000), round(y2 / h * 1000)]
    return [grid[1], grid[0], grid[3], grid[2]] if convention == "yx1000" else grid


def as_the_model_sees(convention: str, image: Image.Image) -> Image.Image:
    """What the endpoint's model writes its boxes over: Qwen2.5-VL (`pixels`) first resizes each side to the nearest
    multiple of 28 px (its processor's `smart_resize`); the others' boxes are relative to the image."""
    if convention != "pixels":
        return image
    size = tuple(max(28, round(side / 28) * 28) for side in image.size)
    return image.resize(size, Image.Resampling.NEAREST)


def near(box, expected, tolerance: float = 2) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(box, expected, strict=True))


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_each_convention_reads_to_the_same_region_and_back(convention):
    frame, tile = Frame(convention, (400, 300)), (0, 0, 800, 600)
    written = answer_in(convention, scene().crop(tile).resize((400, 300), Image.Resampling.NEAREST))
    assert frame.to_region(written, tile) == pytest.approx(OBJECT, abs=1)
    assert frame.from_region(OBJECT, tile) == pytest.approx(written, abs=0.5 if convention != "unit" else 5e-4)
    inside = (640, 480, 1440, 1080)  # a region away from the origin, with its own offset
    for box in ([700, 500, 900, 1000], [641.5, 480.25, 1439, 1079.5]):
        assert frame.to_region(frame.from_region(box, inside), inside) == pytest.approx(box)


def test_the_wrong_convention_reads_a_wrong_box():
    tile = (0, 0, 800, 600)
    pixels = answer_in("pixels", scene().crop(tile).resize((400, 300), Image.Resampling.NEAREST))
    assert pixels == [100, 80, 140, 110]
    assert Frame("pixels", (400, 300)).to_region(pixels, tile) == OBJECT
    assert Frame("grid1000", (400, 300)).to_region(pixels, tile) == (80, 48, 112, 66)
    assert Frame("yx1000", (400, 300)).to_region(pixels, tile) == (64, 60, 88, 84)


@pytest.mark.parametrize(
    "convention, written, expected",
    [
        ("pixels", [-10, 250, 450, 400], (0, 500, 800, 600)),  # clamped to the sent image, then to the tile
        ("unit", [0.5, -0.2, 1.7, 0.25], (400, 0, 800, 150)),
        ("yx1000", [0, 500, 1000, 1200], (400, 0, 800, 600)),  # y first: x runs 500..1200, clamped to 1000
    ],
)
def test_boxes_are_clamped_to_what_was_shown(convention, written, expected):
    assert Frame(convention, (400, 300)).to_region(written, (0, 0, 800, 600)) == expected


@pytest.mark.parametrize(
    "convention, written",
    [
        ("grid1000", [500, 500, 400, 600]),  # inverted
        ("pixels", [500, 10, 600, 20]),  # wholly right of the 400 px image: empty once clamped
        ("unit", [0.2, 0.2, 0.2, 0.4]),
        ("yx1000", [600, 100, 500, 200]),  # y2 above y1
    ],
)
def test_empty_or_inverted_boxes_are_reply_errors(convention, written):
    with pytest.raises(ReplyError) as err:
        Frame(convention, (400, 300)).to_region(written, (0, 0, 800, 600))
    assert err.value.reason == "unparseable_reply" and "empty box" in err.value.detail


def test_prompts_say_the_convention():
    assert system_prompt(f"a box {Frame('grid1000', (9, 9)).describe('the original image')}") == SYSTEM_PROMPT
    assert Frame("pixels", (400, 300)).describe("this tile") == (
        "[x1, y1, x2, y2] in pixels of this tile as you see it (400x300 pixels)"
    )
    assert Frame("yx1000", (400, 300)).describe("this tile") == "[y1, x1, y2, x2] on a 0-1000 grid over this tile"
    assert "0 to 1" in Frame("unit", (400, 300)).describe("this tile")


def test_the_convention_is_a_checked_setting_that_redoes_the_stages_reading_boxes(tmp_path):
    images = tmp_path / "images"
    endpoint = {"base_url": "http://localhost:1/v1", "model": "m", "api_key_env": KEY_ENV}
    stages = ["ground", "questions", "verification", "trajectories"]
    recipe = load_recipe(write_recipe(tmp_path, images, False, teacher={"stages": stages, "endpoint": endpoint}))
    assert recipe.teacher.endpoint.boxes == "grid1000"
    wrong = write_recipe(tmp_path, images, False, teacher={"stages": stages, "endpoint": {**endpoint, "boxes": "xy"}})
    with pytest.raises(RecipeError, match=r"teacher\.endpoint\.boxes: 'xy' is not one of 'grid1000', 'pixels'"):
        load_recipe(wrong)
    other = dataclasses.replace(
        recipe,
        teacher=dataclasses.replace(
            recipe.teacher, endpoint=dataclasses.replace(recipe.teacher.endpoint, boxes="pixels")
        ),
    )
    changed = [
        s
        for s in ("ground", "generate", "verify", "trajectories")
        if stage_settings(recipe, s) != stage_settings(other, s)
    ]
    assert changed == ["ground", "trajectories"]


def ground_teacher(convention: str):
    def reply(body):
        if task_of(body) != "ground":
            return Reply(400)
        box = answer_in(convention, as_the_model_sees(convention, images_of(body)[0]))
        return json.dumps({"objects": [{"label": "red block", "bbox_2d": box}] if box else []})

    return reply


@pytest.mark.parametrize(
    "answers, configured", [(c, c) for c in CONVENTIONS] + [("pixels", "grid1000"), ("grid1000", "yx1000")]
)
def test_ground_maps_each_convention_to_the_objects_pixels(tmp_path, answers, configured):
    images = tmp_path / "images"
    images.mkdir()
    scene().save(images / "scene.png")
    with FakeOpenAI(ground_teacher(answers)) as server:
        endpoint = {
            "base_url": server.base_url,
            "model": "grounder",
            "api_key_env": KEY_ENV,
            "image_max_pixels": TILE_BUDGET,
            "boxes": configured,
        }
        recipe = load_recipe(
            write_recipe(
                tmp_path,
                images,
                False,
                mine={"sources": ["annotations"]},  # the teacher's box alone, merged with nothing
                view={"min_resolvable_px": 0},
                teacher={"stages": ["ground"], "tile_grid": 2, "endpoint": endpoint},
            )
        )
        run_pipeline(recipe, until="ground")
    sent = {img.size for r in server.successful() for img in images_of(r.body)}
    size = (392, 280) if configured == "pixels" else (400, 300)  # for pixels, on Qwen2.5-VL's 28 px grid
    assert sent == {size}  # every tile went at the downscaled size the boxes are read in
    prompt = server.successful()[0].body["messages"][0]["content"]
    assert Frame(configured, size).describe("this tile") in prompt
    regions = query(recipe.db, "SELECT label, x1, y1, x2, y2 FROM regions WHERE source = 'teacher'")
    assert len(regions) == 1 and regions[0][0] == "red block"
    assert near(regions[0][1:], OBJECT) == (answers == configured), regions


def trajectory_teacher(convention: str):
    def reply(body):
        if task_of(body) != "trajectory":
            return Reply(400)
        if len(body["messages"]) == 2:
            seen = as_the_model_sees(convention, images_of(body)[0])
            call = {"name": "zoom_in", "arguments": {"bbox_2d": answer_in(convention, seen)}}
            return f"<think>The red block is small.</think>\n<tool_call>{json.dumps(call)}</tool_call>"
        return "<think>It is red.</think>\n<answer>red</answer>"

    return reply


@pytest.mark.parametrize("answers, configured", [(c, c) for c in CONVENTIONS] + [("grid1000", "pixels")])
def test_a_trajectory_zooms_where_the_teacher_points_in_its_convention(tmp_path, answers, configured):
    full = scene()
    view = full.resize(VIEW, Image.Resampling.BICUBIC)
    con = connect(tmp_path / "t.duckdb")

    async def drive(teacher):
        try:
            return await drive_trajectory(teacher, full, view, "What colour is the block?", 3, "trajectories")
        finally:
            await teacher.close()

    with FakeOpenAI(trajectory_teacher(answers)) as server:
        cfg = EndpointConfig(
            base_url=server.base_url, model="m", api_key_env=KEY_ENV, image_max_pixels=VIEW_BUDGET, boxes=configured
        )
        steps, final = asyncio.run(drive(Teacher(cfg, con)))
    con.close()
    first, second = (r.body for r in server.successful())
    size = (336, 252) if configured == "pixels" else (360, 270)
    assert images_of(first)[0].size == size and final.endswith("<answer>red</answer>")
    assert Frame(configured, size).describe("the original image") in first["messages"][0]["content"]
    [step] = steps
    assert all(isinstance(v, int) for v in step["bbox"])  # on the grid, as the exported call replays it
    if answers != configured:
        assert not near(step["box_px"], OBJECT, 20)
        return
    # within a pixel of what was sent (4.3 original pixels on the 28 px grid, where the block's edges fall between)
    assert near(step["box_px"], OBJECT, 2 if configured != "pixels" else 1 + W / size[0]), step["box_px"]
    told = second["messages"][-1]["content"][0]["text"]  # the crop's caption, in the teacher's own terms
    written = first_call(second)
    assert told.startswith(f"Zoomed view of {written}:"), (told, written)


def first_call(body: dict) -> list[float]:
    """The box of the teacher's zoom call, as it wrote it, from the conversation sent back."""
    content = body["messages"][2]["content"]
    return json.loads(content.split("<tool_call>")[1].split("</tool_call>")[0])["arguments"]["bbox_2d"]
