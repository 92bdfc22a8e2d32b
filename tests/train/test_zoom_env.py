import pytest
from PIL import Image, ImageDraw
from transformers.utils import get_json_schema

from drim_train.zoom_env import ZoomEnv
from schemas.tool import ZOOM, ZoomSpec

W, H = 2000, 1000


@pytest.fixture
def env():
    image = Image.new("RGB", (W, H), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((1000, 500, 1099, 599), fill=(255, 0, 0))  # a red 100 px square
    env = ZoomEnv(max_turns=3)
    env.reset(original_image=image, images=[image.resize((200, 100))], answer="A")
    return env


def test_tool_schema_is_the_shared_spec():
    """GRPO renders the schema from the method; SFT renders ZOOM.schema(): they must be the same text."""
    assert get_json_schema(ZoomEnv().zoom_in) == ZOOM.schema()


def test_only_zoom_in_is_exposed_as_a_tool():
    import inspect

    public = [n for n, _ in inspect.getmembers(ZoomEnv, predicate=inspect.isfunction) if not n.startswith("_")]
    assert sorted(public) == ["reset", "zoom_in"]


def test_zoom_crops_the_original_at_full_resolution(env):
    reply = env.zoom_in([500, 500, 550, 600])  # grid -> pixels (1000, 500, 1100, 600) of the 2000x1000 original
    assert env.boxes_px == [(1000, 500, 1100, 600)]
    assert env.boxes_norm == [[0.5, 0.5, 0.55, 0.6]]
    image, text = reply[0]["image"], reply[1]["text"]
    assert reply[0]["type"] == "image" and reply[1]["type"] == "text"
    assert text == "Zoomed view of [500, 500, 550, 600]: 100x100 px of the original image."
    # upsampled into the output budget, and the red square fills it (it came from the original, not the view)
    assert image.width * image.height >= ZOOM.min_output_pixels * 0.99
    assert image.getpixel((image.width // 2, image.height // 2)) == (255, 0, 0)
    assert env.calls == 1 and env.invalid_calls == 0


def test_large_boxes_are_downscaled_into_the_pixel_budget(env):
    crop = env.zoom_in([0, 0, 1000, 1000])[0]["image"]
    assert crop.width * crop.height <= ZOOM.max_output_pixels
    assert crop.width / crop.height == pytest.approx(2.0, rel=0.01)


def test_boxes_are_clamped_and_corners_ordered(env):
    env.zoom_in([1200, 1100, 900, -40])
    assert env.boxes_px == [(1800, 0, 2000, 1000)]


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [
        ([10, 10, 11, 11], "each side must be at least"),  # 2x1 px
        ([0, 0, 1000, 0.5], "empty"),
        ([0, 0, 1000, 1.4], "each side must be at least"),  # 2000x1 px
        ([5, 5, 5, 900], "empty"),
        ([1, 2, 3], "four numbers"),
        ("[1, 2, 3, 4]", "four numbers"),
        ([1, 2, "x", 4], "four numbers"),
        ([0, 0, float("nan"), 10], "finite"),
        ([1100, 0, 1200, 1000], "empty"),  # entirely outside: nothing left after clamping
    ],
)
def test_invalid_calls_get_an_error_observation(env, bbox, reason):
    reply = env.zoom_in(bbox)
    assert len(reply) == 1 and reply[0]["type"] == "text"
    assert reply[0]["text"].startswith("Error:") and reason in reply[0]["text"]
    assert env.boxes_px == [] and env.invalid_calls == 1 and env.calls == 1


def test_aspect_limit():
    image = Image.new("RGB", (10000, 100))
    env = ZoomEnv(spec=ZoomSpec(min_side_px=1, max_aspect=50))
    env.reset(original_image=image)
    assert env.zoom_in([0, 0, 1000, 1000])[0]["text"].startswith("Error: box aspect ratio exceeds 50")
    assert env.zoom_in([0, 0, 400, 1000])[0]["type"] == "image"  # 4000 x 100 = 40:1


def test_turn_limit(env):
    replies = [env.zoom_in([0, 0, 500, 500]) for _ in range(4)]
    assert [r[0]["type"] for r in replies] == ["image", "image", "image", "text"]
    assert "limit of 3 zoom calls" in replies[-1][0]["text"]
    assert len(env.boxes_px) == 3 and env.invalid_calls == 1


def test_reset_starts_a_new_episode_on_the_original(env):
    env.zoom_in([0, 0, 500, 500])
    env.zoom_in([0, 0, 1, 1])
    env.reset(original_image=Image.new("RGB", (300, 200)), images=[Image.new("RGB", (30, 20))])
    assert (env.calls, env.boxes_px, env.errors) == (0, [], [])
    env.zoom_in([0, 0, 1000, 1000])
    assert env.boxes_px == [(0, 0, 300, 200)] and env.calls == 1
