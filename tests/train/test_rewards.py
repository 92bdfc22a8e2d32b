import pytest
from PIL import Image

from drim_train.rewards import (
    RedundancyPenalty,
    accuracy_reward,
    boxes_from_completion,
    format_reward,
    tool_reward,
    well_formed_call,
)
from drim_train.zoom_env import ZoomEnv


def call(*boxes, think="Too small; zoom in."):
    calls = [{"type": "function", "function": {"name": "zoom_in", "arguments": {"bbox_2d": list(b)}}} for b in boxes]
    return {"role": "assistant", "reasoning_content": think, "content": "", "tool_calls": calls}


def crop():
    return {
        "role": "tool",
        "name": "zoom_in",
        "content": [{"type": "image", "image": None}, {"type": "text", "text": "view"}],
    }


def refused():
    return {"role": "tool", "name": "zoom_in", "content": [{"type": "text", "text": "Error: box is too small."}]}


def answer(text, think="It is clear now."):
    return {"role": "assistant", "reasoning_content": think, "content": f"<answer>{text}</answer>"}


def zooms(*boxes, final="A"):
    """A trajectory that zooms into each box (one call per turn), each answered with a crop, then answers."""
    messages = [m for b in boxes for m in (call(b), crop())]
    return messages + [answer(final)]


# --- the penalty itself ---------------------------------------------------------------------------------------


# Boxes with pairwise IoUs of exactly 0.9, 0.8 and 0.85: A the whole image, B its top 90 %, C = [0, 0, w, h]
# with w·h = 0.8 (IoU with A) and 0.9·w / (0.9 + 0.8 − 0.9·w) = 0.85 (IoU with B, as h > 0.9).
W = 0.85 * 1.7 / (0.9 + 0.85 * 0.9)
WORKED = [[0, 0, 1, 1], [0, 0, 1, 0.9], [0, 0, W, 0.8 / W]]


def test_worked_example_boxes_have_the_published_ious():
    from schemas.tool import iou

    a, b, c = WORKED
    assert [iou(a, b), iou(a, c), iou(b, c)] == [pytest.approx(0.9), pytest.approx(0.8), pytest.approx(0.85)]


def test_worked_example_from_method():
    """λ=1, ε=0.5, pairwise IoU 0.9, 0.8, 0.85: Γ = −(0.4 + 0.3 + 0.35) / 9 = −0.1167."""
    assert RedundancyPenalty(lam=1.0, eps=0.5).penalty(WORKED) == pytest.approx(-1.05 / 9)
    assert round(RedundancyPenalty(lam=1.0, eps=0.5).penalty(WORKED), 4) == -0.1167


def test_worked_example_through_the_reward():
    """The same value from a wrong three-zoom trajectory whose boxes are on the 0..1000 grid."""
    grid = [[1000 * v for v in box] for box in WORKED]
    reward = RedundancyPenalty(lam=1.0, eps=0.5)([zooms(*grid, final="B")], answer=["A"], checker=["choice"])
    assert round(reward[0], 4) == -0.1167
    assert RedundancyPenalty(lam=1.0, eps=0.5)([zooms(*grid, final="A")], answer=["A"], checker=["choice"]) == [0.0]


@pytest.mark.parametrize(
    ("boxes", "lam", "eps", "expected"),
    [
        ([], 1.0, 0.5, 0.0),  # T = 0
        ([[0, 0, 0.5, 0.5]], 1.0, 0.5, 0.0),  # T = 1
        ([[0, 0, 0.5, 0.5]] * 2, 1.0, 0.5, -0.125),  # identical pair: (1 - 0.5) / 4
        ([[0, 0, 0.5, 0.5]] * 3, 1.0, 0.5, -1.5 / 9),  # three identical: 3 pairs
        ([[0, 0, 0.5, 0.5]] * 2, 2.0, 0.5, -0.25),  # λ scales linearly
        ([[0, 0, 0.5, 0.5]] * 2, 1.0, 1.0, 0.0),  # ε = 1 forgives everything
        ([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], 1.0, 0.0, 0.0),  # disjoint boxes never cost
        ([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0, 0, 0.25, 0.25]], 1.0, 0.5, 0.0),  # crops of crops at 2x: IoU 0.25
        ([[0.1, 0.1, 0.5, 0.5], [0.12, 0.12, 0.5, 0.5]], 1.0, 0.5, -(0.38**2 / 0.4**2 - 0.5) / 4),  # nested jitter
        ([[0, 0, 0, 0.5], [0, 0, 0, 0.5]], 1.0, 0.0, 0.0),  # degenerate boxes: IoU 0
    ],
)
def test_penalty_table(boxes, lam, eps, expected):
    assert RedundancyPenalty(lam, eps).penalty(boxes) == pytest.approx(expected)


@pytest.mark.parametrize("t", [2, 3, 5, 10, 30])
def test_penalty_is_bounded_by_half_lambda(t):
    value = RedundancyPenalty(lam=1.0, eps=0.0).penalty([[0, 0, 1, 1]] * t)
    assert value == pytest.approx(-(t - 1) / (2 * t))
    assert -0.5 < value < 0


# --- the penalty as a reward -----------------------------------------------------------------------------------

SAME = (100, 100, 500, 500)
OTHER = (600, 600, 900, 900)


@pytest.mark.parametrize(
    ("completion", "answer_", "expected"),
    [
        ([answer("B")], "A", 0.0),  # wrong, T = 0
        (zooms(SAME, final="B"), "A", 0.0),  # wrong, T = 1
        (zooms(SAME, SAME, final="B"), "A", -0.125),  # wrong, T = 2, same box twice
        (zooms(SAME, SAME, final="A"), "A", 0.0),  # right answers are never penalised
        (zooms(SAME, OTHER, final="B"), "A", 0.0),  # wrong but explored elsewhere
        ([call(SAME), crop(), call(SAME), refused(), answer("B")], "A", 0.0),  # refused call not in T -> T = 1
        ([call(SAME), crop(), call((0, 0, 1, 1)), refused(), call(SAME), crop(), answer("B")], "A", -0.125),
        ([call(SAME, SAME), crop(), crop(), answer("B")], "A", -0.125),  # two calls in one turn count too
        ([call(SAME), crop(), call(SAME), crop(), call(SAME)], "A", -0.125),  # cut: the last call never ran
    ],
)
def test_redundancy_reward_table(completion, answer_, expected):
    reward = RedundancyPenalty(lam=1.0, eps=0.5)([completion], answer=[answer_], checker=["choice"])
    assert reward == [pytest.approx(expected)]


def test_redundancy_reads_the_environment_boxes_when_given():
    """With environments, the executed (clamped, pixel) boxes decide; a refused call leaves no box."""
    env = ZoomEnv()
    env.reset(original_image=Image.new("RGB", (1000, 800)))
    env.zoom_in([100, 100, 500, 500])
    env.zoom_in([100, 100, 500, 500])
    env.zoom_in([100, 100, 101, 101])  # 1 px: refused
    completion = [call(SAME), crop(), call(SAME), crop(), call((100, 100, 101, 101)), refused(), answer("B")]
    penalty = RedundancyPenalty(lam=1.0, eps=0.5)
    assert env.invalid_calls == 1 and len(env.boxes_norm) == 2
    assert penalty([completion], answer=["A"], checker=["choice"], environments=[env]) == [pytest.approx(-0.125)]


@pytest.mark.parametrize(
    ("completion", "answer_", "expected"),
    [
        (zooms(SAME, final="A"), "A", 1.0),  # right, through a zoom
        (zooms(SAME, OTHER, final="A"), "A", 1.0),  # paid once, however many zooms
        ([answer("A")], "A", 0.0),  # right without zooming: accuracy pays it, the bonus does not
        (zooms(SAME, final="B"), "A", 0.0),  # a zoom that led to a wrong answer
        ([call(SAME), refused(), answer("A")], "A", 0.0),  # a refused call is no zoom
        ([call(SAME), crop(), call(SAME)], "A", 0.0),  # cut while zooming: no answer
    ],
)
def test_tool_bonus_pays_right_answers_reached_by_zooming(completion, answer_, expected):
    assert tool_reward([completion], answer=[answer_], checker=["choice"]) == [expected]


def test_tool_bonus_reads_the_environment_when_given():
    """With environments, a zoom counts when the environment returned a crop for it."""
    env = ZoomEnv()
    env.reset(original_image=Image.new("RGB", (1000, 800)))
    env.zoom_in([100, 100, 101, 101])  # refused
    completion = zooms(SAME, final="A")
    assert tool_reward([completion], answer=["A"], checker=["choice"], environments=[env]) == [0.0]
    env.zoom_in([100, 100, 500, 500])
    assert tool_reward([completion], answer=["A"], checker=["choice"], environments=[env]) == [1.0]


def test_boxes_from_completion_normalises_and_orders_corners():
    completion = [call((500, 800, 100, 200)), crop(), call((-50, 0, 1200, 1000)), crop(), answer("A")]
    assert boxes_from_completion(completion) == [[0.1, 0.2, 0.5, 0.8], [0.0, 0.0, 1.0, 1.0]]


def test_reward_is_picklable_and_named():
    import pickle

    penalty = pickle.loads(pickle.dumps(RedundancyPenalty(lam=0.3, eps=0.2)))
    assert (penalty.__name__, penalty.lam, penalty.eps) == ("redundancy_penalty", 0.3, 0.2)


# --- accuracy and format ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("final", "answer_", "checker", "options", "expected"),
    [
        ("B", "B", "choice", ["red", "blue"], 1.0),
        ("(B)", "B", "choice", ["red", "blue"], 1.0),
        ("b. blue", "B", "choice", ["red", "blue"], 1.0),
        ("blue", "B", "choice", ["red", "blue"], 1.0),  # the option's text counts as the option
        ("Blue!", "B", "choice", ["red", "blue"], 1.0),
        ("red", "B", "choice", ["red", "blue"], 0.0),
        ("A", "B", "choice", ["red", "blue"], 0.0),
        ("seven", "7", "number", [], 1.0),
        ("7.0", "7", "number", [], 1.0),
        ("about 8", "7", "number", [], 0.0),
        ("The Red Car.", "red car", "text", [], 1.0),
        ("a red car parked", "red car", "text", [], 0.0),
    ],
)
def test_accuracy_table(final, answer_, checker, options, expected):
    assert accuracy_reward([[answer(final)]], answer=[answer_], checker=[checker], options=[options]) == [expected]


@pytest.mark.parametrize(
    "completion",
    [
        [{"role": "assistant", "content": "B"}],  # no <answer> block
        [call(SAME)],  # cut while zooming
        [call(SAME), crop(), {"role": "assistant", "content": "<answer>B</answer>", "tool_calls": [{}]}],
        [],
    ],
)
def test_accuracy_without_a_final_answer_is_zero(completion):
    assert accuracy_reward([completion], answer=["B"], checker=["choice"]) == [0.0]


def test_accuracy_reads_unparsed_think_blocks_and_plain_strings():
    unparsed = [{"role": "assistant", "content": "<think>hmm</think>\n<answer>B</answer>"}]
    assert accuracy_reward([unparsed, "<answer>B</answer>"], answer=["B", "B"], checker=["choice"] * 2) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (zooms(SAME), 1.0),
        (zooms(SAME, OTHER, SAME), 1.0),
        ([answer("A")], 1.0),  # answering without zooming is well-formed
        ([{"role": "assistant", "content": "<think>a</think>\n<answer>A</answer>"}], 1.0),  # not parsed yet
        ([answer("A", think="")], 0.0),  # no thinking
        ([call(SAME, think=""), crop(), answer("A")], 0.0),
        ([call(SAME), refused(), answer("A")], 0.0),  # a refused call
        ([call(SAME), {"role": "tool", "name": "zoom_in", "content": "{'error': 'bad'}"}, answer("A")], 0.0),
        ([{"role": "assistant", "content": '<think>a</think>\n<tool_call>\n{"name": "zoom_in", "arg'}], 0.0),
        ([call(SAME), crop()], 0.0),  # ends without an answer
        ([call(SAME), crop(), call(SAME)], 0.0),  # cut by the turn limit
        ([{"role": "assistant", "reasoning_content": "a", "content": "<answer>A</answer> and more"}], 0.0),
        ([call((1, 2, 3))], 0.0),
    ],
)
def test_format_table(completion, expected):
    assert format_reward([completion]) == [expected]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (call(SAME), True),
        (call((1.5, 2, 3, 4.25)), True),
        (
            {
                **call(SAME),
                "tool_calls": [
                    {"type": "function", "function": {"name": "zoom_in", "arguments": '{"bbox_2d": [1, 2, 3, 4]}'}}
                ],
            },
            True,
        ),
        (call((1, 2, 3)), False),
        (call(("1", 2, 3, 4)), False),
        (call((True, 2, 3, 4)), False),
        (
            {
                **call(SAME),
                "tool_calls": [
                    {"type": "function", "function": {"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}}
                ],
            },
            False,
        ),
        (
            {**call(SAME), "tool_calls": [{"type": "function", "function": {"name": "zoom_in", "arguments": "{bad"}}]},
            False,
        ),
        ({**call(SAME), "content": "<answer>A</answer>"}, False),
        (call(SAME, think=""), False),
        (answer("A"), False),
    ],
)
def test_well_formed_call_table(message, expected):
    assert well_formed_call(message) is expected


def test_rewards_handle_a_batch_in_order():
    completions = [zooms(SAME, SAME, final="B"), zooms(SAME, final="A"), [answer("B", think="")]]
    kwargs = {"answer": ["A", "A", "B"], "checker": ["choice"] * 3}
    assert accuracy_reward(completions, **kwargs) == [0.0, 1.0, 1.0]
    assert format_reward(completions, **kwargs) == [1.0, 1.0, 0.0]
    assert RedundancyPenalty()(completions, **kwargs) == [pytest.approx(-0.125), 0.0, 0.0]
