"""Name: a model teacher names the unlabelled proposals, or rejects them, so that later stages have named referents.

Each proposal (best scored first, `teacher.names_per_image` of them) is shown as one close-up: the box padded by
half its size on every side and outlined. That context tells one whole object from a part of one, a crowd, texture
or background; the downscaled whole image would add tokens, not information, about a few-pixel object (whether
its name picks it out in the whole image is what verify's validator checks). The teacher gives a class, whether
the outline holds one whole object and a short description that tells it apart, or a reason to reject it. A named
proposal takes the class as its label; a rejected one, one that is not one whole object, and one whose reply is
unusable leave the regions table, each with its reason. `names` keeps every proposal it looked at as mining wrote
it, so that a reset puts them back.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from drim_data.errors import Drop
from drim_data.pixels.candidates import GENERIC
from drim_data.stages.contract import Context, StageStats
from drim_data.stages.generate import OUTLINES
from drim_data.teacher.tasks import name_region
from drim_data.teacher.together import or_drop, together
from schemas.tables import validate_table
from schemas.tool import ZOOM

NAME = "name"
VERSION = "1"
PAD = 0.5  # context on each side of the box, as a share of its longer side

PENDING = """
SELECT image_id FROM images
WHERE image_id IN (SELECT item_id FROM done WHERE stage = 'mine')
  AND (NOT {grounded} OR image_id IN (SELECT item_id FROM done WHERE stage = 'ground'))
  AND image_id NOT IN (SELECT item_id FROM done WHERE stage = 'name')
ORDER BY image_id
"""
PROPOSALS = """
SELECT region_id, x1, y1, x2, y2, score FROM regions
WHERE image_id = ? AND source = 'proposal' AND label = ?
ORDER BY score DESC, region_id LIMIT ?
"""


def run(ctx: Context) -> StageStats:
    stats = StageStats(NAME)
    if ctx.uses_model("name"):
        pending = PENDING.format(grounded=str(ctx.uses_model("ground")).lower())
        ctx.for_each_pending_async(stats, pending, lambda row: _name(ctx, stats, row[0]))
    return stats


def marked_crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The box with PAD of context on each side (at least the zoom tool's smallest box), upsampled by the zoom
    tool's rules, with the box outlined just outside its edges."""
    side = max(box[2] - box[0], box[3] - box[1], ZOOM.min_side_px) * (1 + 2 * PAD)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    x1, y1 = min(image.width, round(cx + side / 2)), min(image.height, round(cy + side / 2))
    crop = ZOOM.crop(image, (x0, y0, x1, y1))
    sx, sy = crop.width / (x1 - x0), crop.height / (y1 - y0)
    ImageDraw.Draw(crop).rectangle(
        [(box[0] - x0) * sx - 4, (box[1] - y0) * sy - 4, (box[2] - x0) * sx + 4, (box[3] - y0) * sy + 4],
        outline=OUTLINES[0],
        width=3,
    )
    return crop


async def _name(ctx: Context, stats: StageStats, image_id: str):
    proposals = ctx.con.execute(PROPOSALS, [image_id, GENERIC, ctx.recipe.teacher.names_per_image]).fetchall()
    replies: list = []
    if proposals:
        image, teacher = ctx.image(image_id), ctx.model()
        # one unusable reply costs that proposal; a failed request leaves the whole image for the next run
        replies = await together(*(or_drop(name_region(teacher, marked_crop(image, p[1:5]), NAME)) for p in proposals))

    def write() -> None:
        for (region_id, *row), found in zip(proposals, replies, strict=True):
            if isinstance(found, Drop):
                reason, detail = found.reason, found.detail
            elif "reject" in found:
                reason, detail = "not_an_object", found["reject"]
            elif not found["whole"]:
                reason, detail = "not_one_object", f"{found['label']}: {found['description']}"
            else:
                ctx.con.execute("UPDATE regions SET label = ? WHERE region_id = ?", [found["label"], region_id])
                kept = [region_id, image_id, *row, found["label"], found["description"]]
                ctx.con.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", kept)
                stats.count("named")
                continue
            ctx.con.execute("DELETE FROM regions WHERE region_id = ?", [region_id])
            removed = [region_id, image_id, *row, None, None]
            ctx.con.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", removed)
            ctx.drop(stats, region_id, reason, detail)

    return write


def validate(con) -> None:
    validate_table(con, "regions", "SELECT * FROM regions")
