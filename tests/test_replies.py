"""Reading teacher replies: tolerant JSON, per-task structure, tool calls (pure functions, tables of cases)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drim_data.errors import Drop
from drim_data.teacher.replies import ReplyError, parse_json, read_answer, read_objects, read_questions, read_tool_call

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
KEYS = st.sampled_from(["objects", "questions", "answer", "label", "bbox_2d", "type", "question", "options", "x"])
DOCS = st.dictionaries(KEYS, JSON, max_size=4)  # near misses of what the readers expect, and arbitrary JSON
QUESTION = st.fixed_dictionaries(
    {"type": st.just("count"), "question": st.text(min_size=10), "options": JSON, "answer": st.text() | st.integers()}
)
OBJECT = st.fixed_dictionaries({"label": JSON, "bbox_2d": JSON})


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure! Here it is:\n```json\n{"a": [1, 2]}\n```\nAnything else?', {"a": [1, 2]}),
        ('prefix {"a": {"b": "}"}} suffix', {"a": {"b": "}"}}),
        ('[1, 2] then {"ok": true}', {"ok": True}),
    ],
)
def test_parse_json_tolerates_prose_and_fences(text, expected):
    assert parse_json(text) == expected


@pytest.mark.parametrize("text", ["", None, "no json here", '{"a": ', "[1, 2, 3]"])
def test_parse_json_rejects_what_has_no_object(text):
    with pytest.raises(ReplyError):
        parse_json(text)


def test_objects_keep_four_number_boxes_and_skip_wrong_ones():
    doc = {
        "objects": [
            {"label": "Red Car", "bbox_2d": [10, 20, 30, 40]},
            {"label": "sign", "bbox_2d": [1, 2, 3]},  # three numbers
            {"label": "flag", "bbox_2d": [1, 2, True, 4]},
            {"label": "", "bbox_2d": [1, 2, 3, 4]},
            {"label": "kite", "bbox_2d": [-20, 990, 30, 1200]},  # as written: its convention clamps it
        ]
    }
    assert read_objects(doc) == [
        {"label": "red car", "bbox_2d": [10, 20, 30, 40]},
        {"label": "kite", "bbox_2d": [-20.0, 990.0, 30.0, 1200.0]},
    ]
    with pytest.raises(ReplyError):
        read_objects({"things": []})


def test_questions_are_normalised_and_bad_ones_skipped():
    doc = {
        "questions": [
            {
                "type": "attribute",
                "question": "What colour is the car?",
                "options": ["red", "blue", "green", "white"],
                "answer": "blue",
            },
            {"type": "count", "question": "How many wheels are visible?", "options": [], "answer": 3},
            {"type": "text", "question": "What does the sign say?", "options": [], "answer": "STOP"},
            {
                "type": "attribute",
                "question": "Which colour is the roof?",
                "options": ["red", "red", "b", "c"],
                "answer": "red",
            },  # duplicate options
            {
                "type": "attribute",
                "question": "What colour is the boat?",
                "options": ["a", "b", "c", "d"],
                "answer": "e",
            },  # answer not among the options
            {"type": "opinion", "question": "Is this a nice picture?", "options": [], "answer": "yes"},
            {"type": "count", "question": "Short?", "options": [], "answer": "2"},  # question too short
        ]
    }
    assert read_questions(doc) == [
        {
            "type": "attribute",
            "question": "What colour is the car?",
            "options": ["red", "blue", "green", "white"],
            "answer": "B",
            "checker": "choice",
        },
        {
            "type": "count",
            "question": "How many wheels are visible?",
            "options": [],
            "answer": "3",
            "checker": "number",
        },
        {"type": "text", "question": "What does the sign say?", "options": [], "answer": "STOP", "checker": "text"},
    ]


def test_answers():
    assert read_answer({"answer": " B "}) == "B" and read_answer({"answer": 4}) == "4"
    with pytest.raises(ReplyError):
        read_answer({"answer": ""})


@pytest.mark.parametrize(
    "content, calls, expected",
    [
        (
            '<think>look</think><tool_call>{"name": "zoom_in", "arguments": {"bbox_2d": [1, 2, 30, 40]}}</tool_call>',
            [],
            [1.0, 2.0, 30.0, 40.0],
        ),
        (
            None,
            [{"function": {"name": "zoom_in", "arguments": '{"bbox_2d": [5, 5, 50, 50]}'}}],
            [5.0, 5.0, 50.0, 50.0],
        ),
        ("<think>done</think><answer>B</answer>", [], None),
    ],
)
def test_tool_calls_in_text_or_in_the_api_field(content, calls, expected):
    assert read_tool_call(content, calls) == expected


@pytest.mark.parametrize(
    "content",
    [
        '<tool_call>{"name": "zoom_in", "arguments": {bbox}</tool_call>',
        '<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>',
        '<tool_call>{"name": "zoom_in", "arguments": {"bbox_2d": [1, 2]}}</tool_call>',
    ],
)
def test_malformed_tool_calls_are_errors(content):
    with pytest.raises(ReplyError):
        read_tool_call(content, [])


def test_a_reply_error_is_a_drop_with_its_reason():
    with pytest.raises(Drop) as err:
        read_tool_call('<tool_call>{"name": "crop"}</tool_call>', [])
    assert isinstance(err.value, ReplyError) and err.value.reason == "malformed_tool_call"
    assert "crop" in err.value.detail


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.one_of(st.text(max_size=200), JSON.map(json.dumps), DOCS.map(lambda d: f"Sure:\n```json\n{json.dumps(d)}\n```"))
)
def test_parse_json_gives_an_object_or_a_reply_error(text):
    try:
        assert isinstance(parse_json(text), dict)
    except ReplyError as exc:
        assert exc.reason == "unparseable_reply" and exc.detail


@settings(max_examples=300, deadline=None, derandomize=True)
@given(DOCS | st.fixed_dictionaries({"objects": st.lists(OBJECT, min_size=1, max_size=3)}))
def test_readers_give_a_value_or_a_reply_error(doc):
    for read in (read_objects, read_questions, read_answer):
        try:
            value = read(doc)
        except ReplyError as exc:
            assert exc.reason and exc.detail
            continue
        assert isinstance(value, list | str)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(QUESTION, min_size=1, max_size=3))
def test_questions_of_any_shape_are_kept_or_skipped(questions):
    found = read_questions({"questions": questions})
    assert all(q["checker"] in ("choice", "number", "text") and len(q["options"]) in (0, 4) for q in found)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.one_of(st.none(), st.text(max_size=80), JSON.map(lambda v: f"<tool_call>{json.dumps(v)}</tool_call>")),
    st.one_of(
        st.just([]), st.lists(JSON, max_size=2), st.lists(st.fixed_dictionaries({"function": JSON}), max_size=1)
    ),
)
def test_tool_calls_give_a_box_none_or_a_reply_error(content, calls):
    try:
        box = read_tool_call(content, calls)
    except ReplyError as exc:
        assert exc.reason == "malformed_tool_call"
        return
    assert box is None or (len(box) == 4 and all(isinstance(v, float) for v in box))
