"""Both model families, each with the chat template a real checkpoint of it gets: Qwen2.5-VL (drim's tool-calling
template, boxes in pixels of its resized input) and Qwen3-VL (its own template, boxes on the 0..1000 grid)."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw
from transformers.utils import get_json_schema
from trl.chat_template_utils import is_chat_template_prefix_preserving, supports_tool_calling

from drim_train.collator import ZoomSFTCollator
from drim_train.data import load_split
from drim_train.families import PixelFrame, family_of, in_pixels
from drim_train.models import load_processor, model_family
from drim_train.zoom_env import PixelZoomEnv, ZoomEnv
from schemas.tool import PIXEL_ARG, ZOOM, global_view, global_view_size, iou, tool_call

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
QWEN2_5_VL_7B = PixelFrame(28, 4 * 28 * 28, 16384 * 28 * 28)  # the 7B's preprocessor_config.json


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    from drim_train.tiny_model import build_tiny_model

    return request.param, build_tiny_model(tmp_path_factory.mktemp("models") / request.param, family=request.param)


def test_the_family_comes_from_the_checkpoint(family_model):
    family, path = family_model
    assert model_family(str(path)).model_type == family
    assert family_of("llava") is family_of("qwen3_vl")  # other VLMs keep their own template and the grid


def test_the_template_renders_tools_and_appends_replies(family_model):
    processor = load_processor(str(family_model[1]))
    assert supports_tool_calling(processor) and is_chat_template_prefix_preserving(processor)


def test_checkpoints_record_the_standard_processor(family_model):
    """`AutoProcessor` rebuilds the standard class where torchvision is installed, and refuses without it; it never
    falls back to a bare tokenizer."""
    from transformers import AutoProcessor

    family, path = family_model
    standard = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[family]
    assert json.loads((path / "processor_config.json").read_text())["processor_class"] == standard
    assert (path / "video_preprocessor_config.json").exists()
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            AutoProcessor.from_pretrained(path)
    else:
        assert type(AutoProcessor.from_pretrained(path)).__name__ == standard
    assert load_processor(str(path)).image_processor is not None  # drim loads it either way


def test_the_pixel_tool_schema_is_the_shared_spec():
    assert get_json_schema(PixelZoomEnv.zoom_in) == ZOOM.schema(PIXEL_ARG)
    assert get_json_schema(ZoomEnv.zoom_in) == ZOOM.schema()


def _zoom_calls(text: str) -> int:
    return text.count('"name": "zoom_in"')


def test_sft_trains_every_zoom_call(family_model, synthetic, demo_version, record_property):
    """Every stored call is in the label-unmasked tokens, in the family's convention, on both versions."""
    family, path = family_model
    processor = load_processor(str(path))
    frame = family_of(family).frame(processor)
    collator = ZoomSFTCollator(processor, tools=[ZOOM.schema(family_of(family).box_arg)], frame=frame)
    for version in (synthetic, demo_version):
        rows = load_split(version, "sft")
        stored = sum(len(m["tool_calls"] or []) for row in rows for m in row["messages"])
        trained = 0
        for start in range(0, len(rows), 8):
            batch = collator([rows[i] for i in range(start, min(start + 8, len(rows)))])
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
                trained += _zoom_calls(processor.tokenizer.decode(ids[labels != -100]))
        record_property(f"{family}/{version.parent.name}", f"{trained} zoom calls trained of {stored} stored")
        assert stored > 0 and trained == stored


def _scene(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    for i in range(0, width, 37):
        draw.line((i, 0, width - i, height), fill=(i % 255, 40, 200))
    return image


@pytest.mark.parametrize("size", [(4000, 3000), (1280, 720), (448, 336), (3000, 500)])
@pytest.mark.parametrize("frame", [QWEN2_5_VL_7B, PixelFrame(28, 56 * 56, 32 * 28 * 28)], ids=["7b", "tiny"])
def test_a_pixel_call_lands_on_the_grid_calls_crop(size, frame):
    """The stored box rendered in Qwen2.5-VL's pixels and parsed back by its environment crops the original where
    the same box on Qwen3-VL's grid does, up to half a pixel of the resized view (and one of rounding)."""
    original = _scene(*size)
    view = global_view(original, global_view_size(*size))
    grid_env, pixel_env = ZoomEnv(), PixelZoomEnv(frame)
    grid_env.reset(original, images=[view])
    pixel_env.reset(original, images=[view])
    boxes = [[100, 200, 300, 400], [0, 0, 1000, 1000], [512, 498, 561, 777], [903, 13, 997, 205]]
    for grid in boxes:
        grid_env.zoom_in(grid)
        pixel_env.zoom_in(frame.from_grid(grid, view.size))
    assert len(grid_env.errors) == len(pixel_env.errors)  # a too small box is refused in either convention
    assert len(grid_env.boxes_px) >= 3
    resized_width, resized_height = frame.size(view.size)
    slack = (0.5 * size[0] / resized_width + 1, 0.5 * size[1] / resized_height + 1)
    for a, b in zip(grid_env.boxes_px, pixel_env.boxes_px, strict=True):
        assert all(abs(p - q) <= slack[i % 2] for i, (p, q) in enumerate(zip(a, b, strict=True))), (a, b)
        assert iou(a, b) > 0.9
        if a == b:
            assert grid_env.spec.crop(original, a).tobytes() == pixel_env.spec.crop(original, b).tobytes()


def test_a_stored_sft_call_in_pixels_crops_the_stored_box(synthetic):
    """A row's call rendered for Qwen2.5-VL and executed by its environment gives the row's own zoom box."""
    frame = PixelFrame(28, 56 * 56, 32 * 28 * 28)
    rows = load_split(synthetic, "rl")
    sft = load_split(synthetic, "sft")
    for row, stored in zip(rows, sft, strict=False):  # row i of either split shows the same scene
        messages = in_pixels(stored["messages"], frame, stored["images"][0].size)
        call = next(m for m in messages if m.get("tool_calls"))["tool_calls"][0]
        env = PixelZoomEnv(frame)
        env.reset(row["images"][0], images=stored["images"][:1])
        env.zoom_in(**json.loads(call["function"]["arguments"]))
        (box,) = env.boxes_px
        assert iou(box, stored["zoom_boxes_px"][0]) > 0.85
        # the system prompt and the tool reply say the same convention and box as the call
        assert "in pixels of the whole image as you see it" in messages[0]["content"][0]["text"]
        bbox = json.loads(call["function"]["arguments"])["bbox_2d"]
        assert str(bbox) in next(m for m in messages if m["role"] == "tool")["content"][-1]["text"]


def test_only_stored_calls_change():
    frame = PixelFrame(28, 56 * 56, 32 * 28 * 28)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Q"}], "tool_calls": None},
        {"role": "assistant", "content": [{"type": "text", "text": "t"}], "tool_calls": [tool_call([0, 0, 500, 500])]},
    ]
    out = in_pixels(messages, frame, (200, 150))
    assert out[0] == messages[0]
    w, h = frame.size((200, 150))
    assert json.loads(out[1]["tool_calls"][0]["function"]["arguments"])["bbox_2d"] == [
        0,
        0,
        round(w / 2),
        round(h / 2),
    ]


@pytest.mark.slow
def test_sft_then_grpo_with_the_tool_loop_then_eval(family_model, synthetic, tmp_path, monkeypatch):
    """Each family end to end on the synthetic version: SFT teaches the call, GRPO executes it in its convention
    for a couple of steps, evaluation rolls out, and every checkpoint reloads with its processor."""
    from drim_train import grpo, sft
    from drim_train.configs import DataModelArguments, DrimGRPOConfig, DrimSFTConfig, EvalArguments
    from drim_train.evaluate import evaluate
    from tests.train.helpers import parse_recipe

    family, path = family_model
    args, config = parse_recipe(
        "sft-tiny.yaml", (DataModelArguments, DrimSFTConfig), data=synthetic, model=path, output_dir=tmp_path / "sft"
    )
    sft.main(args, config)
    executed = []
    monkeypatch.setattr(ZoomEnv, "_zoom", _recording(ZoomEnv._zoom, executed))
    args, config = parse_recipe(
        "grpo-tiny.yaml",
        (DataModelArguments, DrimGRPOConfig),
        data=synthetic,
        model=tmp_path / "sft",
        output_dir=tmp_path / "grpo",
        max_steps=2,
    )
    trainer = grpo.main(args, config)
    assert executed, "GRPO executed no zoom call"
    assert all(type(env) is (PixelZoomEnv if family == "qwen2_5_vl" else ZoomEnv) for env, _ in executed)
    assert any(h.get("tools/call_frequency", 0) > 0 for h in trainer.state.log_history)
    reports = {
        checkpoint: evaluate(
            EvalArguments(str(synthetic), str(tmp_path / checkpoint), str(tmp_path / f"{checkpoint}.json"), limit=4)
        )
        for checkpoint in ("sft", "grpo")
    }
    assert reports["grpo"]["n"] == 4
    assert reports["sft"]["tool_calls"]["mean_valid"] > 0  # greedy, the SFT policy zooms in the family's convention
    for checkpoint in ("sft", "grpo"):
        processor = load_processor(str(tmp_path / checkpoint))
        assert supports_tool_calling(processor) and model_family(str(tmp_path / checkpoint)).model_type == family


def _recording(zoom, executed: list):
    def recorded(env, bbox_2d, grid_box):
        executed.append((env, bbox_2d))
        return zoom(env, bbox_2d, grid_box)

    return recorded
