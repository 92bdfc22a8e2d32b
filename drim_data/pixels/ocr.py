"""Text read by a real OCR model that runs offline: rapidocr's PP-OCR ONNX models, shipped inside its wheel.

One engine per process, built on first use (loading takes about a second). OCR is for crops: text detection needs
letters some 20 px tall, so a crop is enlarged until its shorter side is 736 px, but never beyond `MAX_SIDE` on its
longer side, which bounds the cost (a few seconds on two cores); a whole 8-megapixel photo would be shrunk to that
size until its small text is lost, as the model's global view loses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

MAX_SIDE = 2000  # the longest side, in pixels, that text detection runs at
MIN_CONFIDENCE = 0.5  # lines the recogniser is less sure of are not reported


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float  # the recogniser's score, 0..1
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the given image's pixels


@cache
def _engine():
    from rapidocr import RapidOCR

    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    return RapidOCR(
        params={
            "Global.log_level": "error",
            "Global.text_score": MIN_CONFIDENCE,
            "Global.max_side_len": MAX_SIDE,
            "Det.limit_type": "min",
            "Det.limit_side_len": 736,
        }
    )


def squeezed(text: str) -> str:
    """Lower-case letters and digits only: readings are compared without the spaces and punctuation OCR drops and
    adds at will."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def read_text(image: Image.Image) -> list[TextLine]:
    """The lines of text in an image, top to bottom."""
    rgb = np.asarray(image.convert("RGB"))
    result = _engine()(rgb)
    if result.txts is None:
        return []
    lines = []
    for text, score, quad in zip(result.txts, result.scores, result.boxes, strict=True):
        xs, ys = np.asarray(quad)[:, 0], np.asarray(quad)[:, 1]
        box = (
            max(0, int(np.floor(xs.min()))),
            max(0, int(np.floor(ys.min()))),
            min(rgb.shape[1], int(np.ceil(xs.max()))),
            min(rgb.shape[0], int(np.ceil(ys.max()))),
        )
        lines.append(TextLine(str(text), float(score), box))
    return _joined(sorted(lines, key=lambda line: (line.box[0], line.box[1])))


def _joined(pieces: list[TextLine]) -> list[TextLine]:
    """Pieces of one line of text (the detector often splits at wide spaces) joined left to right; lines top to
    bottom. Two pieces are one line when each one's vertical middle lies within the other's height and the gap
    between them is under twice that height."""
    lines: list[TextLine] = []
    for piece in pieces:  # left to right
        x1, y1, x2, y2 = piece.box
        for i, line in enumerate(lines):
            lx1, ly1, lx2, ly2 = line.box
            height = max(y2 - y1, ly2 - ly1)
            if ly1 <= (y1 + y2) / 2 <= ly2 and y1 <= (ly1 + ly2) / 2 <= y2 and x1 - lx2 < 2 * height:
                box = (min(x1, lx1), min(y1, ly1), max(x2, lx2), max(y2, ly2))
                lines[i] = TextLine(f"{line.text} {piece.text}", min(line.confidence, piece.confidence), box)
                break
        else:
            lines.append(piece)
    return sorted(lines, key=lambda line: (line.box[1], line.box[0]))
