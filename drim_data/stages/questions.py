"""A question row with its image's size, as the verify and trajectories stages read it."""

from __future__ import annotations

import json
from dataclasses import dataclass

COLUMNS = """q.question_id, q.image_id, q.question_type, q.question, q.options, q.answer, q.checker, q.label,
       q.target_region_ids, q.target_boxes, q.referent, i.width, i.height"""


@dataclass(frozen=True)
class Question:
    question_id: str
    image_id: str
    question_type: str
    question: str
    options: list[str]
    answer: str
    checker: str
    label: str
    region_ids: list[str]
    targets: list[list[int]]  # target boxes in original pixels
    referent: list[str]  # how the question names each target (for a count, the counted class and area)
    width: int
    height: int

    @classmethod
    def from_row(cls, row: tuple) -> Question:
        values = list(row)
        for i in (4, 8, 9, 10):
            values[i] = json.loads(values[i])
        return cls(*values)
