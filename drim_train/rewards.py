"""Rewards in TRL's signature `(completions, **columns) -> list[float]`, shared by GRPO and evaluation.

A completion is TRL's conversational rollout: the parsed assistant turns (`reasoning_content` holds the `<think>`
block, `tool_calls` the parsed calls, `content` the rest) interleaved with the tool's replies. Dataset columns
(`answer`, `checker`, `options`) arrive as keyword lists, and GRPO passes the rollouts' `environments`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import combinations

from schemas.answers import extract_answer, is_correct, normalise_text, parse_choice
from schemas.tool import GRID, TOOL_NAME, iou

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)
_ANSWER_ONLY = re.compile(r"^\s*<answer>.+?</answer>\s*$", re.DOTALL)


def text_of(content: object) -> str:
    """Message content as text, whether a string or a list of content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(b.get("text") or "" for b in content if isinstance(b, dict) and b.get("type") == "text")


def split_think(message: dict) -> tuple[str, str]:
    """(thinking, rest) of an assistant message, whether the parser already split the `<think>` block off or not."""
    content = text_of(message.get("content"))
    if message.get("reasoning_content"):
        return message["reasoning_content"], content
    match = _THINK.match(content)
    return (match.group(1), match.group(2)) if match else ("", content)


def has_image(message: dict) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "image" for b in content)


def cut_by_turn_limit(completion: list[dict]) -> bool:
    """The rollout still wanted to zoom when the loop stopped (turn limit or length budget): it never answered."""
    return bool(completion) and completion[-1].get("role") == "assistant" and bool(completion[-1].get("tool_calls"))


def final_answer(completion: list[dict] | str) -> str | None:
    """The `<answer>` of the trajectory's last turn, or None when it ended without one (e.g. cut while zooming)."""
    if isinstance(completion, str):
        return extract_answer(completion)
    if not completion or completion[-1].get("role") != "assistant" or cut_by_turn_limit(completion):
        return None
    return extract_answer(split_think(completion[-1])[1])


def answer_correct(predicted: str | None, answer: str, checker: str, options: Sequence[str] | None = None) -> bool:
    """The shared checker, plus: a multiple-choice answer given as the option's text counts as that option."""
    if is_correct(checker, predicted, answer):
        return True
    if checker == "choice" and predicted is not None and options and parse_choice(predicted) is None:
        index = ord(answer.strip().upper()) - ord("A")
        return 0 <= index < len(options) and normalise_text(predicted) == normalise_text(options[index])
    return False


def _column(values: Sequence | None, n: int) -> list:
    return list(values) if values is not None else [None] * n


def accuracy_reward(
    completions: list, answer: list[str], checker: list[str], options: list | None = None, **kwargs
) -> list[float]:
    """R_acc: 1.0 when the final `<answer>` matches the reference under the row's checker, else 0.0.

    Multiple choice accepts the letter or the option's text; numbers and short texts are normalised first.
    """
    options = _column(options, len(completions))
    return [
        float(answer_correct(final_answer(c), a, k, o))
        for c, a, k, o in zip(completions, answer, checker, options, strict=True)
    ]


def well_formed_call(message: dict) -> bool:
    """An assistant turn that thinks, then calls zoom_in with a four-number `bbox_2d` and gives no answer yet."""
    calls = message.get("tool_calls") or []
    think, rest = split_think(message)
    if message.get("role") != "assistant" or not calls or not think.strip() or "<answer>" in rest:
        return False
    for call in calls:
        function = call.get("function", call)
        args = function.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return False
        box = args.get("bbox_2d") if isinstance(args, dict) else None
        if function.get("name") != TOOL_NAME or not isinstance(box, list) or len(box) != 4:
            return False
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            return False
    return True


def _well_formed_answer(message: dict) -> bool:
    think, rest = split_think(message)
    return not message.get("tool_calls") and bool(think.strip()) and bool(_ANSWER_ONLY.match(rest))


def well_formed(completion: list[dict]) -> bool:
    """Every assistant turn is a think block plus well-formed zoom calls, each answered with a crop, and the last
    turn is a think block plus the final `<answer>`."""
    if not completion or completion[-1].get("role") != "assistant" or not _well_formed_answer(completion[-1]):
        return False
    for message in completion[:-1]:
        if message.get("role") == "assistant" and not well_formed_call(message):
            return False
        if message.get("role") == "tool" and not has_image(message):  # a refused or failed call
            return False
    return True


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 for a well-formed trajectory (see `well_formed`), else 0.0. Refused tool calls make it 0."""
    return [float(not isinstance(c, str) and well_formed(c)) for c in completions]


def boxes_from_completion(completion: list[dict]) -> list[list[float]]:
    """Normalised boxes of the calls that returned a crop, read from the rollout itself (no environment needed).

    Grid coordinates are over the original image, so `bbox_2d / GRID` is already normalised to it."""
    calls = [c for m in completion if m.get("role") == "assistant" for c in (m.get("tool_calls") or [])]
    replies = [m for m in completion if m.get("role") == "tool"]
    boxes = []
    for call, reply in zip(calls, replies, strict=False):
        if not has_image(reply):
            continue
        args = call.get("function", call).get("arguments")
        args = json.loads(args) if isinstance(args, str) else args
        x1, y1, x2, y2 = (min(max(float(v) / GRID, 0.0), 1.0) for v in args["bbox_2d"])
        boxes.append([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
    return boxes


def graded(
    completions: list, answer: list[str], checker: list[str], options: list | None, environments: list | None
) -> list[tuple[bool, list[list[float]]]]:
    """Each rollout's (right answer?, normalised boxes of its accepted zooms): the executed boxes of its environment
    where GRPO passes one, else those read from the rollout. The rewards that weigh zooms read them here."""
    correct = accuracy_reward(completions, answer, checker, options)
    environments = _column(environments, len(completions))
    return [
        (bool(right), env.boxes_norm if env is not None else boxes_from_completion(completion))
        for completion, right, env in zip(completions, correct, environments, strict=True)
    ]


def tool_reward(
    completions: list,
    answer: list[str],
    checker: list[str],
    options: list | None = None,
    environments: list | None = None,
    **kwargs,
) -> list[float]:
    """DeepEyes's tool bonus: 1.0 for a correct answer reached through at least one zoom that returned a crop, else
    0.0. With accuracy alone, a policy that answers a readable question without zooming is paid in full; the bonus
    pays the search itself, but only where it led to the right answer: a zoom before a wrong answer earns nothing."""
    return [
        float(right and bool(boxes)) for right, boxes in graded(completions, answer, checker, options, environments)
    ]


class RedundancyPenalty:
    r"""DRIM's redundancy penalty on wrong answers that zoomed more than once.

    Γ = -λ / T² · Σ_{t<t'} max(0, IoU(b_t, b_t') - ε), over the T accepted zooms of the trajectory, boxes normalised
    to the original image; added only when R_acc = 0 and T > 1, so it lies in (-λ/2, 0].

    Defaults: λ = 1.0 makes the worst jitter cost at most half a correct answer, so a wrong answer that explored
    stays preferred to one that circled, while no wrong answer ever outranks a right one; ε = 0.5 is the IoU at
    which two views show mostly the same pixels, so zooming into a half-overlapping or nested region (a crop of a
    crop at 2x or more) costs nothing, whereas re-requesting nearly the same box does.

    Refused calls do not count in T: they produced no view to be redundant with, and counting them would grow
    T² and so shrink the penalty of a trajectory that wasted turns. The format reward handles them.

    >>> RedundancyPenalty(lam=1.0, eps=0.5).penalty([[0, 0, .5, .5], [0, 0, .5, .5]])
    -0.125
    """

    __name__ = "redundancy_penalty"

    def __init__(self, lam: float = 1.0, eps: float = 0.5):
        self.lam = lam
        self.eps = eps

    def penalty(self, boxes: Sequence[Sequence[float]]) -> float:
        """Γ for a list of boxes, whatever the answer."""
        t = len(boxes)
        if t < 2:
            return 0.0
        excess = sum(max(0.0, iou(a, b) - self.eps) for a, b in combinations(boxes, 2))
        return -self.lam * excess / t**2

    def __call__(
        self,
        completions: list,
        answer: list[str],
        checker: list[str],
        options: list | None = None,
        environments: list | None = None,
        **kwargs,
    ) -> list[float]:
        return [
            0.0 if right else self.penalty(boxes)
            for right, boxes in graded(completions, answer, checker, options, environments)
        ]
