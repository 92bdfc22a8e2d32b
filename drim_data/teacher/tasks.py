"""What drim asks a model teacher, and how the replies are read: each task is one prompt file and one reader.

A reply that does not parse gets one repair request (shown its error); a refusal or a second bad reply raises
ReplyError, a Drop whose reason says which it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from PIL import Image

from drim_data.teacher.boxes import Frame
from drim_data.teacher.client import Answer, Teacher, sent_size
from drim_data.teacher.prompt_files import load_prompt
from drim_data.teacher.replies import (
    UNPARSEABLE,
    ReplyError,
    parse_json,
    read_answer,
    read_name,
    read_objects,
    read_questions,
    read_tool_call,
)
from schemas.answers import extract_answer
from schemas.geometry import GRID
from schemas.tool import TOOL_NAME, ZOOM, ZoomError, observation_text, system_prompt

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)

WHOLE_GRID = (0, 0, GRID, GRID)  # a trajectory's view shows the whole image: its zooms go to the grid over it
_BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
SCHEMAS: dict[str, dict] = {
    "ground": {
        "type": "object",
        "properties": {
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"label": {"type": "string"}, "bbox_2d": _BOX},
                    "required": ["label", "bbox_2d"],
                },
            }
        },
        "required": ["objects"],
    },
    "questions": {
        "type": "object",
        "properties": {
            "referent": {"type": "string"},  # the teacher's own name for the object, used in every question
            "questions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "question": {"type": "string"},
                        "options": {"type": "array", "items": {"type": "string"}},
                        "answer": {"type": "string"},
                    },
                    "required": ["type", "question", "options", "answer"],
                },
            },
        },
        "required": ["referent", "questions"],
    },
    "name": {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "whole": {"type": "boolean"},
            "description": {"type": "string"},
            "reject": {"type": "string"},  # why the region holds no object; empty when it is named
        },
        "required": ["label", "whole", "description", "reject"],
    },
    "answer": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
    "validate": {
        "type": "object",
        "properties": {"unambiguous": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["unambiguous"],
    },
}
SCHEMAS["questions_pair"] = {
    "type": "object",
    "properties": {
        "referents": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
        "questions": SCHEMAS["questions"]["properties"]["questions"],
    },
    "required": ["referents", "questions"],
}


def image(im: Image.Image) -> dict:
    return {"type": "image", "image": im}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


async def ask_json(
    teacher: Teacher,
    task: str,
    system: str,
    content: list[dict],
    read: Callable[[dict], Any],
    *,
    stage: str,
    variant: int = 0,
    temperature: float | None = None,
) -> Any:
    prompt = load_prompt(task)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
    schema = {"name": task, "schema": SCHEMAS[task]}
    reply = await teacher.ask(
        messages,
        purpose=task,
        stage=stage,
        prompt_version=prompt.version,
        schema=schema,
        variant=variant,
        temperature=temperature,
    )
    if reply.refusal:
        raise ReplyError("refusal", reply.refusal[:200])
    try:
        return read(parse_json(reply.content))
    except ReplyError as first:
        repair = [
            *messages,
            {"role": "assistant", "content": _text(reply.content)},
            {"role": "user", "content": f"That reply could not be used ({first.detail}). Reply with the JSON only."},
        ]
        again = await teacher.ask(
            repair,
            purpose=f"{task}:repair",
            stage=stage,
            prompt_version=prompt.version,
            schema=schema,
            variant=variant,
            temperature=temperature,
        )
        try:
            return read(parse_json(again.content))
        except ReplyError as second:
            raise ReplyError(UNPARSEABLE, second.detail) from None


def _frame(teacher: Teacher, im: Image.Image) -> Frame:
    """How `teacher` writes boxes over `im`, at the size it is sent."""
    cfg = teacher.cfg
    return Frame(cfg.boxes, sent_size(im.width, im.height, cfg.image_max_pixels, cfg.image_multiple))


async def ground_tile(
    teacher: Teacher, full: Image.Image, tile: tuple[int, int, int, int], max_objects: int, stage: str
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """The objects the teacher lists on one tile of the image, as (label, box in the image's pixels)."""
    crop = full.crop(tile)
    boxes = _frame(teacher, crop)
    system = load_prompt("ground").render(max_objects=max_objects, box=boxes.describe("this tile"), order=boxes.order)
    found = []
    for obj in await ask_json(teacher, "ground", system, [image(crop)], read_objects, stage=stage):
        try:  # a box empty once clamped to the tile costs that object, as a malformed one does
            box = boxes.to_region(obj["bbox_2d"], tile)
        except ReplyError:
            continue
        found.append((obj["label"], (round(box[0]), round(box[1]), round(box[2]), round(box[3]))))
    return found


_COORDINATES = re.compile(r"\d+\s*,\s*\d+|\(\s*\d+|\[\s*\d+|grid", re.IGNORECASE)


async def name_region(teacher: Teacher, crop: Image.Image, stage: str) -> dict:
    """The teacher's verdict on one outlined proposal: `read_name`'s, with no place named by coordinates (the
    label and description go into later prompts)."""

    def read(doc: dict) -> dict:
        found = read_name(doc)
        if _COORDINATES.search(found.get("label", "") + " " + found.get("description", "")):
            raise ReplyError(UNPARSEABLE, "the label or description names a place by coordinates")
        return found

    system = load_prompt("name").render()
    return await ask_json(teacher, "name", system, [image(crop)], read, stage=stage)


def what_it_is(label: str | None, description: str = "") -> str:
    if not label:
        return "The object has no class name yet: name it yourself."
    return f"The object is a {label}." + (f" It looks like this: {description.rstrip('.')}." if description else "")


def read_referents(doc: dict, count: int) -> list[str]:
    """The teacher's own referring expressions: non-empty, and naming no place by coordinates."""
    found = doc.get("referents") if count > 1 else [doc.get("referent")]
    if not isinstance(found, list) or len(found) != count or not all(isinstance(r, str) and r.strip() for r in found):
        raise ReplyError("expected 'referent' (or 'referents' for two objects): how the question names the object")
    names = [r.strip() for r in found]
    if any(_COORDINATES.search(r) for r in names):
        raise ReplyError(f"a referent names the object by coordinates: {names}")
    return names


def _named(count: int) -> Callable[[dict], tuple[list[str], list[dict]]]:
    """A reader of questions that must use the teacher's referents verbatim; others are left out."""

    def read(doc: dict) -> tuple[list[str], list[dict]]:
        names = read_referents(doc, count)
        questions = [
            q
            for q in read_questions(doc)
            if all(n.lower() in q["question"].lower() for n in names) and not _COORDINATES.search(q["question"])
        ]
        return names, questions

    return read


async def write_questions(
    teacher: Teacher,
    full: Image.Image,
    crop: Image.Image,
    label: str | None,
    count: int,
    stage: str,
    description: str = "",
) -> tuple[list[str], list[dict]]:
    """The teacher's referring expression for one outlined object and its questions about it."""
    system = load_prompt("questions").render(what=what_it_is(label, description), count=count)
    return await ask_json(teacher, "questions", system, [image(full), image(crop)], _named(1), stage=stage)


async def write_pair_questions(
    teacher: Teacher,
    full: Image.Image,
    crops: list[Image.Image],
    labels: list[str | None],
    count: int,
    stage: str,
    descriptions: tuple[str, str] = ("", ""),
) -> tuple[list[str], list[dict]]:
    system = load_prompt("questions_pair").render(
        what_a=what_it_is(labels[0], descriptions[0]), what_b=what_it_is(labels[1], descriptions[1]), count=count
    )
    content = [image(full), *(image(c) for c in crops)]
    return await ask_json(teacher, "questions_pair", system, content, _named(2), stage=stage)


async def answer(
    teacher: Teacher, images: list[Image.Image], question: str, view: str, *, stage: str, variant: int
) -> str:
    system = load_prompt("answer").render(view=view)
    return await ask_json(
        teacher, "answer", system, [*map(image, images), text(question)], read_answer, stage=stage, variant=variant
    )


async def validate(
    teacher: Teacher, full: Image.Image, crop: Image.Image, question: str, stage: str, referent: str | None = None
) -> bool:
    """Whether the question's referring expression picks out exactly one object in the whole image: the crop's."""
    system = load_prompt("validate").render(
        referent=f'The question names it as "{referent}".' if referent else "The question names it in its text."
    )

    def read(doc: dict) -> bool:
        if not isinstance(doc.get("unambiguous"), bool):
            raise ReplyError(UNPARSEABLE, "expected {'unambiguous': true|false}")
        return doc["unambiguous"]

    return await ask_json(
        teacher, "validate", system, [image(full), image(crop), text(question)], read, stage=stage, temperature=0.0
    )


async def drive_trajectory(
    teacher: Teacher, full: Image.Image, view: Image.Image, question: str, max_turns: int, stage: str
) -> tuple[list[dict], str]:
    """Let the teacher zoom for real: each tool call is executed on the full image and its crop sent back.

    A reply with a malformed call, or with neither a call nor an answer, gets one repair request; the repaired
    reply takes its place in the conversation. Returns the zoom steps (thought, grid box, pixel box, crop) and
    the final reply; raises ReplyError for a refusal, a second unusable reply, an invalid box or the turn limit.
    The teacher writes its boxes in its own convention over the view as sent; the steps hold them on the grid.
    """
    prompt = load_prompt("trajectory")
    boxes = _frame(teacher, view)
    instructions = system_prompt(f"a box {boxes.describe('the original image')}")
    messages = [
        {"role": "system", "content": prompt.render(system_prompt=instructions, order=boxes.order)},
        {"role": "user", "content": [image(view), text(question)]},
    ]
    steps: list[dict] = []
    while True:
        reply = await teacher.ask(messages, purpose="trajectory", stage=stage, prompt_version=prompt.version)
        try:
            content, box = _read_turn(reply, boxes)
        except ReplyError as first:
            if first.reason == "refusal":
                raise
            repair = [
                *messages,
                {"role": "assistant", "content": _text(reply.content)},
                {
                    "role": "user",
                    "content": f"That reply could not be used ({first.detail}). Reply with one {TOOL_NAME} tool "
                    "call or with your final <answer>.",
                },
            ]
            again = await teacher.ask(repair, purpose="trajectory:repair", stage=stage, prompt_version=prompt.version)
            content, box = _read_turn(again, boxes)
        if box is None:
            return steps, content.strip()
        if len(steps) == max_turns:
            raise ReplyError("turn_limit", f"{max_turns} zooms without an answer")
        try:
            crop, box_px = ZOOM(full, box)
        except ZoomError as exc:
            raise ReplyError("invalid_zoom", str(exc)) from None
        thought = _TOOL_CALL_BLOCK.sub("", content).strip() or "<think>Let me zoom in.</think>"
        steps.append({"think": thought, "bbox": box, "box_px": box_px, "crop": crop})
        seen = observation_text(boxes.from_region(box, WHOLE_GRID), box_px, boxes.digits)  # in its own terms
        messages += [
            {"role": "assistant", "content": content},
            {"role": "user", "content": [text(seen), image(crop)]},
        ]


def _read_turn(reply: Answer, boxes: Frame) -> tuple[str, list[int] | None]:
    """A trajectory reply's text and its zoom box on the grid (None when it answers), or ReplyError."""
    if reply.refusal:
        raise ReplyError("refusal", reply.refusal[:200])
    content = _text(reply.content)
    box = read_tool_call(content, reply.tool_calls)
    if box is None:
        if extract_answer(content) is None:
            raise ReplyError("no_answer", repr(content[:200]))
        return content, None
    try:  # whole grid numbers, as the exported call says: a replay of it crops the same pixels
        return content, [round(v) for v in boxes.to_region(box, WHOLE_GRID)]
    except ReplyError as exc:
        raise ReplyError("malformed_tool_call", exc.detail) from None


def _text(content: object) -> str:
    return content if isinstance(content, str) else ""
