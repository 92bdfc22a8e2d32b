"""Reading teacher replies: tolerant JSON extraction and checks of each task's structure (pure functions).

Whatever the text or JSON, a reader returns a value or raises ReplyError, never another exception.
"""

from __future__ import annotations

import json
import math
import re

from drim_data.errors import Drop
from schemas.tool import TOOL_NAME

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
QUESTION_KINDS = ("attribute", "text", "count", "spatial", "multi_target")
UNPARSEABLE = "unparseable_reply"


class ReplyError(Drop):
    """A reply that cannot be used: the item (or its part) is dropped with `reason`, e.g. unparseable_reply."""


def parse_json(text: str | None) -> dict:
    """The first JSON object in a reply, tolerating code fences and prose around it."""
    if not text or not isinstance(text, str):
        raise ReplyError(UNPARSEABLE, "empty reply")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = json.JSONDecoder().raw_decode(candidate[start:])
            except (json.JSONDecodeError, RecursionError):  # not JSON, or nested deeper than the parser goes
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):
                return value
            start = candidate.find("{", start + 1)
    raise ReplyError(UNPARSEABLE, f"no JSON object in reply: {text[:120]!r}")


def _box(value: object) -> list[float]:
    """Four finite numbers, as the teacher wrote them: what they mean is its convention's (teacher/boxes.py)."""
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ReplyError(UNPARSEABLE, f"bbox_2d must be four numbers, got {value!r}"[:200])
    return [float(v) for v in value]


def read_objects(doc: dict) -> list[dict]:
    objects = doc.get("objects")
    if not isinstance(objects, list):
        raise ReplyError(UNPARSEABLE, "expected {'objects': [...]}")
    found = []
    for obj in objects:  # a wrong box costs that object, not the tile's other objects
        if isinstance(obj, dict) and isinstance(obj.get("label"), str) and obj["label"].strip():
            try:
                found.append({"label": obj["label"].strip().lower(), "bbox_2d": _box(obj.get("bbox_2d"))})
            except ReplyError:
                continue
    return found


def read_questions(doc: dict) -> list[dict]:
    """Questions with a usable type, text and answer; multiple choice answers become letters."""
    questions = doc.get("questions")
    if not isinstance(questions, list):
        raise ReplyError(UNPARSEABLE, "expected {'questions': [...]}")
    found = []
    for q in questions:
        if not isinstance(q, dict) or q.get("type") not in QUESTION_KINDS:
            continue
        text, answer, options = q.get("question"), q.get("answer"), q.get("options") or []
        if not isinstance(text, str) or len(text) < 10 or not isinstance(answer, str | int | float):
            continue
        if not isinstance(options, list) or not all(isinstance(o, str | int | float) for o in options):
            continue
        answer = str(answer).strip()
        if options:
            options = [str(o).strip() for o in options]
            if len(options) != 4 or len(set(options)) != 4 or answer not in options + list("ABCD"):
                continue
            answer = answer if answer in "ABCD" and len(answer) == 1 else "ABCD"[options.index(answer)]
            checker = "choice"
        else:
            checker = "number" if re.fullmatch(r"-?\d+(\.\d+)?", answer) else "text"
        found.append(
            {"type": q["type"], "question": text.strip(), "options": options, "answer": answer, "checker": checker}
        )
    return found


def read_answer(doc: dict) -> str:
    answer = doc.get("answer")
    if not isinstance(answer, str | int | float) or str(answer).strip() == "":
        raise ReplyError(UNPARSEABLE, "expected {'answer': ...}")
    return str(answer).strip()


def read_tool_call(content: str | None, tool_calls: list[dict]) -> list[float] | None:
    """The zoom box of a reply's tool call (OpenAI tool_calls or a <tool_call> block), or None if it answers."""
    raw = None
    if tool_calls:
        first = tool_calls[0] if isinstance(tool_calls, list) else None
        function = first.get("function") if isinstance(first, dict) else None
        if not isinstance(function, dict):
            raise ReplyError("malformed_tool_call", "a tool call without a function")
        raw = {"name": function.get("name"), "arguments": function.get("arguments")}
    elif content and (match := _TOOL_CALL.search(content)):
        try:
            raw = json.loads(match.group(1))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ReplyError("malformed_tool_call", f"tool call is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ReplyError("malformed_tool_call", "a tool call must be a JSON object")
    if raw is None:
        return None
    if raw.get("name") != TOOL_NAME:
        raise ReplyError("malformed_tool_call", f"unknown tool {raw.get('name')!r}"[:200])
    arguments = raw.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            raise ReplyError("malformed_tool_call", "tool arguments are not JSON") from None
    if not isinstance(arguments, dict):
        raise ReplyError("malformed_tool_call", "tool arguments must be an object")
    try:
        return _box(arguments.get("bbox_2d"))
    except ReplyError as exc:
        raise ReplyError("malformed_tool_call", exc.detail) from None


def read_name(doc: dict) -> dict:
    """{"reject": why} for a region that holds no object; else its class, whether it is one whole object and what
    tells it apart. A reply that names no class (or calls it just an object) is unusable, not a rejection."""
    reject = doc.get("reject")
    if isinstance(reject, str) and reject.strip():
        return {"reject": reject.strip()[:200]}
    whole, label, description = doc.get("whole"), doc.get("label"), doc.get("description") or ""
    if not isinstance(whole, bool):
        raise ReplyError(UNPARSEABLE, "expected 'whole': true|false, or the reason in 'reject'")
    if not isinstance(label, str) or not label.strip() or label.strip().lower() in ("object", "thing", "unknown"):
        raise ReplyError(UNPARSEABLE, f"'label' must name the object's class, got {label!r}"[:200])
    if len(label.split()) > 4 or not isinstance(description, str):
        raise ReplyError(UNPARSEABLE, "'label' is one to three words and 'description' a short text")
    return {"label": label.strip().lower(), "whole": whole, "description": description.strip()[:200]}
