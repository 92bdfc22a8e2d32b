"""Box geometry, in one place: overlap, centres, distances and the 0..1000 grid the model points on.

A box is [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, in pixels unless a name says grid. The grid is Qwen3-VL's
grounding convention: integers on 0..GRID over the ORIGINAL image, whatever its resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

GRID = 1000  # coordinates are integers on a 0..GRID grid over the original image

Box = Sequence[float]


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes in the same coordinates; 0 for degenerate boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def iou_many(box: Box, others: np.ndarray | Sequence[Box]) -> np.ndarray:
    """IoU of one box with each row of an (n, 4) array, the same numbers as `iou` one by one."""
    others = np.asarray(others, float).reshape(-1, 4)
    ix = np.maximum(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0)
    iy = np.maximum(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0)
    inter = ix * iy
    sides = np.maximum(others[:, 2:] - others[:, :2], 0)
    union = area(box) + sides[:, 0] * sides[:, 1] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def centre_grid(box: Box, width: int, height: int) -> tuple[int, int]:
    """A pixel box's centre as a grid point: where a question says its referent is."""
    x, y = centre(box)
    return round(x / width * GRID), round(y / height * GRID)


def distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Euclidean distance between two points (grid points, for the uniqueness rule and pair questions)."""
    return math.hypot(p[0] - q[0], p[1] - q[1])


def contains(outer: Box, inner: Box) -> bool:
    """Whether `inner` lies wholly inside `outer` (edges may touch); a point is a box with no extent."""
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def intersects(a: Box, b: Box) -> bool:
    """Whether two boxes share area (touching edges do not count)."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def grid_to_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """0..GRID box -> integer pixel box clamped to the image (corners in any order)."""
    x1, x2 = sorted((box[0], box[2]))
    y1, y2 = sorted((box[1], box[3]))

    def clamp(v: float, hi: int) -> int:
        return min(max(round(v / GRID * hi), 0), hi)

    return clamp(x1, width), clamp(y1, height), clamp(x2, width), clamp(y2, height)


def pixels_to_grid(box: Box, width: int, height: int) -> list[int]:
    """Pixel box -> integer 0..GRID box, rounded outwards so it still covers the pixels."""
    x1, y1, x2, y2 = box
    return [
        math.floor(x1 / width * GRID),
        math.floor(y1 / height * GRID),
        math.ceil(x2 / width * GRID),
        math.ceil(y2 / height * GRID),
    ]


def normalise(box: Box, width: int, height: int) -> list[float]:
    """Pixel box -> [0, 1] box relative to the image."""
    x1, y1, x2, y2 = box
    return [x1 / width, y1 / height, x2 / width, y2 / height]
