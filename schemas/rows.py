"""The exported row formats: Hugging Face features for the Parquet shards, and pandera schemas that check them.

`drim_data` validates every shard before writing it; `drim_train` validates every shard it loads. A change to a
column bumps SCHEMA_VERSION, and the trainer refuses versions it does not know.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd
import pandera.pandas as pa
from datasets import Features, Image, List, Value

from schemas.answers import CHECKERS
from schemas.tool import TOOL_NAME

SCHEMA_VERSION = "2.0"  # 2.0: both splits carry the class name, the image size, the targets and the view size
QUESTION_TYPES = (
    "colour",
    "count",
    "relative_position",
    "compare_size",
    "text",
    "recognition",
    "compare_brightness",
    "attribute",
    "spatial",
    "multi_target",
)
DIFFICULTIES = ("easy", "medium", "hard")
PATTERNS = ("coarse_to_fine", "reflective", "multi_target", "direct")

_TEXT_BLOCK = {"type": Value("string"), "text": Value("string")}
_TOOL_CALL = {"type": Value("string"), "function": {"name": Value("string"), "arguments": Value("string")}}
MESSAGE = {
    "role": Value("string"),
    "content": List(_TEXT_BLOCK),
    "tool_calls": List(_TOOL_CALL),
    "name": Value("string"),
}
_BOXES_PX = List(List(Value("int32")))

_COMMON = {
    "id": Value("string"),
    "image_id": Value("string"),
    "question": Value("string"),
    "options": List(Value("string")),
    "answer": Value("string"),
    "checker": Value("string"),
    "question_type": Value("string"),
    "difficulty": Value("string"),
    "label": Value("string"),  # the class name of the target(s)
    "width": Value("int32"),  # the original image
    "height": Value("int32"),
    "target_boxes_px": _BOXES_PX,
    "target_boxes_norm": List(List(Value("float32"))),
    "global_view_size": List(Value("int32")),  # the size the model sees the whole image at
    "images": List(Image()),
}

SFT_FEATURES = Features(
    {
        **_COMMON,
        "messages": List(MESSAGE),
        "pattern": Value("string"),
        "zoom_boxes_px": _BOXES_PX,
    }
)

RL_FEATURES = Features(
    {
        **_COMMON,
        "prompt": List(MESSAGE),
    }
)


def message(
    role: str, text: str | None = None, *, images: int = 0, tool_calls: list | None = None, name: str | None = None
) -> dict:
    """One chat message in the exported form: image placeholders first, then the text block."""
    content = [{"type": "image", "text": None} for _ in range(images)]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"role": role, "content": content, "tool_calls": tool_calls, "name": name}


def count_image_blocks(messages: Iterable[dict]) -> int:
    return sum(1 for m in messages for block in m["content"] if block["type"] == "image")


def conversation_problem(messages: Iterable[dict]) -> str | None:
    """Why a conversation is not a well-formed zoom dialogue, or None when it is."""
    messages = list(messages)
    roles = [m["role"] for m in messages]
    if not roles or roles[0] != "system" or "user" not in roles:
        return "must start with a system message and contain a user message"
    if set(roles) - {"system", "user", "assistant", "tool"}:
        return f"unknown role in {sorted(set(roles))}"
    for i, m in enumerate(messages):
        calls = m.get("tool_calls")
        if calls is not None and len(calls) > 0:
            if m["role"] != "assistant":
                return f"message {i}: only assistant messages may call tools"
            for call in calls:
                if call["function"]["name"] != TOOL_NAME:
                    return f"message {i}: unknown tool {call['function']['name']!r}"
                try:
                    args = json.loads(call["function"]["arguments"])
                except (TypeError, json.JSONDecodeError):
                    return f"message {i}: tool arguments are not a JSON string"
                if not isinstance(args, dict) or len(args.get("bbox_2d") or []) != 4:
                    return f"message {i}: tool arguments lack a four-number bbox_2d"
            if i + 1 >= len(messages) or messages[i + 1]["role"] != "tool":
                return f"message {i}: a tool call must be followed by a tool message"
    return None


def _image_bytes_ok(images) -> bool:
    return len(images) > 0 and all(isinstance(img, dict) and img.get("bytes") for img in images)


def _boxes_ok(boxes) -> bool:
    return all(len(b) == 4 and b[0] < b[2] and b[1] < b[3] for b in boxes)


def _common_columns() -> dict:
    return {
        "id": pa.Column(str, unique=True),
        "image_id": pa.Column(str, pa.Check.str_length(64, 64)),
        "question": pa.Column(str, pa.Check.str_length(min_value=1)),
        "options": pa.Column(object),
        "answer": pa.Column(str, pa.Check.str_length(min_value=1)),
        "checker": pa.Column(str, pa.Check.isin(CHECKERS)),
        "question_type": pa.Column(str, pa.Check.isin(QUESTION_TYPES)),
        "difficulty": pa.Column(str, pa.Check.isin(DIFFICULTIES)),
        "label": pa.Column(str, pa.Check.str_length(min_value=1)),
        "width": pa.Column("int32", pa.Check.gt(0)),
        "height": pa.Column("int32", pa.Check.gt(0)),
        "target_boxes_px": pa.Column(object, pa.Check(_boxes_ok, element_wise=True, error="bad target boxes")),
        "target_boxes_norm": pa.Column(
            object,
            pa.Check(
                lambda bs: _boxes_ok(bs) and all(0 <= v <= 1 for b in bs for v in b),
                element_wise=True,
                error="normalised boxes must lie in [0, 1]",
            ),
        ),
        "global_view_size": pa.Column(object, pa.Check(lambda s: len(s) == 2 and min(s) > 0, element_wise=True)),
        "images": pa.Column(object, pa.Check(_image_bytes_ok, element_wise=True, error="images need bytes")),
    }


def _placeholders_match(df: pd.DataFrame, column: str) -> pd.Series:
    return pd.Series(
        [count_image_blocks(m) == len(i) for m, i in zip(df[column], df["images"], strict=False)], index=df.index
    )


def _choice_answers_valid(df: pd.DataFrame) -> pd.Series:
    ok = [
        c != "choice" or ord(a) - ord("A") < len(o)
        for c, a, o in zip(df["checker"], df["answer"], df["options"], strict=False)
    ]
    return pd.Series(ok, index=df.index)


SFT_SCHEMA = pa.DataFrameSchema(
    {
        **_common_columns(),
        "messages": pa.Column(
            object, pa.Check(lambda m: conversation_problem(m) is None, element_wise=True, error="bad conversation")
        ),
        "pattern": pa.Column(str, pa.Check.isin(PATTERNS)),
        "zoom_boxes_px": pa.Column(object, pa.Check(_boxes_ok, element_wise=True, error="bad zoom boxes")),
    },
    checks=[
        pa.Check(lambda df: _placeholders_match(df, "messages"), error="image placeholders != images"),
        pa.Check(_choice_answers_valid, error="choice answer outside options"),
    ],
    strict=True,
    name="sft_row",
)

RL_SCHEMA = pa.DataFrameSchema(
    {
        **_common_columns(),
        "prompt": pa.Column(
            object, pa.Check(lambda m: conversation_problem(m) is None, element_wise=True, error="bad prompt")
        ),
    },
    checks=[
        pa.Check(lambda df: _placeholders_match(df, "prompt"), error="image placeholders != images"),
        pa.Check(_choice_answers_valid, error="choice answer outside options"),
    ],
    strict=True,
    name="rl_row",
)

# test: whole held-out images, their rows in the RL form (an evaluation needs the prompt, image and answer only)
SPLITS = {"sft": (SFT_FEATURES, SFT_SCHEMA), "rl": (RL_FEATURES, RL_SCHEMA), "test": (RL_FEATURES, RL_SCHEMA)}
TRAINING_SPLITS = ("sft", "rl")  # what training reads; `test` is for evaluation alone
