"""What drim asks a model teacher, and how the replies are read: each task is one prompt file and one reader.

A reply that does not parse gets one repair request (shown its error); a refusal or a second bad reply raises
ReplyError, a Drop whose reason says which it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from PIL import Image

from drim_data.teacher.client import Answer, Teacher
from drim_data.teacher.prompt_files import load_prompt
from drim_data.teacher.replies import (
    UNPARSEABLE,
    ReplyError,
    parse_json,
    read_answer,
    read_objects,
    read_questions,
    read_tool_call,
)
from schemas.answers import extract_answer
from schemas.tool import SYSTEM_PROMPT, TOOL_NAME, ZOOM, ZoomError, observation_text

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)

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
            }
        },
        "required": ["questions"],
    },
    "answer": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
    "validate": {
        "type": "object",
        "properties": {"unambiguous": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["unambiguous"],
    },
}
SCHEMAS["questions_pair"] = SCHEMAS["questions"]


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


async def ground_tile(teacher: Teacher, tile: Image.Image, max_objects: int, stage: str) -> list[dict]:
    system = load_prompt("ground").render(max_objects=max_objects)
    return await ask_json(teacher, "ground", system, [image(tile)], read_objects, stage=stage)


async def write_questions(teacher: Teacher, crop: Image.Image, referent: str, count: int, stage: str) -> list[dict]:
    system = load_prompt("questions").render(referent=referent, count=count)
    return await ask_json(teacher, "questions", system, [image(crop)], read_questions, stage=stage)


async def write_pair_questions(
    teacher: Teacher, crops: list[Image.Image], referents: list[str], count: int, stage: str
) -> list[dict]:
    system = load_prompt("questions_pair").render(referent_a=referents[0], referent_b=referents[1], count=count)
    return await ask_json(teacher, "questions_pair", system, [image(c) for c in crops], read_questions, stage=stage)


async def answer(
    teacher: Teacher, images: list[Image.Image], question: str, view: str, *, stage: str, variant: int
) -> str:
    system = load_prompt("answer").render(view=view)
    return await ask_json(
        teacher, "answer", system, [*map(image, images), text(question)], read_answer, stage=stage, variant=variant
    )


async def validate(teacher: Teacher, full: Image.Image, crop: Image.Image, question: str, stage: str) -> bool:
    system = load_prompt("validate").render()

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
    """
    prompt = load_prompt("trajectory")
    messages = [
        {"role": "system", "content": prompt.render(system_prompt=SYSTEM_PROMPT)},
        {"role": "user", "content": [image(view), text(question)]},
    ]
    steps: list[dict] = []
    while True:
        reply = await teacher.ask(messages, purpose="trajectory", stage=stage, prompt_version=prompt.version)
        try:
            content, box = _read_turn(reply)
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
            content, box = _read_turn(again)
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
        messages += [
            {"role": "assistant", "content": content},
            {"role": "user", "content": [text(observation_text(box, box_px)), image(crop)]},
        ]


def _read_turn(reply: Answer) -> tuple[str, list[float] | None]:
    """A trajectory reply's text and its zoom box (None when it answers), or ReplyError."""
    if reply.refusal:
        raise ReplyError("refusal", reply.refusal[:200])
    content = _text(reply.content)
    box = read_tool_call(content, reply.tool_calls)
    if box is None and extract_answer(content) is None:
        raise ReplyError("no_answer", repr(content[:200]))
    return content, box


def _text(content: object) -> str:
    return content if isinstance(content, str) else ""
