"""A scripted model teacher for the stage tests and benchmarks, and a fault injector to wrap any responder.

`competent_teacher` answers every task the way a good teacher would, from what the request itself says and shows
(it finds the outlined object in the view and names it without coordinates), so a pipeline run against it is
deterministic. `with_faults` turns a share of requests into the faults a real endpoint
produces: rate limits, server errors, timeouts, dropped connections and truncated bodies.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import threading
from collections.abc import Callable

import numpy as np
from PIL import Image

from tests.openai_server import Reply

TRUTH = "green"  # the fake teacher 'sees' every object as green


def task_of(body: dict) -> str:
    first = body["messages"][0]["content"]
    return re.match(r"TASK: (\w+)", first).group(1) if isinstance(first, str) else ""


def question_of(body: dict) -> str:
    return next(
        p["text"]
        for m in body["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "text"
    )


def _correct(question: str) -> str:
    options = re.findall(r"^([A-D])\. (.+)$", question, re.MULTILINE)
    return next((letter for letter, text in options if text == TRUTH), TRUTH)


OUTLINES = {
    "magenta": lambda r, g, b: (r > 180) & (g < 90) & (b > 180),
    "cyan": lambda r, g, b: (r < 90) & (g > 180) & (b > 180),
}
LOCATED: dict[str, tuple[int, int]] = {}  # the fake teacher's memory: each referent it wrote, and where it saw it
COORDINATES = re.compile(r"\d+\s*,\s*\d+|\(\s*\d+|\[\s*\d+|0-1000|grid")


def images_of(body: dict) -> list[Image.Image]:
    parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
    return [
        Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).convert("RGB")
        for p in parts
        if p["type"] == "image_url"
    ]


def _outlined(view: Image.Image, colour: str) -> tuple[int, int]:
    """Where the outline of a colour is drawn in the view, on the 0..1000 grid: what a teacher sees."""
    rgb = np.asarray(view).astype(int)
    ys, xs = np.nonzero(OUTLINES[colour](rgb[..., 0], rgb[..., 1], rgb[..., 2]))
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    return round(cx / view.width * 1000), round(cy / view.height * 1000)


def _name(body: dict, colour: str) -> str:
    """A referring expression with no coordinates in it, remembered with where the object is."""
    x, y = _outlined(images_of(body)[0], colour)
    label = re.search(r"The object is an? ([\w ]+)\.", body["messages"][0]["content"])
    name = f"the {label.group(1) if label else 'thing'} number {'abcdefghij'[x % 10]}{'abcdefghij'[y % 10]}{colour}"
    LOCATED[name] = (x, y)
    return name


def _centres(question: str) -> list[tuple[int, int]]:
    return [xy for name, xy in sorted(LOCATED.items(), key=lambda kv: question.find(kv[0])) if name in question]


def competent_teacher(body: dict):
    """Answers like a good teacher would, from what the request itself says and shows."""
    task = task_of(body)
    if task == "ground":
        return json.dumps({"objects": [{"label": "buoy", "bbox_2d": [480, 480, 515, 520]}]})
    if task == "questions":
        referent = _name(body, "magenta")
        return json.dumps(
            {
                "referent": referent,
                "questions": [
                    {
                        "type": "attribute",
                        "question": f"What colour is {referent}?",
                        "options": ["red", TRUTH, "blue", "white"],
                        "answer": TRUTH,
                    },
                    {"type": "count", "question": f"How many parts has {referent}?", "options": [], "answer": "oops"},
                    {
                        "type": "attribute",
                        "question": f"What colour is {referent} at (10, 20)?",
                        "options": [],
                        "answer": "red",
                    },
                    {"type": "bogus", "question": "Something else entirely?", "options": [], "answer": "x"},
                ],
            }
        )
    if task == "questions_pair":
        a, b = _name(body, "magenta"), _name(body, "cyan")
        return (
            "```json\n"
            + json.dumps(
                {
                    "referents": [a, b],
                    "questions": [
                        {
                            "type": "multi_target",
                            "question": f"Do {a} and {b} share a colour?",
                            "options": [],
                            "answer": "yes",
                        }
                    ],
                }
            )
            + "\n```"
        )
    if task == "answer":
        question = question_of(body)
        if "whole scene" in body["messages"][0]["content"]:
            return json.dumps({"answer": "C"})  # the solver cannot tell without zooming
        return json.dumps({"answer": "yes" if "share a colour" in question else _correct(question)})
    if task == "validate":
        return json.dumps({"unambiguous": True, "reason": "one object"})
    if task == "trajectory":
        question = question_of(body)
        # each zoom's crop comes back as a user turn with an image (a repair request's turn is text only)
        zooms_done = sum(1 for m in body["messages"][2:] if m["role"] == "user" and isinstance(m["content"], list))
        centres = _centres(question)
        if zooms_done < len(centres):
            x, y = centres[zooms_done]
            call = {"name": "zoom_in", "arguments": {"bbox_2d": [x - 30, y - 30, x + 30, y + 30]}}
            return f"<think>I need a closer look at ({x}, {y}).</think>\n<tool_call>{json.dumps(call)}</tool_call>"
        answer = "yes" if "share a colour" in question else _correct(question)
        return f"<think>Now I can see it.</think>\n<answer>{answer}</answer>"
    return Reply(400)


def faults(timeout_s: float) -> list[Reply]:
    """One of each fault a real endpoint produces; the slow one outlasts a client timeout of `timeout_s`."""
    return [
        Reply(429, headers={"Retry-After": "0"}),
        Reply(500),
        Reply(503),
        Reply(delay=timeout_s * 1.5),
        Reply(drop=True),
        Reply(body='{"choices": [{"mess'),
    ]


def with_faults(responder: Callable[[dict], object], share: float, seed: int = 0, timeout_s: float = 0.3):
    """`responder`, except that each request is a random fault with probability `share` (seeded, thread-safe)."""
    rng, lock, kinds = random.Random(seed), threading.Lock(), faults(timeout_s)

    def faulty(body: dict):
        with lock:
            fault = rng.choice(kinds) if rng.random() < share else None
        return fault or responder(body)

    return faulty


# What share of a question's verification samples come out right, by the kind of question it is: (kind, share of
# questions, votes on the crop, validator says unambiguous, solver on the global view, solver on the crop).
MIX = [
    ("good", 0.40, 0.97, True, 0.10, 0.85),
    ("bad_reference", 0.10, 0.30, True, 0.10, 0.30),
    ("ambiguous", 0.10, 0.95, False, 0.10, 0.85),
    ("easy", 0.30, 0.95, True, 0.70, 0.90),
    ("hard", 0.10, 0.95, True, 0.05, 0.25),
]


def _share(*parts: object) -> float:
    return int(hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:8], 16) / 16**8


def mixed_verifier(responder: Callable[[dict], object] = competent_teacher) -> Callable[[dict], object]:
    """`responder`, except that verification's answers and validations make a realistic mix: each question gets a
    kind from a hash of its text (`MIX`), and each sample a right or wrong answer from a hash of the request, so the
    same request always gets the same reply, whatever else was asked and in which order."""

    def reply(body: dict):
        task = task_of(body)
        if task not in ("answer", "validate"):
            return responder(body)
        question = question_of(body)
        u, kind = _share(question), MIX[-1]
        for row in MIX:
            if u < row[1]:
                kind = row
                break
            u -= row[1]
        if task == "validate":
            return json.dumps({"unambiguous": kind[3], "reason": kind[0]})
        view = "full" if "whole scene" in body["messages"][0]["content"] else "crop"
        solver = body.get("seed", 0) >= 100
        p = kind[{(False, "crop"): 2, (True, "full"): 4, (True, "crop"): 5}[(solver, view)]]
        right = "yes" if "share a colour" in question else _correct(question)
        wrong = "no" if right == "yes" else ("A" if right != "A" and len(right) == 1 else "red")
        return json.dumps({"answer": right if _share(question, view, body.get("seed")) < p else wrong})

    return reply
