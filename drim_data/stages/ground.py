"""Ground: a model teacher lists small, single-instance objects on overlapping tiles of each image.

Boxes come back in the teacher's own convention over the tile as sent, are mapped to original pixels
(teacher/boxes.py), filtered like mined regions, and merged with the miner's candidates: a teacher box that
overlaps an existing candidate adds nothing but its label, and one that another object could be taken for is
dropped, by mine's uniqueness rule.
"""

from __future__ import annotations

from collections.abc import Callable

from drim_data.errors import Drop
from drim_data.pixels.candidates import GENERIC, ambiguous, region_problem
from drim_data.recipe import sha256_json
from drim_data.stages.contract import Context, StageStats
from drim_data.teacher.tasks import ground_tile
from drim_data.teacher.together import or_drop, together
from schemas.geometry import centre_grid, iou
from schemas.tables import validate_table

NAME = "ground"
VERSION = "3"  # 3: a `pixels` teacher gets tiles on its 28 px grid
OVERLAP = 0.2  # tiles overlap so that an object on a tile edge is whole in a neighbour
MERGE_IOU = 0.5  # a teacher box overlapping a region more than this is the same object

PENDING = """
SELECT image_id, width, height FROM images
WHERE image_id IN (SELECT item_id FROM done WHERE stage = 'mine')
  AND image_id NOT IN (SELECT item_id FROM done WHERE stage = 'ground')
ORDER BY image_id
"""


def run(ctx: Context) -> StageStats:
    stats = StageStats(NAME)
    if ctx.uses_model("ground"):
        ctx.for_each_pending_async(stats, PENDING, lambda row: _ground(ctx, stats, *row))
    return stats


def tiles(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """grid x grid overlapping tiles covering the image."""
    tw, th = width / (grid - (grid - 1) * OVERLAP), height / (grid - (grid - 1) * OVERLAP)
    boxes = []
    for row in range(grid):
        for col in range(grid):
            x1, y1 = round(col * tw * (1 - OVERLAP)), round(row * th * (1 - OVERLAP))
            boxes.append((x1, y1, min(width, round(x1 + tw)), min(height, round(y1 + th))))
    return boxes


async def _ground(ctx: Context, stats: StageStats, image_id: str, width: int, height: int):
    image = ctx.image(image_id)
    teacher = ctx.model()
    boxes = tiles(width, height, ctx.recipe.teacher.tile_grid)
    # one unreadable tile costs that tile's boxes; a failed request leaves the whole image for the next run
    replies = await together(*(or_drop(ground_tile(teacher, image, t, 8, NAME)) for t in boxes))
    lost = [(index, reply) for index, reply in enumerate(replies) if isinstance(reply, Drop)]
    found = [obj for objects in replies if not isinstance(objects, Drop) for obj in objects]
    existing = ctx.con.execute(
        "SELECT region_id, x1, y1, x2, y2 FROM regions WHERE image_id = ?", [image_id]
    ).fetchall()

    def write() -> None:
        """Merge the teacher's boxes with the image's regions. A box over an existing region (IoU above MERGE_IOU)
        is that object, so it only names a generic proposal; a box another object could be taken for (mine's
        uniqueness rule) is dropped as `not_unique`, the object already there staying."""
        radius = ctx.recipe.mine.unique_radius
        rows = ctx.con.execute("SELECT region_id, label FROM regions WHERE image_id = ?", [image_id]).fetchall()
        labels = dict(rows)
        kept: list[tuple[str, tuple]] = []
        for label, box in found:
            region_id = sha256_json([image_id, "teacher", label, list(box)])[:24]
            problem = region_problem(box, width, height, ctx.recipe.mine, ctx.recipe.view)
            if problem is None and any(iou(box, k) > MERGE_IOU for _, k in kept):
                problem = "duplicate_of_teacher_box"
            match = None if problem else next((rid for rid, *e in existing if iou(box, e) > MERGE_IOU), None)
            if match is not None:
                ctx.con.execute(
                    "UPDATE regions SET label = ? WHERE region_id = ? AND label = ?", [label, match, GENERIC]
                )
                if labels.get(match) == GENERIC:
                    labels[match] = label
                stats.count("labelled_existing")
                continue
            others = [(labels.get(rid, GENERIC), e) for rid, *e in existing] + kept
            here = _on_grid([(label, box)], width, height)
            if problem is None and ambiguous(here, _on_grid(others, width, height), radius):
                problem = "not_unique"
            if problem:
                ctx.drop(stats, region_id, problem)
                continue
            row = [region_id, image_id, label, *box]
            ctx.con.execute("INSERT OR IGNORE INTO regions VALUES (?, ?, 'teacher', ?, ?, ?, ?, ?, 1.0)", row)
            kept.append((label, box))
        stats.count("regions", len(kept))

    return _with_lost_tiles(ctx, stats, image_id, lost, write)


def _with_lost_tiles(
    ctx: Context, stats: StageStats, image_id: str, lost: list[tuple[int, Drop]], write: Callable[[], None]
) -> Callable[[], None]:
    """The image's writer, recording each unreadable tile as a drop of its own (image id and tile index)."""

    def write_all() -> None:
        for index, drop in lost:
            ctx.drop(stats, f"{image_id}:tile{index}", drop.reason, drop.detail)
        write()

    return write_all


def _on_grid(objects: list[tuple[str, tuple]], width: int, height: int) -> list[tuple[str, tuple[int, int]]]:
    """(label, pixel box) -> (label, centre on the grid), as the uniqueness rule compares them."""
    return [(label, centre_grid(box, width, height)) for label, box in objects]


def validate(con) -> None:
    validate_table(con, "regions", "SELECT * FROM regions")
