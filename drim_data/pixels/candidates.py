"""Mining one image, in a worker process: propose on a reduced decode, filter with reasons.

Mining never holds an image's full-size pixels: proposals need only a reduced view, and what is measured on a
region's full-resolution pixels is measured where questions are written, for the regions kept. Everything here
is a function of the image's bytes, its annotation boxes and the settings alone, so the regions do not depend on
how many workers ran or in which order.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from drim_data.errors import Drop
from drim_data.pixels.images import reduced
from drim_data.pixels.proposer import propose
from drim_data.pixels.sources import ImageRef, read_image
from drim_data.recipe import MineConfig, ViewConfig, sha256_json
from schemas.geometry import centre_grid, iou_many
from schemas.tool import global_view_scale

GENERIC = "object"  # the label of a proposal: it could be anything, so it is ambiguous next to anything
DUPLICATE_IOU = 0.3  # a proposal overlapping an annotation box more than this is the same object
VIEW_MIN_PX = 3  # the smallest object sought spans at least this many pixels of the view it is proposed on


@dataclass(frozen=True)
class Job:
    image_id: str
    ref: ImageRef  # read by the worker, and only when proposals need the pixels
    width: int
    height: int
    annotations: list[tuple]  # (label, x1, y1, x2, y2) in pixels
    cfg: MineConfig
    view: ViewConfig


@dataclass(frozen=True)
class Candidate:
    source: str
    label: str
    box: tuple[int, int, int, int]
    score: float


@dataclass
class Mined:
    image_id: str
    regions: list[tuple] = field(default_factory=list)  # rows of the regions table
    drops: list[tuple[str, str]] = field(default_factory=list)  # (region_id, reason)
    error: str | None = None
    dropped: tuple[str, str] | None = None  # (reason, detail): the image itself, e.g. its source is gone


def mine_image(job: Job) -> Mined:
    """Regions and drops for one image; an unexpected error is returned, not raised, so the run goes on."""
    try:
        return _mine(job)
    except Drop as exc:
        return Mined(job.image_id, dropped=(exc.reason, exc.detail))
    except Exception as exc:
        return Mined(job.image_id, error="".join(traceback.format_exception_only(exc)).strip())


def region_problem(
    box: tuple[int, int, int, int], width: int, height: int, cfg: MineConfig, view: ViewConfig
) -> str | None:
    """Why a candidate box is not a usable small-object region, or None."""
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1) / (width * height)
    if area > cfg.max_area_frac:
        return "too_large"
    if area < cfg.min_area_frac or min(x2 - x1, y2 - y1) < cfg.min_side_px:
        return "too_small"
    if x1 < cfg.border_px or y1 < cfg.border_px or x2 > width - cfg.border_px or y2 > height - cfg.border_px:
        return "at_border"
    if min(x2 - x1, y2 - y1) >= max_hidden_side(width, height, view):
        return "visible_without_zoom"
    return None


def confusable(
    labels: Sequence[str], points: np.ndarray, other_labels: Sequence[str], other_points: np.ndarray, radius: int
) -> np.ndarray:
    """The uniqueness rule, for mine, ground and verify: an (n, m) matrix of whether the j-th other object could be
    taken for the i-th referent, named by its label and its centre on the grid.

    It could when it is centred within `radius` of the referent and carries the referent's label, or any label if
    the referent is a generic proposal. A labelled box is taken to be the only one of its label there, as
    annotations and teachers label every instance; an unlabelled blob could be anything, even another of them.
    Centres are compared on the 0..1000 grid, where questions point at their referents. Radius 0: no check.
    """
    points, other_points = np.reshape(points, (-1, 2)), np.reshape(other_points, (-1, 2))
    if radius <= 0:
        return np.zeros((len(points), len(other_points)), bool)
    labels = np.array([label.lower() for label in labels], dtype=str)
    others = np.array([label.lower() for label in other_labels], dtype=str)
    close = ((points[:, None, :] - other_points[None, :, :]) ** 2).sum(axis=2) < radius**2
    related = (labels[:, None] == others[None, :]) | (labels == GENERIC)[:, None]
    return close & related


def grid_centres(boxes: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    return np.array([centre_grid(b, width, height) for b in boxes], float).reshape(-1, 2)


def not_unique(candidates: list[Candidate], width: int, height: int, radius: int) -> np.ndarray:
    """For each candidate, whether another candidate could be taken for it (`confusable`)."""
    n = len(candidates)
    centres = grid_centres([c.box for c in candidates], width, height)
    labels = [c.label for c in candidates]
    found = np.zeros(n, bool)
    for start in range(0, n, 1024):  # blocks of rows keep the pairwise matrix small for thousands of boxes
        rows = slice(start, min(n, start + 1024))
        close = confusable(labels[rows], centres[rows], labels, centres, radius)
        close[np.arange(close.shape[0]), np.arange(start, rows.stop)] = False  # not itself
        found[rows] = close.any(axis=1)
    return found


def ambiguous(
    referents: Sequence[tuple[str, Sequence[float]]], others: Sequence[tuple[str, Sequence[float]]], radius: int
) -> bool:
    """Whether any (label, grid point) referent could be taken for one of the other (label, grid point) objects."""
    if not referents or not others:
        return False
    labels, points = zip(*referents, strict=True)
    other_labels, other_points = zip(*others, strict=True)
    return bool(confusable(labels, np.array(points, float), other_labels, np.array(other_points, float), radius).any())


def proposal_factor(width: int, height: int, cfg: MineConfig) -> int:
    """The power of two the image is reduced by before proposing, so that proposing costs a fraction of decoding.

    The smallest objects sought keep VIEW_MIN_PX or more in the view (the finest blob the scale space resolves),
    and the view stays within `proposal_max_side`.
    """
    low = max(cfg.min_side_px, cfg.proposal_min_side_px, math.sqrt(cfg.min_area_frac * width * height))
    factor = 1
    while 2 * factor * VIEW_MIN_PX <= low or max(width, height) > factor * cfg.proposal_max_side:
        factor *= 2
    return factor


def side_range(width: int, height: int, cfg: MineConfig, view: ViewConfig) -> tuple[float, float]:
    """The box sides, in pixels, a proposal may have to pass the filters."""
    pixels = width * height
    low = max(cfg.min_side_px, cfg.proposal_min_side_px, math.sqrt(cfg.min_area_frac * pixels))
    return low, min(math.sqrt(cfg.max_area_frac * pixels), max_hidden_side(width, height, view))


def proposals(ref: ImageRef, width: int, height: int, cfg: MineConfig, view: ViewConfig) -> list[Candidate]:
    """Proposals on an image; one whose objects all show in the model's view is not read or decoded."""
    low, high = side_range(width, height, cfg, view)
    if low > high:
        return []
    factor = proposal_factor(width, height, cfg)
    view = np.asarray(reduced(read_image(ref), factor))
    # as `region_problem` filters: the shorter side under the view's cap, the area under max_area_frac, so a long
    # hull or a standing person the view does not resolve across is sought whatever its length
    largest = math.sqrt(cfg.max_area_frac * width * height)
    found = propose(view, cfg.top_k, low / factor, high / factor, max_size=largest / factor)
    return [
        Candidate("proposal", GENERIC, tuple(round(v * factor) for v in box[:4]), round(float(box[4]), 4))
        for box in found
    ]


def max_hidden_side(width: int, height: int, view: ViewConfig) -> float:
    """Targets narrower than this (in pixels) shrink below `min_resolvable_px` in the model's global view."""
    if view.min_resolvable_px <= 0:
        return math.inf
    return view.min_resolvable_px / global_view_scale(width, height, view.max_pixels)


def _mine(job: Job) -> Mined:
    cfg, width, height = job.cfg, job.width, job.height
    candidates = []
    if "annotations" in cfg.sources:
        for label, *box in job.annotations:
            x1, y1, x2, y2 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
            clamped = (max(x1, 0), max(y1, 0), min(x2, width), min(y2, height))
            candidates.append(Candidate("annotation", label, clamped, 1.0))
    if "proposals" in cfg.sources and (cfg.proposals_on_annotated or not candidates):
        candidates += proposals(job.ref, width, height, cfg, job.view)

    reasons: list[str | None] = [region_problem(c.box, width, height, cfg, job.view) for c in candidates]
    annotated = np.array([c.box for c in candidates if c.source == "annotation"], float).reshape(-1, 4)
    for i, c in enumerate(candidates):
        if c.source == "proposal" and len(annotated) and iou_many(c.box, annotated).max() > DUPLICATE_IOU:
            reasons[i] = reasons[i] or "duplicate"
    distinct = [i for i, c in enumerate(candidates) if reasons[i] != "duplicate"]
    crowded = not_unique([candidates[i] for i in distinct], width, height, cfg.unique_radius)
    for i, is_crowded in zip(distinct, crowded, strict=True):
        if is_crowded:
            reasons[i] = reasons[i] or "not_unique"

    mined = Mined(job.image_id)
    for c, reason in zip(candidates, reasons, strict=True):
        region_id = sha256_json([job.image_id, c.source, c.label, list(c.box)])[:24]
        if reason:
            mined.drops.append((region_id, reason))
            continue
        mined.regions.append((region_id, job.image_id, c.source, c.label, *c.box, c.score))
    return mined
