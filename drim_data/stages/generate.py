"""Generate: questions for each mined image, from the built-in teacher or, when the recipe says so, a model.

The built-in teacher is handed every object the annotations name, each with the colour measured on its own
full-resolution pixels and, for signs, what OCR reads there; it asks about the ones mining kept as small targets.
A model teacher is shown the whole view with the region outlined and its zoomed crop, told the region's class when
it has one (and the description `name` gave it), and writes its own referring expression: no prompt names a place
by coordinates. Every call is kept in `teacher_calls`.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
from PIL import Image, ImageDraw

from drim_data.errors import Drop
from drim_data.pixels.annotations import CROWD
from drim_data.pixels.images import min_side_in_global_view
from drim_data.pixels.palette import colour_name, object_pixels
from drim_data.pixels.solver import identifiable_in_view
from drim_data.recipe import ViewConfig, sha256_json, to_plain
from drim_data.stages.contract import Context, StageStats
from drim_data.teacher.builtin import GENERIC, ImageFacts, Instance, centre_grid
from drim_data.teacher.tasks import write_pair_questions, write_questions
from drim_data.teacher.together import or_drop, together
from schemas.answers import with_options
from schemas.tables import validate_table
from schemas.tool import GRID, ZOOM, global_view, global_view_size, pixels_to_grid

try:  # the text type needs OCR; without it no text question is written
    from drim_data.pixels.ocr import read_text
except ImportError:
    read_text = None

NAME = "generate"
VERSION = "11"  # 4: relative position offers no relation that could be true as well; 5: referents only of
# classes boxed completely, and true whatever a crowd box of the class hides; 6: an object across an area line is
# on both sides of it; 7: a slim object that stands out is recognised in the view by its length; 8: recognition; 9: an
# extreme ("the leftmost ship in the top half") holds whether or not one on the area's edge is counted in it; 10: a
# slim object's length is read along the object, however it lies in its box, and 2 px across is found; 11: each
# question type draws from a random stream of its own

PENDING = """
SELECT image_id, width, height FROM images
WHERE image_id IN (SELECT item_id FROM done WHERE stage = 'mine')
  AND (NOT {grounded} OR image_id IN (SELECT item_id FROM done WHERE stage = 'ground'))
  AND (NOT {named} OR image_id IN (SELECT item_id FROM done WHERE stage = 'name'))
  AND image_id NOT IN (SELECT item_id FROM done WHERE stage = 'generate')
ORDER BY image_id
"""
CONTEXT_SCALE = 3.0  # the crop a model writes on spans this many target sizes
MIN_PAIR_DISTANCE = 0.35 * GRID * 2**0.5  # multi-target pairs must be this far apart on the grid
OUTLINES = ((255, 0, 255), (0, 255, 255))


def run(ctx: Context) -> StageStats:
    stats = StageStats(NAME)
    pending = PENDING.format(grounded=str(ctx.uses_model("ground")).lower(), named=str(ctx.uses_model("name")).lower())
    if ctx.uses_model("questions"):
        ctx.for_each_pending_async(stats, pending, lambda row: _generate_with_model(ctx, stats, *row))
    else:
        ctx.for_each_pending(stats, pending, lambda row: _generate(ctx, stats, *row))
    return stats


def referent(region: Instance) -> str | None:
    """What a model teacher is told the region is: its class, when it has one; never where it is."""
    return None if region.label.lower() == GENERIC else region.label.lower()


def outlined(view: Image.Image, boxes: list[tuple], width: int, height: int) -> Image.Image:
    """The whole view with each region outlined (magenta, then cyan), so a teacher knows which object it names."""
    marked = view.copy()
    draw = ImageDraw.Draw(marked)
    sx, sy = view.width / width, view.height / height
    for box, colour in zip(boxes, OUTLINES, strict=False):
        pad = 4
        draw.rectangle(
            [box[0] * sx - pad, box[1] * sy - pad, box[2] * sx + pad, box[3] * sy + pad], outline=colour, width=4
        )
    return marked


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
    facts = image_facts(ctx.con, image, image_id, ctx.recipe.view)
    teacher, per_image = ctx.model(), ctx.recipe.teacher.questions_per_image
    view = ctx.recipe.view  # paid questions only on regions verify will agree need a zoom
    small = [
        r
        for r in facts.instances
        if r.region_id and min_side_in_global_view([r.box], width, height, view.max_pixels) < view.min_resolvable_px
    ]
    scores = dict(ctx.con.execute("SELECT region_id, score FROM regions WHERE image_id = ?", [image_id]).fetchall())
    regions = sorted(small, key=lambda r: (-scores[r.region_id], r.region_id))[:per_image]
    whole = global_view(image, global_view_size(width, height, view.max_pixels))
    crops = {r.region_id: context_crop(image, r.box) for r in regions}
    notes = dict(ctx.con.execute("SELECT region_id, description FROM names WHERE image_id = ?", [image_id]).fetchall())
    singles = [
        write_questions(
            teacher,
            outlined(whole, [r.box], width, height),
            crops[r.region_id],
            referent(r),
            2,
            NAME,
            notes.get(r.region_id) or "",
        )
        for r in regions
    ]
    pairs = _distant_pairs(regions, width, height)[: max(1, per_image // 3)]
    doubles = [
        write_pair_questions(
            teacher,
            outlined(whole, [a.box, b.box], width, height),
            [crops[a.region_id], crops[b.region_id]],
            [referent(a), referent(b)],
            1,
            NAME,
            (notes.get(a.region_id) or "", notes.get(b.region_id) or ""),
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
        names, written = found
        for q in written:
            questions.append(
                {
                    "question_type": q["type"],
                    "question": with_options(q["question"], q["options"]),
                    "options": q["options"],
                    "answer": q["answer"],
                    "checker": q["checker"],
                    "label": next((t.label.lower() for t in targets if referent(t)), GENERIC),
                    "target_region_ids": [t.region_id for t in targets],
                    "target_boxes": [[round(v) for v in t.box] for t in targets],
                    "referent": names,
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


def _distant_pairs(regions: list[Instance], width: int, height: int) -> list[tuple[Instance, Instance]]:
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


def image_facts(con, image: Image.Image, image_id: str, view: ViewConfig) -> ImageFacts:
    """Every named object of the image, measured on its full-resolution pixels, with the mined regions marked.

    Annotated boxes come with what the labeller recorded (colour, text, confidence); a sign's text is read again
    by OCR. A crowd box joins as what it is, an area that may hold more of its class. A region that matches no
    annotation (a proposal, or a teacher's box) joins with its own label.
    """
    regions = con.execute(
        "SELECT region_id, label, x1, y1, x2, y2 FROM regions WHERE image_id = ? ORDER BY region_id", [image_id]
    ).fetchall()
    by_box = {(label, tuple(box)): rid for rid, label, *box in regions}
    seen = np.asarray(global_view(image, global_view_size(image.width, image.height, view.max_pixels)))
    instances, matched = [], set()
    for label, x1, y1, x2, y2, attributes in con.execute(
        "SELECT label, x1, y1, x2, y2, attributes FROM annotations WHERE image_id = ? ORDER BY x1, y1, x2, y2, label",
        [image_id],
    ).fetchall():
        attrs = json.loads(attributes) if attributes else {}
        box = (x1, y1, x2, y2)
        if attrs.get(CROWD):
            instances.append(Instance(label, box, sure=False, crowd=True))
            continue
        mined = (
            max(0, math.floor(x1)),
            max(0, math.floor(y1)),
            min(math.ceil(x2), image.width),
            min(math.ceil(y2), image.height),
        )
        rid = by_box.get((label, mined))
        matched.add(rid)
        instances.append(_instance(image, label, box, attrs, rid, view, seen))
    for rid, label, *box in regions:
        if rid not in matched:
            instances.append(_instance(image, label, tuple(box), {}, rid, view, seen))
    complete = {
        label
        for (label,) in con.execute("SELECT label FROM complete_categories WHERE image_id = ?", [image_id]).fetchall()
    }
    return ImageFacts(image_id, image.width, image.height, instances, frozenset(complete))


def _instance(
    image: Image.Image, label: str, box: tuple, attrs: dict, rid: str | None, view: ViewConfig, seen: np.ndarray
) -> Instance:
    """One object, measured at full resolution; `seen` is the global view's pixels, where it may be recognised."""
    colour, share = colour_name(object_pixels(*_patch(image, box)))
    text = attrs.get("text") if isinstance(attrs.get("text"), str) else None
    return Instance(
        label=label,
        box=tuple(float(v) for v in box),
        sure=attrs.get("confidence") != "likely" and label.lower() != GENERIC,
        colour=colour,
        colour_share=share,
        recorded_colour=attrs.get("colour") if isinstance(attrs.get("colour"), str) else None,
        text=text,
        ocr_text=ocr_reading(image, box) if text and rid and read_text is not None else None,
        region_id=rid,
        small=view.min_resolvable_px <= 0
        or min_side_in_global_view([box], image.width, image.height, view.max_pixels) < view.min_resolvable_px
        and not identifiable_in_view(box, seen, image.width, image.height),
    )


def _patch(image: Image.Image, box: tuple) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The box's pixels and the box within them. Only the crop becomes an array: the whole of a 100-megapixel image
    as one would be another 300 MB beside the decoded image."""
    x1, x2 = (min(max(round(v), 0), image.width) for v in (box[0], box[2]))
    y1, y2 = (min(max(round(v), 0), image.height) for v in (box[1], box[3]))
    x2, y2 = max(x1, x2), max(y1, y2)
    return np.asarray(image.crop((x1, y1, x2, y2))), (0, 0, x2 - x1, y2 - y1)


def ocr_reading(image: Image.Image, box: tuple) -> str:
    """What OCR reads in a box at full resolution, with a margin of half its height so no letter is cut."""
    pad = (box[3] - box[1]) / 2
    crop = image.crop(
        (max(0, box[0] - pad), max(0, box[1] - pad), min(image.width, box[2] + pad), min(image.height, box[3] + pad))
    )
    return " ".join(line.text for line in read_text(crop))


NAMED_REGIONS = "SELECT count(*) FROM regions WHERE image_id = ? AND lower(label) != ?"


def _generate(ctx: Context, stats: StageStats, image_id: str, width: int, height: int) -> None:
    if not ctx.con.execute(NAMED_REGIONS, [image_id, GENERIC]).fetchone()[0]:
        ctx.drop(stats, image_id, "no_questions", "no named region")  # nothing to ask: not worth a decode
        return
    facts = image_facts(ctx.con, ctx.image(image_id), image_id, ctx.recipe.view)
    teacher, cfg = ctx.teacher, ctx.recipe.generate
    request = {
        "image_id": image_id,
        "targets": sorted(i.region_id for i in facts.instances if i.region_id),
        "instances": len(facts.instances),
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
