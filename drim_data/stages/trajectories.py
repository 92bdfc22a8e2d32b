"""Trajectories: multi-turn zoom dialogues that search, whose every tool call is executed on the image and stored.

The built-in trajectories (planned in `search`, narrated in `narration`) go from the global view to a coarse
region holding the target off its centre, then closer (coarse_to_fine); some need only one zoom (direct); some
first look at a same-class distractor, say why it is not the target, then find it (reflective); questions about
several objects zoom to each (multi_target). A model teacher can drive the zoom tool instead: each of its calls is
executed and the crop sent back, up to a turn limit.
"""

from __future__ import annotations

import json

from PIL import Image

from drim_data.errors import Drop
from drim_data.pixels.annotations import SINGLE_SQL
from drim_data.pixels.candidates import GENERIC
from drim_data.pixels.images import encode_jpeg, sha256
from drim_data.recipe import Recipe, even_spread, hash_share, sha256_json
from drim_data.stages.contract import Context, StageStats
from drim_data.stages.export import image_splits
from drim_data.stages.narration import Narrator
from drim_data.stages.questions import COLUMNS, Question
from drim_data.stages.search import (
    UNREFLECTIVE_TYPES,
    PlanRejected,
    Scene,
    contains,
    mistakable,
    plan,
    violations,
)
from drim_data.teacher.tasks import drive_trajectory
from schemas.answers import extract_answer, is_correct
from schemas.rows import message
from schemas.tables import validate_table
from schemas.tool import (
    SYSTEM_PROMPT,
    TOOL_NAME,
    ZOOM,
    global_view,
    global_view_scale,
    global_view_size,
    observation_text,
    tool_call,
)

NAME = "trajectories"
VERSION = "10"  # 3: a look-alike region inside a crowd box may be one of the class; 4: a `pixels` teacher gets
# views on its 28 px grid; 5: reflective picks among the SFT items of an even split; 6: a zoom is never wider than
# the widest that is still a zoom, and a share of each image's items tries one zoom first, taken in turn; 7: the
# reflective share goes to items with something to mistake for their target; 8: among the SFT items of a split
# taken question type by type; 9: a close zoom's context is counted in the objects it shows, not in the size of
# the group they make; 10: a question of where objects stand or which is longer shows an object too long for its
# shorter side to show at min_target_px whole, at the most detail that allows

PENDING = f"""
SELECT {COLUMNS}
FROM questions q JOIN verdicts v USING (question_id) JOIN images i USING (image_id)
WHERE v.kept AND q.question_id NOT IN (SELECT item_id FROM done WHERE stage = 'trajectories')
ORDER BY q.image_id, q.question_id
"""


def run(ctx: Context) -> StageStats:
    stats = StageStats(NAME)
    scenes: dict[str, Scene] = {}

    picks: dict[str, set[str]] = {}

    def handle(row: tuple) -> None:
        item = Question.from_row(row)
        if item.image_id not in scenes:
            scenes.clear()  # items come grouped by image
            scenes[item.image_id] = scene_of(ctx.con, item.image_id, item.width, item.height)
            picks.clear()
            picks.update(image_picks(ctx.con, item.image_id, ctx.recipe, scenes[item.image_id]))
        messages, turns, pattern = build(
            ctx.image(item.image_id),
            item,
            scenes[item.image_id],
            ctx.recipe,
            item.question_id in picks["reflective"],
            item.question_id in picks["single"],
        )
        store(ctx, stats, item, pattern, messages, turns)

    async def handle_with_model(row: tuple):
        item = Question.from_row(row)
        full = ctx.image(item.image_id)
        view = global_view(full, global_view_size(item.width, item.height, ctx.recipe.view.max_pixels))
        steps, final = await drive_trajectory(
            ctx.model(), full, view, item.question, ctx.recipe.teacher.max_turns, stage=NAME
        )
        pattern = judge(item, steps, final)  # a Drop: the runner records it
        messages, turns = conversation(item, steps, final, ctx.recipe.trajectories.crop_quality)
        return lambda: store(ctx, stats, item, pattern, messages, turns)

    if ctx.uses_model("trajectories"):
        ctx.for_each_pending_async(stats, PENDING, handle_with_model)
    else:
        ctx.for_each_pending(stats, PENDING, handle)
    return stats


def store(
    ctx: Context, stats: StageStats, item: Question, pattern: str, messages: list[dict], turns: list[dict]
) -> None:
    trajectory_id = sha256_json([messages, [t["crop_sha256"] for t in turns]])
    ctx.con.execute(
        "INSERT INTO trajectories VALUES (?, ?, ?, ?, ?)",
        [item.question_id, trajectory_id, pattern, json.dumps(messages), json.dumps([t["box_px"] for t in turns])],
    )
    for i, t in enumerate(turns):
        ctx.con.execute(
            "INSERT INTO observations VALUES (?, ?, ?, ?, ?, ?)",
            [item.question_id, i, json.dumps(t["bbox_2d"]), json.dumps(t["box_px"]), t["crop"], t["crop_sha256"]],
        )
    stats.count(f"pattern:{pattern}")


def judge(item: Question, steps: list[dict], final: str) -> str:
    """A model trajectory's pattern, or a Drop: it must end correct and its zooms reach every target."""
    if not is_correct(item.checker, extract_answer(final), item.answer):
        raise Drop("wrong_final_answer", f"{extract_answer(final)!r} vs {item.answer!r}")
    centres = [((t[0] + t[2]) / 2, (t[1] + t[3]) / 2) for t in item.targets]
    hits = [[contains(s["box_px"], (x, y, x, y)) for x, y in centres] for s in steps]
    if not steps or not all(any(h[i] for h in hits) for i in range(len(centres))):
        raise Drop("zoom_misses_target")
    if any(not any(hits[i]) and any(any(h) for h in hits[i + 1 :]) for i in range(len(hits))):
        return "reflective"  # a zoom that showed no target, recovered by a later one
    if len(centres) > 1:
        return "multi_target"
    return "coarse_to_fine" if len(steps) > 1 else "direct"


def conversation(item: Question, steps: list[dict], final: str, quality: int) -> tuple[list[dict], list[dict]]:
    """A model trajectory in the exported form: each crop inside its tool message."""
    messages = [message("system", SYSTEM_PROMPT), message("user", item.question, images=1)]
    turns = []
    for step in steps:
        grid = [round(v) for v in step["bbox"]]
        data = encode_jpeg(step["crop"], quality)
        turns.append({"bbox_2d": grid, "box_px": list(step["box_px"]), "crop": data, "crop_sha256": sha256(data)})
        messages.append(message("assistant", step["think"], tool_calls=[tool_call(grid)]))
        messages.append(message("tool", observation_text(grid, step["box_px"]), images=1, name=TOOL_NAME))
    messages.append(message("assistant", final))
    return messages, turns


def scene_of(con, image_id: str, width: int, height: int) -> Scene:
    """The image's annotated instances (and the colours their labeller recorded), the classes it boxes completely,
    its crowd boxes and its unlabelled mined regions."""
    annotations, crowds, colours = [], [], {}
    for label, single, colour, *box in con.execute(
        f"SELECT label, {SINGLE_SQL}, attributes->>'colour', x1, y1, x2, y2 FROM annotations WHERE image_id = ? "
        "ORDER BY x1, y1, x2, y2, label",
        [image_id],
    ).fetchall():
        (annotations if single else crowds).append((label, tuple(box)))
        if colour:
            colours[tuple(round(v) for v in box)] = colour
    complete = {
        r[0] for r in con.execute("SELECT label FROM complete_categories WHERE image_id = ?", [image_id]).fetchall()
    }
    lookalikes = [
        tuple(r)
        for r in con.execute(
            "SELECT x1, y1, x2, y2 FROM regions WHERE image_id = ? AND label = ? ORDER BY x1, y1, x2, y2",
            [image_id, GENERIC],
        ).fetchall()
    ]
    return Scene(width, height, annotations, frozenset(complete), lookalikes, crowds, colours)


def image_picks(con, image_id: str, recipe: Recipe, scene: Scene) -> dict[str, set[str]]:
    """The image's items that first look at a distractor ("reflective": `reflective_share` of those bound for SFT,
    taken among those with something to mistake for their target; only SFT shows a dialogue, an RL item's plain
    search still checks its answer) and those that try one zoom first ("single": `single_zoom_share` of all), each
    as many as an `even_spread` gives, so the shares hold for a handful of items."""
    kept = {
        q: (kind, label, [tuple(t) for t in json.loads(targets)])
        for q, kind, label, targets in con.execute(
            "SELECT question_id, question_type, label, target_boxes FROM questions JOIN verdicts USING (question_id) "
            "WHERE kept AND image_id = ?",
            [image_id],
        ).fetchall()
    }
    kinds = {q: kind for q, (kind, *_) in kept.items()}
    splits = image_splits(image_id, kept, recipe.export, kinds=kinds)  # over every kept item, as export splits them
    sft = [q for q, (kind, *_) in kept.items() if splits[q] == "sft" and kind not in UNREFLECTIVE_TYPES]
    cfg, salt = recipe.trajectories, ["reflective", image_id]
    able = [q for q in sft if mistakable(*kept[q], scene)]
    wanted = len(even_spread(sft, cfg.reflective_share, salt))
    return {
        "reflective": set(sorted(able, key=lambda q: hash_share([salt, q]))[:wanted]),
        "single": even_spread(kept, cfg.single_zoom_share, ["single", image_id]),
    }


def build(
    image: Image.Image,
    item: Question,
    scene: Scene,
    recipe: Recipe,
    reflective: bool | None = None,
    single: bool | None = None,
) -> tuple[list[dict], list[dict], str]:
    """Plan an item's zooms, execute each on the image, check the rules again on the real crops, and write the
    dialogue from what the crops show. Raises Drop when no plan obeys the rules or a measurement disagrees."""
    cfg, view_scale = recipe.trajectories, global_view_scale(item.width, item.height, recipe.view.max_pixels)
    try:
        zooms, pattern = plan(item, scene, cfg, view_scale, recipe.teacher.max_turns, reflective, single)
    except PlanRejected as exc:
        raise Drop(exc.reason, exc.detail) from None
    crops = [ZOOM.crop(image, z.box) for z in zooms]
    broken = violations(zooms, view_scale, recipe.teacher.max_turns, [c.size for c in crops])
    if broken:
        raise Drop(broken[0], f"executed: {[list(z.grid) for z in zooms]}")
    before, final = Narrator(item, scene, image, view_scale, recipe.view.min_resolvable_px).thinks(zooms, crops)
    messages = [message("system", SYSTEM_PROMPT), message("user", item.question, images=1)]
    turns = []
    for zoom, crop, think in zip(zooms, crops, before, strict=True):
        data = encode_jpeg(crop, cfg.crop_quality)
        turns.append({"bbox_2d": zoom.grid, "box_px": list(zoom.box), "crop": data, "crop_sha256": sha256(data)})
        messages.append(message("assistant", f"<think>{think}</think>", tool_calls=[tool_call(zoom.grid)]))
        messages.append(message("tool", observation_text(zoom.grid, zoom.box), images=1, name=TOOL_NAME))
    answer = f"<think>{final}</think>\n<answer>{item.answer}</answer>"
    if not is_correct(item.checker, extract_answer(answer), item.answer):
        raise Drop("wrong_final_answer", answer)
    messages.append(message("assistant", answer))
    return messages, turns, pattern


def replay(image: Image.Image, messages: list[dict], quality: int) -> list[str]:
    """Re-execute a stored trajectory's tool calls; the crops' hashes must equal the stored observations'."""
    hashes = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            crop, _ = ZOOM(image, json.loads(call["function"]["arguments"])["bbox_2d"])
            hashes.append(sha256(encode_jpeg(crop, quality)))
    return hashes


def validate(con) -> None:
    validate_table(con, "trajectories", "SELECT * FROM trajectories")
