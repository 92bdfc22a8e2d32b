"""Text read by a real OCR model that runs offline: rapidocr's PP-OCR ONNX models, shipped inside its wheel.

One engine per process, built on first use (loading takes about a second). OCR is for crops: detection runs at the
crop's own size, at most `MAX_SIDE` on its longer side, so the cost stays bounded; a whole 8-megapixel photo would
be shrunk until its small text is lost, which is also what the model's global view would do to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

MAX_SIDE = 1600  # longer side, in pixels, that text detection runs at
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
            "Det.limit_type": "max",  # never upscale a crop for detection: its cost grows with the area
            "Det.limit_side_len": MAX_SIDE,
        }
    )


def read_text(image: Image.Image) -> list[TextLine]:
    """The lines of text in an image, top to bottom, left to right."""
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
    return sorted(lines, key=lambda line: (line.box[1], line.box[0]))
