"""Answer formats and their machine checkers, shared by data verification and training rewards."""

from __future__ import annotations

import re
import string
from typing import Literal

Checker = Literal["choice", "number", "text"]
CHECKERS: tuple[str, ...] = ("choice", "number", "text")

LETTERS = string.ascii_uppercase  # options are lettered A, B, C, ...
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}
_ARTICLES = {"a", "an", "the"}


def with_options(question: str, options: list[str]) -> str:
    """The question as the model reads it: lettered options and how to answer, when there are options."""
    if not options:
        return question
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{question}\n{lines}\nAnswer with the option's letter."


def extract_answer(text: str) -> str | None:
    """The content of the last <answer>...</answer> block, or None when there is none."""
    found = _ANSWER.findall(text or "")
    return found[-1].strip() if found else None


def normalise_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def parse_choice(text: str) -> str | None:
    """'B', '(B)', 'B. red' or 'Option B' -> 'B'."""
    match = re.match(r"^\s*(?:option\s+)?\(?([A-Z])\)?(?:[.:)\s]|$)", text.strip(), re.IGNORECASE)
    return match.group(1).upper() if match else None


def parse_number(text: str) -> float | None:
    """'7', '7.0', 'seven' or 'about 7 trees' -> 7.0."""
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    if match:
        return float(match.group())
    for word in normalise_text(text).split():
        if word in _WORDS:
            return float(_WORDS[word])
    return None


def is_correct(checker: str, predicted: str | None, answer: str) -> bool:
    """Whether a predicted answer matches the reference under the row's checker."""
    if predicted is None:
        return False
    if checker == "choice":
        return parse_choice(predicted) == answer.strip().upper()
    if checker == "number":
        value = parse_number(predicted)
        return value is not None and value == float(answer)
    if checker == "text":
        return normalise_text(predicted) == normalise_text(answer)
    raise ValueError(f"unknown checker {checker!r}; expected one of {CHECKERS}")
