"""Box geometry: properties that must hold for any boxes, and the tool's names being the geometry module's own."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas.tool
from schemas import geometry
from schemas.geometry import (
    GRID,
    centre,
    centre_grid,
    contains,
    distance,
    grid_to_pixels,
    intersects,
    iou,
    iou_many,
    normalise,
    pixels_to_grid,
)

sizes = st.tuples(st.integers(1, 20_000), st.integers(1, 20_000))
coords = st.floats(-1e4, 1e4, allow_nan=False)


@st.composite
def boxes(draw, width: float = 1e4, height: float = 1e4, integer: bool = False, min_side: float = 0):
    """A box with x1 <= x2, y1 <= y2 inside [0, width] x [0, height]."""

    def number(lo: float, hi: float):  # drawn inside its range, never filtered: no example is thrown away
        return st.integers(math.ceil(lo), int(hi)) if integer else st.floats(lo, hi, allow_nan=False)

    x1, y1 = draw(number(0, width - min_side)), draw(number(0, height - min_side))
    x2, y2 = draw(number(min(x1 + min_side, width), width)), draw(number(min(y1 + min_side, height), height))
    return [x1, y1, x2, y2]


@st.composite
def image_and_box(draw, integer: bool = True):
    width, height = draw(sizes)
    return width, height, draw(boxes(width, height, integer=integer))


@given(boxes(), boxes())
def test_iou_is_symmetric_and_a_share(a, b):
    assert iou(a, b) == iou(b, a)
    assert 0.0 <= iou(a, b) <= 1.0


@given(boxes(min_side=1e-3))
def test_iou_of_a_box_with_itself_is_one(a):
    assert iou(a, a) == pytest.approx(1.0)


@given(boxes(), st.lists(boxes(), max_size=6))
def test_iou_many_agrees_with_iou_one_by_one(a, others):
    assert iou_many(a, others).tolist() == pytest.approx([iou(a, b) for b in others])


@settings(suppress_health_check=[HealthCheck.filter_too_much])  # most random box pairs are filtered out
@given(boxes(min_side=1e-3), boxes(min_side=1e-3))
def test_contains_implies_intersects_and_containment_bounds_iou(a, b):
    if contains(a, b):
        assert intersects(a, b)
        assert iou(a, b) == pytest.approx((b[2] - b[0]) * (b[3] - b[1]) / ((a[2] - a[0]) * (a[3] - a[1])))
    assert intersects(a, b) == intersects(b, a) == (iou(a, b) > 0)


@given(boxes())
def test_a_box_contains_its_centre(a):
    x, y = centre(a)
    assert contains(a, (x, y, x, y))


@given(st.tuples(coords, coords), st.tuples(coords, coords), st.tuples(coords, coords))
def test_distance_is_a_metric(p, q, r):
    assert distance(p, q) == distance(q, p) >= 0
    assert distance(p, p) == 0
    assert distance(p, r) <= distance(p, q) + distance(q, r) + 1e-9


@given(image_and_box())
def test_pixels_to_grid_and_back_covers_the_box_within_a_grid_cell(case):
    width, height, box = case
    back = grid_to_pixels(pixels_to_grid(box, width, height), width, height)
    assert contains(back, box)  # rounded outwards: what was in the box is still in it
    cell = max(width, height) / GRID  # one grid unit, in pixels
    assert all(abs(a - b) <= cell + 0.5 for a, b in zip(back, box, strict=True))
    if max(width, height) <= GRID:
        assert all(abs(a - b) <= 1 for a, b in zip(back, box, strict=True))  # within a pixel


@given(sizes.filter(lambda s: min(s) >= GRID), boxes(GRID, GRID, integer=True))
def test_grid_to_pixels_and_back_stays_within_a_grid_unit(size, grid):
    width, height = size
    back = pixels_to_grid(grid_to_pixels(grid, width, height), width, height)
    assert all(abs(a - b) <= 1 for a, b in zip(back, grid, strict=True))


@given(image_and_box(integer=False))
def test_grid_points_and_normalised_boxes_stay_on_the_image(case):
    width, height, box = case
    x, y = centre_grid(box, width, height)
    assert 0 <= x <= GRID and 0 <= y <= GRID
    assert all(0.0 <= v <= 1.0 for v in normalise(box, width, height))
    assert grid_to_pixels([-50, -50, GRID + 50, GRID + 50], width, height) == (0, 0, width, height)  # clamped


def test_known_values():
    assert pixels_to_grid([200, 100, 601, 400], 2000, 1000) == [100, 100, 301, 400]
    assert grid_to_pixels([301, 400, 100, 100], 2000, 1000) == (200, 100, 602, 400)  # corners in any order
    assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert iou_many([0, 0, 2, 2], np.array([[1, 1, 3, 3], [5, 5, 6, 6], [0, 0, 0, 0]])).tolist() == pytest.approx(
        [1 / 7, 0, 0]
    )
    assert centre_grid((100, 100, 120, 120), 2000, 1000) == (55, 110)
    assert distance((0, 0), (3, 4)) == 5
    assert not intersects((0, 0, 1, 1), (1, 0, 2, 1))  # touching edges share no area
    assert math.isclose(iou([0, 0, 1, 1], [0, 0, 1, 1]), 1.0)


def test_the_tool_uses_the_geometry_module_not_a_copy():
    for name in ("GRID", "grid_to_pixels", "pixels_to_grid", "normalise", "iou"):
        assert getattr(schemas.tool, name) is getattr(geometry, name)
