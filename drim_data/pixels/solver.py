"""The blind solver: answers a question from the global view the model sees, without zooming.

It uses the instruments the questions were written with, at the view's scale: colour measured on the downscaled
object's pixels, OCR on the downscaled text, instances counted where they are still told apart, left/right/above/
below and longer/shorter read from two objects that can both be recognised there. It is told where the targets
are, so it is an upper bound on what a model could get from the view; when a target is too small to find at that
scale, or to recognise as its class (a vision patch's area, or a patch's length for a slim object that stands out
from its surround), it does not guess but returns None. A question it answers correctly does not need the zoom.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from drim_data.pixels.ocr import read_text
from drim_data.pixels.palette import colour_name, object_pixels, to_lab
from schemas.answers import LETTERS, normalise_text

FINDABLE_PX = 6  # a target of fewer view pixels than a square this wide (under half a 14 px vision patch) is not
# found; nor is one under `THIN_PX` across, however long
# A question names its objects ("the leftmost boat", "the ships left of the oil island"), so answering it from the
# view takes recognising each as its class there: an area of at least one 14 px vision patch. Told where the
# object is, the solver still needs to see it as a boat to know it has found the leftmost boat.
IDENTIFIABLE_PX = 14
SEPARABLE_PX = 2  # instances closer than this in the view merge into one blob
THIN_PX = 2  # a bright hull 2.5 px wide and 15 long on water shows plainly
# A slim object is told by its outline at less than a patch's area, when it stands out from its surround: a red
# hull on dark water reads as a ship at 21x6 px, a stone cross on stone at that size does not, nor does a compact
# blob of any colour (a bag at a hip, a crown in a canopy)
SLIM = 2.5  # an object at least this many times longer than wide, and a patch long
POP_OUT_DE = 25.0  # CIELAB distance between the object's own pixels and the ring around its box
OUTLINE_DE = 12.0  # a pixel this far from its surround belongs to the object's outline, where its length is read
TEXT_MARGIN = 0.25  # OCR reads the text's box widened by this share of its height on every side
MIN_TEXT_MATCH = 0.6  # an option is picked only when the reading is at least this similar to it
RELATIONS = {
    "left": ("left",),
    "right": ("right",),
    "above": ("above", "top", "higher", "over"),
    "below": ("below", "bottom", "lower", "under", "beneath"),
}


@dataclass(frozen=True)
class BlindItem:
    question_type: str  # colour | count | relative_position | compare_size | text | recognition
    label: str  # the class name of the targets
    targets: list[list[int]]  # boxes in original pixels; for two-object types the subject first, then the reference
    width: int  # the original image's size
    height: int
    options: list[str]  # multiple-choice options (answered by letter); empty for a short answer
    checker: str  # choice | number | text
    question: str = ""  # its wording, read for which part of a text it asks (its first or last word)


def blind_answer(view: Image.Image, item: BlindItem) -> str | None:
    """The answer read from the view alone, as the row's checker expects it, or None when it cannot tell."""
    boxes = [_in_view(box, view, item) for box in item.targets]
    if not boxes:
        return None
    pixels = np.asarray(view.convert("RGB"))
    if item.question_type == "recognition":  # what is recognised as its class is named by it
        found = item.label if all(_identifiable(b, pixels) for b in boxes) else None
    else:
        reader = READERS.get(item.question_type)
        found = reader(pixels, boxes) if reader else None
    return None if found is None else _as_answer(found, item)


def _in_view(box: list[int], view: Image.Image, item: BlindItem) -> tuple[float, float, float, float]:
    sx, sy = view.width / item.width, view.height / item.height
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def _findable(box: tuple[float, float, float, float]) -> bool:
    """Whether the view shows the object at all: by its area, so an 18x5 px hull is seen as a 6x6 px blob is."""
    w, h = box[2] - box[0], box[3] - box[1]
    return min(w, h) >= THIN_PX and w * h >= FINDABLE_PX**2


def _colour(pixels: np.ndarray, boxes: list) -> str | None:
    if not all(_identifiable(b, pixels) for b in boxes):  # the named object must be recognised to be found
        return None
    return colour_name(object_pixels(pixels, _whole_pixels(boxes[0])))[0]


def _whole_pixels(box: tuple) -> tuple[int, int, int, int]:
    return math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])


def _count(pixels: np.ndarray, boxes: list) -> str | None:
    """Instances recognised at this scale, those closer than `SEPARABLE_PX` merged as the eye would merge them."""
    found = [b for b in boxes if _identifiable(b, pixels)]
    if not found:
        return None
    parent = list(range(len(found)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(found):
        for j in range(i + 1, len(found)):
            b = found[j]
            gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            if gap < SEPARABLE_PX:
                parent[root(j)] = root(i)
    return str(len({root(i) for i in range(len(found))}))


def identifiable_in_view(box, view: np.ndarray, width: int, height: int) -> bool:
    """Whether an object of the original image can be recognised as its class in the global view (`view`, its RGB
    pixels): what the generator asks about must fail this for at least one of a question's objects, or the solver
    answers it."""
    scale = view.shape[1] / width
    return _identifiable(tuple(v * scale for v in box), view)


def _identifiable(box: tuple[float, float, float, float], pixels: np.ndarray) -> bool:
    """Whether an object spans enough view pixels to be recognised as its class: a patch's worth of area (a long
    thin hull counts by its area, not its narrow side), or a patch's length for a slim object that stands out,
    measured along the object itself, however it lies in its box."""
    if not _findable(box):
        return False
    w, h = box[2] - box[0], box[3] - box[1]
    if math.sqrt(w * h) >= IDENTIFIABLE_PX:
        return True
    long, wide = extent(pixels, box)
    long = max(long, w, h)  # a box's side is the length of what lies along it
    return long >= IDENTIFIABLE_PX and long >= SLIM * wide and pops_out(pixels, box)


def extent(pixels: np.ndarray, box: tuple[float, float, float, float]) -> tuple[float, float]:
    """The object's length and width in view pixels: the span of the pixels that differ from its surround
    (`OUTLINE_DE` from the median of a 2 px margin around the box) along their main axis and across it, so a hull
    lying diagonally in its box is as slim as one along it; the box's sides when too few differ."""
    x1, y1, x2, y2 = _whole_pixels(box)
    height, width = pixels.shape[:2]
    ox, oy = max(0, x1 - 2), max(0, y1 - 2)
    rgb = pixels[oy : min(height, y2 + 2), ox : min(width, x2 + 2), :3]
    patch = to_lab(rgb).reshape(*rgb.shape[:2], 3)
    inside = np.zeros(rgb.shape[:2], bool)
    inside[max(0, y1 - oy) : y2 - oy, max(0, x1 - ox) : x2 - ox] = True
    surround = patch[~inside]
    mask = inside & (np.linalg.norm(patch - np.median(surround, axis=0), axis=2) > OUTLINE_DE) if len(surround) else []
    if np.sum(mask) < 4:
        w, h = box[2] - box[0], box[3] - box[1]
        return max(w, h), min(w, h)
    points = np.stack(np.nonzero(mask)[::-1]).astype(float)
    _, axes = np.linalg.eigh(np.cov(points))
    spans = [float(np.ptp(axis @ points)) + 1 for axis in axes.T]  # + 1: from pixel centres to their edges
    return max(spans), min(spans)


def pops_out(pixels: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Whether the object's own pixels stand `POP_OUT_DE` from those of a ring around its box (its short side
    wide, at least 2 px), by their medians in CIELAB."""
    x1, y1, x2, y2 = _whole_pixels(box)
    pad = max(2, min(x2 - x1, y2 - y1))
    height, width = pixels.shape[:2]
    ox, oy = max(0, x1 - pad), max(0, y1 - pad)
    patch = pixels[oy : min(height, y2 + pad), ox : min(width, x2 + pad), :3]
    ring = np.ones(patch.shape[:2], bool)
    ring[max(0, y1 - oy) : y2 - oy, max(0, x1 - ox) : x2 - ox] = False
    if not ring.any():
        return False
    own = np.median(to_lab(object_pixels(pixels, (x1, y1, x2, y2))), axis=0)
    return float(np.linalg.norm(own - np.median(to_lab(patch[ring]), axis=0))) >= POP_OUT_DE


def _relation(pixels: np.ndarray, boxes: list) -> str | None:
    """Where the first object is relative to the second, along the axis on which they are further apart."""
    if len(boxes) < 2 or not all(_identifiable(b, pixels) for b in boxes[:2]):
        return None
    (ax, ay), (bx, by) = (((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes[:2])
    if abs(ax - bx) >= abs(ay - by):
        return "left" if ax < bx else "right"
    return "above" if ay < by else "below"


def _compare_size(pixels: np.ndarray, boxes: list) -> str | None:
    """Whether the first object is longer than the second, from their longer sides in the view. One of them need
    only be found there: a question asks it only at a clear ratio, so a hull beside a speck, or beside a spot that
    shows nothing, is told without a zoom."""
    if len(boxes) < 2 or not any(_findable(b) for b in boxes[:2]):
        return None
    a, b = (max(x[2] - x[0], x[3] - x[1]) for x in boxes[:2])
    return "longer" if a > b else "shorter"


def _text(pixels: np.ndarray, boxes: list) -> str | None:
    x1, y1, x2, y2 = boxes[0]
    pad = TEXT_MARGIN * max(1.0, y2 - y1)
    height, width = pixels.shape[:2]
    top, bottom = max(0, math.floor(y1 - pad)), min(height, math.ceil(y2 + pad))
    left, right = max(0, math.floor(x1 - pad)), min(width, math.ceil(x2 + pad))
    lines = read_text(Image.fromarray(pixels[top:bottom, left:right]))
    return " ".join(line.text for line in lines) if lines else None


READERS = {
    "colour": _colour,
    "count": _count,
    "relative_position": _relation,
    "compare_size": _compare_size,
    "text": _text,
}


def _as_answer(found: str, item: BlindItem) -> str | None:
    """A reading as the checker expects it: the letter of the option it matches, or the reading itself."""
    if item.checker != "choice":
        words = found.split()
        for end, pick in (("first word", 0), ("last word", -1)):
            if end in item.question.lower():
                return words[pick] if words else None
        return found
    if item.question_type == "relative_position":
        matches = [i for i, o in enumerate(item.options) if _relation_of(o) == found]
        return LETTERS[matches[0]] if len(matches) == 1 else None
    if item.question_type == "text":
        reading = normalise_text(found)
        scores = [difflib.SequenceMatcher(None, reading, normalise_text(o)).ratio() for o in item.options]
        best = int(np.argmax(scores)) if scores else -1
        return LETTERS[best] if best >= 0 and scores[best] >= MIN_TEXT_MATCH else None
    wanted = normalise_text(found)
    matches = [i for i, o in enumerate(item.options) if normalise_text(o) == wanted]
    return LETTERS[matches[0]] if matches else None


def _relation_of(option: str) -> str | None:
    words = set(normalise_text(option).split())
    named = [r for r, synonyms in RELATIONS.items() if words & set(synonyms)]
    return named[0] if len(named) == 1 else None
