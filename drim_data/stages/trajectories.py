"""Trajectories: multi-turn zoom dialogues whose every tool call is executed on the image and stored.

Patterns: coarse-to-fine (a context zoom, then a tight one), reflective (a zoom that misses, noticed, then the
right one) and multi-target (one zoom per object). A trajectory is kept only when each on-target zoom really
contains its target, each miss really misses, and the final answer checks out. A model teacher can drive the
zoom tool instead: each of its calls is executed and the crop sent back, up to a turn limit.
"""

from __future__ import annotations

import json

from PIL import Image

from drim_data.pixels.images import encode_jpeg, sha256
from drim_data.recipe import TrajectoryConfig, sha256_json
from drim_data.stages.contract import Context, StageStats
from drim_data.stages.questions import COLUMNS, Question
from drim_data.teacher.tasks import drive_trajectory
from schemas.answers import extract_answer, is_correct
from schemas.rows import message
from schemas.tables import validate_table
from schemas.tool import (
    GRID,
    SYSTEM_PROMPT,
    TOOL_NAME,
    ZOOM,
    ZoomError,
    global_view,
    global_view_size,
    observation_text,
    pixels_to_grid,
    tool_call,
)

NAME = "trajectories"
VERSION = "1"

PENDING = f"""
SELECT {COLUMNS}
FROM questions q JOIN verdicts v USING (question_id) JOIN images i USING (image_id)
WHERE v.kept AND q.question_id NOT IN (SELECT item_id FROM done WHERE stage = 'trajectories')
ORDER BY q.image_id, q.question_id
"""


class TrajectoryRejected(Exception):
    pass


def run(ctx: Context) -> StageStats:
    stats = StageStats(NAME)

    def handle(row: tuple) -> None:
        item = Question.from_row(row)
        try:
            steps, pattern = plan(item, ctx.recipe.trajectories)
            messages, turns = execute(ctx.image(item.image_id), item, steps, ctx.recipe.trajectories.crop_quality)
        except TrajectoryRejected as exc:
            reason, _, detail = str(exc).partition(": ")
            ctx.drop(stats, item.question_id, reason, detail)
            return
        store(ctx, stats, item, pattern, messages, turns)

    async def handle_with_model(row: tuple):
        item = Question.from_row(row)
        full = ctx.image(item.image_id)
        view = global_view(full, global_view_size(item.width, item.height, ctx.recipe.view.max_pixels))
        steps, final = await drive_trajectory(
            ctx.model(), full, view, item.question, ctx.recipe.teacher.max_turns, stage=NAME
        )
        try:
            pattern = judge(item, steps, final)
        except TrajectoryRejected as exc:
            reason, _, detail = str(exc).partition(": ")
            return lambda: ctx.drop(stats, item.question_id, reason, detail)
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
    """A model trajectory's pattern, or TrajectoryRejected: it must end correct and its zooms reach every target."""
    if not is_correct(item.checker, extract_answer(final), item.answer):
        raise TrajectoryRejected(f"wrong_final_answer: {extract_answer(final)!r} vs {item.answer!r}")
    centres = [((t[0] + t[2]) / 2, (t[1] + t[3]) / 2) for t in item.targets]
    hits = [[_contains(s["box_px"], (x, y, x, y)) for x, y in centres] for s in steps]
    if not steps or not all(any(h[i] for h in hits) for i in range(len(centres))):
        raise TrajectoryRejected("zoom_misses_target")
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


def _context_box(target: list[int], scale: float, width: int, height: int) -> list[int]:
    """A grid box around the target, `scale` times its size but at least a tenth of the image, clamped."""
    g = pixels_to_grid(target, width, height)
    cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
    half_w = max((g[2] - g[0]) * scale, GRID / 10) / 2
    half_h = max((g[3] - g[1]) * scale, GRID / 10) / 2
    return [
        max(0, round(cx - half_w)),
        max(0, round(cy - half_h)),
        min(GRID, round(cx + half_w)),
        min(GRID, round(cy + half_h)),
    ]


def _miss_box(around: list[int]) -> list[int]:
    """The same box mirrored through the image centre: a plausible zoom that shows the wrong place."""
    return [GRID - around[2], GRID - around[3], GRID - around[0], GRID - around[1]]


def plan(item: Question, cfg: TrajectoryConfig) -> tuple[list[dict], str]:
    """The zoom steps of a trajectory: each a grid box, whether it must contain or miss its target, and the text."""
    qtype, label, targets, referent = item.question_type, item.label, item.targets, item.referent
    width, height = item.width, item.height
    if qtype == "count":
        window = pixels_to_grid(
            [
                min(t[0] for t in targets),
                min(t[1] for t in targets),
                max(t[2] for t in targets),
                max(t[3] for t in targets),
            ],
            width,
            height,
        )
        coarse = _grow(window, 1.5)
        centres = [((t[0] + t[2]) / 2, (t[1] + t[3]) / 2) for t in targets]  # the question counts centres
        union = [
            min(x for x, _ in centres),
            min(y for _, y in centres),
            max(x for x, _ in centres),
            max(y for _, y in centres),
        ]
        return [
            {
                "bbox": coarse,
                "target": union,
                "think": f"The {label}s are too small to count in this view. "
                f"I will first look at the area around the box {window}.",
            },
            {
                "bbox": window,
                "target": union,
                "think": f"Now I zoom exactly into the box {window} to count the "
                f"{label}s whose centre lies inside it.",
            },
        ], "coarse_to_fine"
    if qtype in ("compare_brightness", "relative_position"):
        return [
            {
                "bbox": _context_box(t, 1.6, width, height),
                "target": t,
                "think": f"I need to see {p} up close.",
            }
            for t, p in zip(targets, referent, strict=False)
        ], "multi_target"
    target, point = targets[0], referent[0]
    coarse = _context_box(target, cfg.context_scale, width, height)
    fine = _context_box(target, 1.6, width, height)
    steps = [
        {
            "bbox": coarse,
            "target": target,
            "think": f"{point[0].upper()}{point[1:]} is too small to see here. I will zoom into the area around it "
            "first.",
        },
        {"bbox": fine, "target": target, "think": f"I can make out the {label}; a closer zoom will show its colour."},
    ]
    if int(sha256_json(item.question_id)[:8], 16) / 16**8 < cfg.reflective_share:
        miss = _miss_box(coarse)
        steps = [
            {
                "bbox": miss,
                "target": target,
                "miss": True,
                "think": f"The {label} is small; let me zoom in to find it.",
            },
            {
                "bbox": fine,
                "target": target,
                "think": f"That view does not show the {label}: I zoomed into the wrong "
                f"place. I will look for {point} elsewhere.",
            },
        ]
        return steps, "reflective"
    return steps, "coarse_to_fine"


def _grow(box: list[int], factor: float) -> list[int]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return [max(0, round(cx - hw)), max(0, round(cy - hh)), min(GRID, round(cx + hw)), min(GRID, round(cy + hh))]


def execute(image: Image.Image, item: Question, steps: list[dict], quality: int) -> tuple[list[dict], list[dict]]:
    """Run each zoom for real and assemble the conversation; raises TrajectoryRejected when a check fails."""
    messages = [message("system", SYSTEM_PROMPT), message("user", item.question, images=1)]
    turns = []
    for step in steps:
        try:
            crop, box_px = ZOOM(image, step["bbox"])
        except ZoomError as exc:
            raise TrajectoryRejected("invalid_zoom") from exc
        target = step["target"]
        if target is not None:
            hit = _contains(box_px, target)
            if step.get("miss") and _intersects(box_px, target):
                raise TrajectoryRejected("reflective_miss_overlaps_target")
            if not step.get("miss") and not hit:
                raise TrajectoryRejected(f"zoom_misses_target: {step['bbox']} -> {list(box_px)} vs {target}")
        data = encode_jpeg(crop, quality)
        turns.append({"bbox_2d": step["bbox"], "box_px": list(box_px), "crop": data, "crop_sha256": sha256(data)})
        messages.append(message("assistant", f"<think>{step['think']}</think>", tool_calls=[tool_call(step["bbox"])]))
        messages.append(message("tool", observation_text(step["bbox"], box_px), images=1, name=TOOL_NAME))
    final = f"<think>{_conclusion(item)}</think>\n<answer>{item.answer}</answer>"
    if not is_correct(item.checker, extract_answer(final), item.answer):
        raise TrajectoryRejected("wrong_final_answer")
    messages.append(message("assistant", final))
    return messages, turns


def _conclusion(item: Question) -> str:
    if item.question_type == "count":
        return f"I count {item.answer}: {item.referent[0]}."
    chosen = item.options["ABCD".index(item.answer)] if item.options else item.answer
    if item.question_type == "relative_position":
        where = {"left": "to the left of", "right": "to the right of"}.get(chosen, chosen)
        return f"Having seen both, {item.referent[0]} is {where} {item.referent[1]}."
    if item.question_type == "text":
        return f"In the close-up, {item.referent[0]} reads: {chosen}."
    if item.question_type == "compare_brightness":
        return f"Having seen both, {chosen} is the brighter {item.label}."
    return f"In the close-up the {item.label} is mostly {chosen}."


def _contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def _intersects(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


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
