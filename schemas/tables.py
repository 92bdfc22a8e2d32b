"""Pandera schemas for the pipeline's tables, checked at every stage boundary."""

from __future__ import annotations

import json

import pandera.pandas as pa

from schemas.answers import CHECKERS
from schemas.rows import DIFFICULTIES, PATTERNS, QUESTION_TYPES

_ID = pa.Column(str, pa.Check.str_length(min_value=8), unique=True)
_IMAGE_ID = pa.Column(str, pa.Check.str_length(64, 64))


def _json_list(value: str) -> bool:
    try:
        return isinstance(json.loads(value), list)
    except (TypeError, json.JSONDecodeError):
        return False


_JSON_LIST = pa.Check(_json_list, element_wise=True, error="expected a JSON list")

TABLES = {
    "images": pa.DataFrameSchema(
        {
            "image_id": pa.Column(str, pa.Check.str_length(64, 64), unique=True),
            "width": pa.Column(int, pa.Check.gt(0)),
            "height": pa.Column(int, pa.Check.gt(0)),
            "format": pa.Column(str),
            "mode": pa.Column(str),
        },
        coerce=True,
    ),
    "regions": pa.DataFrameSchema(
        {
            "region_id": _ID,
            "image_id": _IMAGE_ID,
            "source": pa.Column(str, pa.Check.isin(["annotation", "proposal", "teacher"])),
            "x1": pa.Column(int, pa.Check.ge(0)),
            "y1": pa.Column(int, pa.Check.ge(0)),
            "x2": pa.Column(int),
            "y2": pa.Column(int),
        },
        checks=[pa.Check(lambda df: (df.x2 > df.x1) & (df.y2 > df.y1), error="empty region box")],
        coerce=True,
    ),
    "questions": pa.DataFrameSchema(
        {
            "question_id": _ID,
            "image_id": _IMAGE_ID,
            "question_type": pa.Column(str, pa.Check.isin(QUESTION_TYPES)),
            "question": pa.Column(str, pa.Check.str_length(min_value=10)),
            "options": pa.Column(str, _JSON_LIST),
            "answer": pa.Column(str, pa.Check.str_length(min_value=1)),
            "checker": pa.Column(str, pa.Check.isin(CHECKERS)),
            "target_boxes": pa.Column(str, _JSON_LIST),
        },
        coerce=True,
    ),
    "verdicts": pa.DataFrameSchema(
        {
            "question_id": _ID,
            "kept": pa.Column(bool),
            "reason": pa.Column(str, nullable=True),
            "difficulty": pa.Column(str, pa.Check.isin(DIFFICULTIES), nullable=True),
        },
        checks=[pa.Check(lambda df: df.kept != df.reason.notna(), error="kept items have no reason, drops do")],
        coerce=True,
    ),
    "trajectories": pa.DataFrameSchema(
        {
            "question_id": _ID,
            "trajectory_id": pa.Column(str, pa.Check.str_length(64, 64)),
            "pattern": pa.Column(str, pa.Check.isin(PATTERNS)),
            "messages": pa.Column(str, _JSON_LIST),
            "zoom_boxes_px": pa.Column(str, _JSON_LIST),
        },
        coerce=True,
    ),
}


def validate_table(con, table: str, sql: str) -> None:
    """Validate a query's rows against the table's schema; raises pandera.errors.SchemaErrors with all failures."""
    TABLES[table].validate(con.sql(sql).df(), lazy=True)
