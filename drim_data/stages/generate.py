"""Generate: questions for each mined image, from the built-in teacher or, when the recipe says so, a model.

A model teacher writes its questions on the zoomed crop of one region (or on the crops of two distant regions for
multi-target questions): hard to see in the full image, easy to check on the crop. Every call is kept in
`teacher_calls`.
"""

from __future__ import annotations

import json
import time

import numpy as np
from PIL import Image

from drim_data.errors import Drop
from drim_data.pixels.images import min_side_in_global_view
from drim_data.pixels.measure import measure
from drim_data.recipe import sha256_json, to_plain
from drim_data.stages.contract import Context, StageStats
from drim_data.teacher.builtin import ImageFacts, Region, centre_grid
from drim_data.teacher.tasks import write_pair_questions, write_questions
from drim_data.teacher.together import or_drop, together
from schemas.answers import with_options
from schemas.tables import validate_table
from schemas.tool import GRID, ZOOM, pixels_to_grid

NAME = "generate"
VERSION = "2"

PENDING = """
SELECT image_id, width, height FROM images
WHERE image_id IN (SELECT item_id FROM done WHERE stage = 'mine')
  AND (NOT {grounded} OR image_id IN (SELECT item_id FROM done WHERE stage = 'ground'))
  AND image_id NOT IN (SELECT item_id FROM done WHERE stage = 'generate')
ORDER BY image_id
"""
CONTEXT_SCALE = 3.0  # the crop a model writes on spans this many target sizes
MIN_PAIR_DISTANCE = 0.35 * GRID * 2**0.5  # multi-target pairs must be this far apart on the grid


def run(ctx: Context) -> StageStats:
    stats = StageStats(NAME)
    pending = PENDING.format(grounded=str(ctx.uses_model("ground")).lower())
    if ctx.uses_model("questions"):
        ctx.for_each_pending_async(stats, pending, lambda row: _generate_with_model(ctx, stats, *row))
    else:
        ctx.for_each_pending(stats, pending, lambda row: _generate(ctx, stats, *row))
    return stats


def referent(region: Region, width: int, height: int) -> str:
    x, y = centre_grid(region.box, width, height)
    return f"the {region.label.lower()} centred at ({x}, {y}) on a 0-1000 grid over the image"


def context_crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The target with its surroundings, upsampled by the zoom tool's rules, as the teacher sees it."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1], ZOOM.min_side_px) * CONTEXT_SCALE / 2
    grid = pixels_to_grid(
        [max(0, cx - half), max(0, cy - half), min(image.width, cx + half), min(image.height, cy + half)],
        image.width,
        image.height,
    )
    return ZOOM(image, grid)[0]


async def _generate_with_model(ctx: Context, stats: StageStats, image_id: str, width: int, height: int):
    image = ctx.image(image_id)
    facts = image_facts(ctx.con, image, image_id)
    teacher, per_image = ctx.model(), ctx.recipe.teacher.questions_per_image
    view = ctx.recipe.view  # paid questions only on regions verify will agree need a zoom
    small = [
        r
        for r in facts.regions
        if min_side_in_global_view([r.box], width, height, view.max_pixels) < view.min_resolvable_px
    ]
    scores = dict(ctx.con.execute("SELECT region_id, score FROM regions WHERE image_id = ?", [image_id]).fetchall())
    regions = sorted(small, key=lambda r: (-scores[r.region_id], r.region_id))[:per_image]
    crops = {r.region_id: context_crop(image, r.box) for r in regions}
    singles = [write_questions(teacher, crops[r.region_id], referent(r, width, height), 2, NAME) for r in regions]
    pairs = _distant_pairs(regions, width, height)[: max(1, per_image // 3)]
    doubles = [
        write_pair_questions(
            teacher,
            [crops[a.region_id], crops[b.region_id]],
            [referent(a, width, height), referent(b, width, height)],
            1,
            NAME,
        )
        for a, b in pairs
    ]
    # one region's bad reply costs that region, not the image; a failed or deferred call leaves the image pending
    replies = await together(*map(or_drop, [*singles, *doubles]))
    questions, rejected = [], []
    for targets, found in zip([[r] for r in regions] + [list(p) for p in pairs], replies, strict=True):
        if isinstance(found, Drop):
            rejected.append(("+".join(t.region_id for t in targets), found.reason, found.detail))
            continue
        for q in found:
            phrases = [referent(t, width, height) for t in targets]
            text = q["question"]
            if not all(p in text for p in phrases):
                text += " (" + " and ".join(f"Object {i + 1} is {p}" for i, p in enumerate(phrases)) + ".)"
            questions.append(
                {
                    "question_type": q["type"],
                    "question": with_options(text, q["options"]),
                    "options": q["options"],
                    "answer": q["answer"],
                    "checker": q["checker"],
                    "label": targets[0].label.lower(),
                    "target_region_ids": [t.region_id for t in targets],
                    "target_boxes": [list(t.box) for t in targets],
                    "referent": [list(centre_grid(t.box, width, height)) for t in targets],
                }
            )

    def write() -> None:
        for item_id, reason, detail in rejected:
            ctx.drop(stats, item_id, reason, detail)
        if not questions:
            ctx.drop(stats, image_id, "no_questions")
        for q in questions:
            _insert_question(ctx, stats, image_id, q)

    return write


def _distant_pairs(regions: list[Region], width: int, height: int) -> list[tuple[Region, Region]]:
    pairs = []
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            (ax, ay), (bx, by) = centre_grid(a.box, width, height), centre_grid(b.box, width, height)
            if ((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5 >= MIN_PAIR_DISTANCE:
                pairs.append((a, b))
    return pairs


def _insert_question(ctx: Context, stats: StageStats, image_id: str, q: dict) -> None:
    question_id = sha256_json([image_id, q["question"], q["answer"]])[:24]
    ctx.con.execute(
        "INSERT OR IGNORE INTO questions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            question_id,
            image_id,
            q["question_type"],
            q["question"],
            json.dumps(q["options"]),
            q["answer"],
            q["checker"],
            q["label"],
            json.dumps(q["target_region_ids"]),
            json.dumps(q["target_boxes"]),
            json.dumps(q["referent"]),
        ],
    )
    stats.count(f"questions:{q['question_type']}")


def image_facts(con, image: Image.Image, image_id: str) -> ImageFacts:
    """The image's kept regions, each measured on its full-resolution pixels, and its annotated boxes."""
    regions = []
    for rid, label, *box in con.execute(
        "SELECT region_id, label, x1, y1, x2, y2 FROM regions WHERE image_id = ? ORDER BY region_id", [image_id]
    ).fetchall():
        m = measure(np.asarray(image.crop(box)))
        regions.append(Region(rid, label, tuple(box), m.colour, m.colour_share, m.brightness))
    annotations = [
        (label, (x1, y1, x2, y2))
        for label, x1, y1, x2, y2 in con.execute(
            "SELECT label, x1, y1, x2, y2 FROM annotations WHERE image_id = ? ORDER BY x1, y1, x2, y2", [image_id]
        ).fetchall()
    ]
    return ImageFacts(image_id, image.width, image.height, regions, annotations)


def _generate(ctx: Context, stats: StageStats, image_id: str, width: int, height: int) -> None:
    facts = image_facts(ctx.con, ctx.image(image_id), image_id)
    teacher, cfg = ctx.teacher, ctx.recipe.generate
    request = {
        "image_id": image_id,
        "regions": [r.region_id for r in facts.regions],
        "annotations": len(facts.annotations),
        "settings": to_plain(cfg),
    }
    started = time.perf_counter()
    questions = teacher.write_questions(facts, cfg)
    ctx.log_teacher_call(
        NAME,
        teacher.model,
        "write_questions",
        request,
        questions,
        time.perf_counter() - started,
        teacher.prompt_version,
    )
    if not questions:
        ctx.drop(stats, image_id, "no_questions")
    for q in questions:
        _insert_question(ctx, stats, image_id, q)


def validate(con) -> None:
    validate_table(con, "questions", "SELECT * FROM questions")
