"""Verify: keep only questions that need zooming, refer to one object unambiguously, and are not repeats.

With a model teacher, survivors also face votes: k independent answers on the crop must agree with the reference,
a validator shown the full image and the crop must find the referent unambiguous, and a solver answering from the
downscaled full image without tools must mostly fail while it succeeds on the crop. These checks are asked as a
cascade (stages/cascade.py): each only until it is decided, none after the first that fails, with the verdicts of
asking everything at once. Every vote asked is kept.
"""

from __future__ import annotations

import json

from drim_data.pixels.candidates import ambiguous
from drim_data.pixels.solver import BlindItem, blind_answer
from drim_data.recipe import ViewConfig
from drim_data.stages.cascade import Check, run_checks
from drim_data.stages.contract import Context, StageStats
from drim_data.stages.generate import context_crop
from drim_data.stages.questions import COLUMNS, Question
from drim_data.teacher import tasks as teacher_tasks
from schemas.answers import LETTERS, is_correct, normalise_text
from schemas.geometry import centre_grid
from schemas.tables import validate_table
from schemas.tool import min_side_in_global_view

NAME = "verify"
VERSION = "4"  # 2: the blind solver finds objects by their area and compares sizes when either is found; 3: and
# recognises a slim object that stands out from its surround by its length; 4: read along the object, however it
# lies in its box, and finds one 2 px across

PENDING = f"""
SELECT {COLUMNS}
FROM questions q JOIN images i USING (image_id)
WHERE q.question_id NOT IN (SELECT item_id FROM done WHERE stage = 'verify')
ORDER BY q.image_id, q.question_id
"""
LEVELS = ("easy", "medium", "hard")
CROP_VIEW = "The images are close-up crops of the objects the question is about."
FULL_VIEW = "The image is the whole scene, downscaled."


def run(ctx: Context) -> StageStats:
    stats = StageStats(NAME)
    if ctx.uses_model("verification"):
        ctx.for_each_pending_async(stats, PENDING, lambda row: _verify_with_model(ctx, stats, Question.from_row(row)))
    else:
        ctx.for_each_pending(stats, PENDING, lambda row: _verify(ctx, stats, Question.from_row(row)))
    return stats


def difficulty(min_side: float, targets: int, view: ViewConfig) -> str:
    level = 2 if min_side < view.min_resolvable_px / 4 else 1 if min_side < view.min_resolvable_px / 2 else 0
    return LEVELS[min(2, level + (targets > 1))]


def _rule_checks(ctx: Context, item: Question, blind: bool = True) -> tuple[str | None, float]:
    """The checks that need no model; `duplicate` is checked when the verdict is written, against kept ones.
    Cheapest first: the size floor and the referent check, then the blind solver (`blind`, the built-in path),
    which tries the question on the global view with the instruments the built-in teacher measured its answer with."""
    view = ctx.recipe.view
    min_side = min_side_in_global_view(item.targets, item.width, item.height, view.max_pixels)
    if min_side >= view.min_resolvable_px:
        return "visible_without_zoom", min_side
    if item.region_ids and _ambiguous(ctx, item):
        return "ambiguous_referent", min_side
    if blind and _solved_blind(ctx, item):
        return "solvable_without_zoom", min_side
    return None, min_side


def _verify(ctx: Context, stats: StageStats, item: Question) -> None:
    reason, min_side = _rule_checks(ctx, item)
    _record(ctx, stats, item, reason, min_side)


def _record(ctx: Context, stats: StageStats, item: Question, reason: str | None, min_side: float) -> None:
    """Write the verdict. The duplicate check runs here, in the item's own transaction, so items verified
    concurrently still see each other's kept verdicts."""
    if reason is None and _duplicate(ctx, item):
        reason = "duplicate"
    level = None if reason else difficulty(min_side, len(item.targets), ctx.recipe.view)
    ctx.con.execute(
        "INSERT INTO verdicts VALUES (?, ?, ?, ?, ?)", [item.question_id, reason is None, reason, min_side, level]
    )
    if reason:
        ctx.drop(stats, item.question_id, reason)
    else:
        stats.count(f"kept:{level}")


async def _verify_with_model(ctx: Context, stats: StageStats, item: Question):
    reason, min_side = _rule_checks(ctx, item, blind=False)
    if reason:
        return lambda: _record(ctx, stats, item, reason, min_side)
    image = ctx.image(item.image_id)
    crops = [context_crop(image, tuple(t)) for t in item.targets]
    full = ctx.view(item.image_id)  # one per image: its JPEG is encoded once for all the image's items
    cfg, teacher, solver = ctx.recipe.teacher.verification, ctx.model(), ctx.model("solver")

    def answers(model, images: list, view: str, first_variant: int):
        async def ask(i: int) -> tuple[str, bool]:
            answer = await teacher_tasks.answer(
                model, images, item.question, view, stage=NAME, variant=first_variant + i
            )
            return answer, is_correct(item.checker, answer, item.answer)

        return ask

    async def validator(_: int) -> tuple[str, bool]:
        unambiguous = await teacher_tasks.validate(teacher, full, crops[0], item.question, stage=NAME)
        return "unambiguous" if unambiguous else "ambiguous", unambiguous

    k = cfg.solver_samples
    # cheapest per rejection first: one validator call; the global-view solver, which rejects the most items
    # (questions a model answers without zooming) and is decided by two samples when it rejects; the votes; the
    # crop solver. The first failure in this order names the reason, asked at once or as a cascade; variants keep
    # every sample's cache key whatever the order.
    checks = [
        Check("validator", "validator_ambiguous", 1, lambda r: r == 1, validator),
        Check(
            "solver_full",
            "solvable_without_zoom",
            k,
            lambda r: r <= cfg.solver_max_pass,
            answers(solver, [full], FULL_VIEW, 100),
        ),
        Check(
            "vote",
            "teacher_disagrees",
            cfg.votes,
            lambda r: r >= cfg.min_agreement,
            answers(teacher, crops, CROP_VIEW, 1),
        ),
        Check(
            "solver_crop",
            "unsolvable_on_crop",
            k,
            lambda r: r >= cfg.crop_min_pass,
            answers(solver, crops, CROP_VIEW, 200),
        ),
    ]
    # a batch's round trip takes hours: there, every sample goes into the same batch at once
    cascade = cfg.cascade and not (teacher.cfg.batch or solver.cfg.batch)
    reason, graded = await run_checks(checks, cascade)

    def write() -> None:
        for role, asked in graded.items():
            for i, (a, ok) in enumerate(asked):
                ctx.con.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?)", [item.question_id, role, i, a, ok])
        _record(ctx, stats, item, reason, min_side)

    return write


def _solved_blind(ctx: Context, item: Question) -> bool:
    """The blind solver answers correctly from the global view alone."""
    blind = BlindItem(
        item.question_type,
        item.label,
        item.targets,
        item.width,
        item.height,
        item.options,
        item.checker,
        item.question,
    )
    return is_correct(item.checker, blind_answer(ctx.view(item.image_id), blind), item.answer)


def _ambiguous(ctx: Context, item: Question) -> bool:
    """Another region of the image could be taken for a target: mine's uniqueness rule (`candidates.confusable`,
    radius `mine.unique_radius`) around each target's centre, under its own label."""
    regions = ctx.con.execute(
        "SELECT region_id, label, x1, y1, x2, y2 FROM regions WHERE image_id = ?", [item.image_id]
    ).fetchall()
    labels = {rid: label for rid, label, *_ in regions}
    size = item.width, item.height
    referents = [
        (labels.get(rid, item.label), centre_grid(target, *size))
        for rid, target in zip(item.region_ids, item.targets, strict=False)
    ]
    others = [(label, centre_grid(box, *size)) for rid, label, *box in regions if rid not in item.region_ids]
    return ambiguous(referents, others, ctx.recipe.mine.unique_radius)


def _duplicate(ctx: Context, item: Question) -> bool:
    """A kept question on the same image, of the same type, about the same targets, with the same answer: the
    answer compared as what it says, so a multiple-choice and a short-answer wording of one question are one."""
    kept = ctx.con.execute(
        "SELECT q.target_boxes, q.options, q.answer FROM questions q JOIN verdicts v USING (question_id) "
        "WHERE v.kept AND q.image_id = ? AND q.question_type = ?",
        [item.image_id, item.question_type],
    ).fetchall()
    key, says = sorted(map(tuple, item.targets)), answer_text(item.options, item.answer)
    return any(
        sorted(map(tuple, json.loads(boxes))) == key and answer_text(json.loads(options), answer) == says
        for boxes, options, answer in kept
    )


def answer_text(options: list[str], answer: str) -> str:
    """What an answer says: the chosen option's text for a letter, else the answer itself, normalised."""
    letter = answer.strip().upper()
    if options and len(letter) == 1 and letter in LETTERS[: len(options)]:
        return normalise_text(options[LETTERS.index(letter)])
    return normalise_text(answer)


def validate(con) -> None:
    validate_table(con, "verdicts", "SELECT * FROM verdicts")
