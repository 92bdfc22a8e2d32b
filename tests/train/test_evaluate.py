import json
from itertools import takewhile

import pytest
from PIL import Image

from drim_train.configs import EvalArguments
from drim_train.evaluate import JsonlRows, evaluate, load_rows, summarize, table
from drim_train.models import load_model, load_processor
from drim_train.rewards import RedundancyPenalty, has_image
from drim_train.rollout import Rollout, rollout, tool_suffix_ids
from drim_train.zoom_env import ZoomEnv
from schemas.answers import with_options


@pytest.fixture(scope="module")
def caller(tool_caller):
    return load_model(str(tool_caller)).eval(), load_processor(str(tool_caller))


def test_rollouts_execute_the_tool_and_feed_the_crop_back(caller, demo_version):
    model, processor = caller
    rows, spec = load_rows(str(demo_version), limit=4, split="rl")
    envs = [ZoomEnv(spec) for _ in rows]
    seen = []  # images per forward pass of the vision tower
    hook = model.model.visual.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["grid_thw"].shape[0]), with_kwargs=True
    )
    try:
        rollouts = rollout(model, processor, rows, envs, max_turns=2, max_new_tokens=48)
    finally:
        hook.remove()
    cropped = [r for r in rollouts if len(r.completion) > 2 and has_image(r.completion[1])]
    assert cropped, "no rollout got a crop back"
    for r in cropped:
        assert [m["role"] for m in r.completion[:3]] == ["assistant", "tool", "assistant"]
        crop = r.completion[1]["content"][0]["image"]
        assert spec.min_output_pixels * 0.99 <= crop.width * crop.height <= spec.max_output_pixels
        assert r.env.boxes_px and r.generated_tokens > 0

    # the second turn of each rollout that called was generated from its global view plus the crops it got back
    def first_round_crops(r: Rollout) -> int:
        replies = takewhile(lambda m: m["role"] == "tool", r.completion[1:])
        return sum(has_image(m) for m in replies)

    expected = sum(1 + first_round_crops(r) for r in rollouts if r.completion[0].get("tool_calls"))
    assert seen[0] == len(rows) and seen[1] == expected > len(cropped)


def test_the_turn_limit_cuts_rollouts_that_keep_calling(caller, demo_version):
    model, processor = caller
    rows, spec = load_rows(str(demo_version), limit=4, split="rl")
    rollouts = rollout(model, processor, rows, [ZoomEnv(spec) for _ in rows], max_turns=0, max_new_tokens=48)
    calling = [r for r in rollouts if r.completion[-1].get("tool_calls")]
    assert calling and all(r.cut and r.env.calls == 0 and len(r.completion) == 1 for r in calling)


def test_tool_suffix_closes_the_turn_and_opens_the_next(caller):
    _, processor = caller
    crop = Image.new("RGB", (448, 448))
    reply = {
        "role": "tool",
        "name": "zoom_in",
        "content": [{"type": "image", "image": crop}, {"type": "text", "text": "v"}],
    }
    text = processor.decode(tool_suffix_ids(processor, [reply]))
    assert text.startswith("\n<|im_start|>user\n<tool_response>\n<|vision_start|>")
    assert text.endswith("v\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    grid = processor.image_processor(images=[crop], return_tensors="pt")["image_grid_thw"]
    assert text.count("<|image_pad|>") == int(grid.prod()) // 4


def _rollout(calls: int, boxes: list, final: str | None, errors: int = 0) -> Rollout:
    env = ZoomEnv()
    env.reset(original_image=Image.new("RGB", (100, 100)))
    env.calls, env.boxes_px, env.errors = calls, boxes, ["refused"] * errors
    completion = [{"role": "assistant", "reasoning_content": "t", "content": f"<answer>{final}</answer>"}]
    if final is None:
        completion = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "zoom_in"}}]}]
    return Rollout(completion, env, generated_tokens=10)


def test_summary_numbers():
    rows = [
        {"id": "1", "question_type": "colour", "answer": "A", "checker": "choice", "options": ["x", "y"]},
        {"id": "2", "question_type": "colour", "answer": "A", "checker": "choice", "options": ["x", "y"]},
        {"id": "3", "question_type": "count", "answer": "3", "checker": "number", "options": []},
        {"id": "4", "question_type": "count", "answer": "3", "checker": "number", "options": []},
    ]
    same = (10, 10, 60, 60)
    rollouts = [
        _rollout(2, [same, same], "B"),  # wrong, redundant: -0.125
        _rollout(1, [same], "A"),  # right
        _rollout(3, [same, (0, 0, 100, 100)], "three", errors=1),  # right, one refused call
        _rollout(5, [], None, errors=5),  # cut by the turn limit
    ]
    report = summarize(rollouts, rows, RedundancyPenalty(1.0, 0.5))
    assert report["n"] == 4 and report["accuracy"] == 0.5
    assert report["by_question_type"] == {"colour": {"n": 2, "accuracy": 0.5}, "count": {"n": 2, "accuracy": 0.5}}
    assert report["tool_calls"]["mean"] == 11 / 4 and report["tool_calls"]["mean_valid"] == 5 / 4
    assert report["tool_calls"]["invalid_rate"] == 6 / 11
    assert report["over_turn_rate"] == 0.25
    red = report["redundancy"]
    assert red["mean_penalty"] == pytest.approx(-0.125 / 4) and red["penalised_share"] == 0.25
    assert red["multi_zoom_share"] == 0.5
    assert red["mean_pairwise_iou"] == pytest.approx((1.0 + 0.25) / 2)
    assert [s["correct"] for s in report["samples"]] == [False, True, True, False]
    assert "accuracy" in table(report) and "50.0%" in table(report)


def test_question_with_options_letters_them():
    assert with_options("Colour?", ["red", "blue"]) == "Colour?\nA. red\nB. blue\nAnswer with the option's letter."
    assert with_options("How many?", []) == "How many?"


@pytest.fixture
def vstar(tmp_path):
    Image.new("RGB", (1200, 900), (10, 200, 10)).save(tmp_path / "a.jpg")
    lines = [
        {
            "image": "a.jpg",
            "question": "What colour is the flag?",
            "options": ["red", "green"],
            "answer": "green",
            "category": "direct_attributes",
        },
        {
            "image": "a.jpg",
            "question": "Is the flag left of the pole?",
            "options": ["yes", "no"],
            "answer": "A",
            "question_type": "relative_position",
            "id": "q2",
        },
        {"image": "a.jpg", "question": "What is written on it?", "answer": "drim"},
    ]
    path = tmp_path / "vstar.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_vstar_jsonl_rows(vstar):
    rows = [JsonlRows(vstar)[i] for i in range(3)]
    assert [r["answer"] for r in rows] == ["B", "A", "drim"]
    assert [r["checker"] for r in rows] == ["choice", "choice", "text"]
    assert [r["question_type"] for r in rows] == ["direct_attributes", "relative_position", "all"]
    assert rows[1]["id"] == "q2" and rows[0]["original_image"].size == (1200, 900)
    assert rows[0]["images"][0].size[0] * rows[0]["images"][0].size[1] <= 1280 * 28 * 28
    assert rows[0]["prompt"][1]["content"][1]["text"].endswith("B. green\nAnswer with the option's letter.")


def test_vstar_answers_must_be_an_option(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.jpg")
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"image": "a.jpg", "question": "?", "options": ["x"], "answer": "z"})
    )
    with pytest.raises(ValueError, match="line 1: answer 'z'"):
        JsonlRows(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("source", ["demo_version", "vstar"])
def test_evaluate_writes_a_report(tool_caller, source, tmp_path, request):
    data = str(request.getfixturevalue(source))
    args = EvalArguments(
        data=data,
        split="rl",  # the demo holds no test images out; a benchmark has no splits
        model=str(tool_caller),
        report=str(tmp_path / "r.json"),
        max_turns=2,
        max_new_tokens=48,
        batch_size=4,
    )
    report = evaluate(args)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    expected = 3 if source == "vstar" else len(load_rows(data, split="rl")[0])
    assert report["n"] == expected
    assert report["protocol"]["max_turns"] == 2
    if source == "demo_version":  # the prompts the tool caller was taught on
        assert report["tool_calls"]["mean"] > 0
    assert sum(v["n"] for v in report["by_question_type"].values()) == report["n"]
    assert 0 <= report["accuracy"] <= 1 and len(report["samples"]) == report["n"]
