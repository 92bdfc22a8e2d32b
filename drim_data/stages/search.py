"""Where a built-in trajectory looks, zoom by zoom, and the rules every zoom obeys.

A question names its target without saying where it is, so a trajectory searches: from the global view to a
coarse region that holds the target away from its centre, then closer, until the target shows at enough detail.
Detail is output pixels per original pixel (the global view's scale, or a crop's output size over its box), and
each zoom must show its region at MIN_GAIN times the detail of the view it refines, or reach native resolution.
Reflective trajectories first look at a same-class distractor, a real instance that is not the target.
Every rule is checked on the planned boxes, and again on the executed crops; a plan that breaks one is replaced by
the next candidate, and an item with none left is dropped with the rule's name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from drim_data.recipe import TrajectoryConfig, hash_share, sha256_json

# box geometry, all from one place
from schemas.geometry import GRID, centre, contains, intersects, iou, pixels_to_grid
from schemas.tool import ZOOM, ZoomError

MIN_GAIN = 1.5  # a zoom shows its region at least this many times the detail of the view it refines ...
NATIVE = 1.0  # ... or reaches the original resolution (one output pixel per original pixel) from below it
MAX_PAIR_IOU = 0.8  # consecutive zooms overlapping this much show the same thing twice
MAX_ZOOM_SHARE = 0.5  # a zoom covers at most this share of the image: one over most of it is no zoom at all
MIN_OFFSET = 0.12  # a first look at a region keeps the object this share of the box's side off its centre
OFFSETS = (0.27, 0.33, 0.67, 0.73)  # where in the first box the object's centre lands, by a hash of the item
MARGIN = 0.06  # the object stays this share of the box's side inside its edges
MAX_DISTRACTORS = 12  # same-class instances tried, nearest first, for a reflective first look
MULTI_TYPES = ("relative_position", "compare_size", "compare_brightness")  # one zoom per target
UNREFLECTIVE_TYPES = ("recognition",)  # a look at another of the thing's class would name the answer


Box = Sequence[float]


@dataclass(frozen=True)
class Zoom:
    """One planned tool call: its pixel box (as the tool resolves the grid box) and what it must show."""

    grid: list[int]
    box: tuple[int, int, int, int]
    role: str  # coarse | fine | direct | miss
    subject: tuple[float, ...]  # the box it must hold wholly: a target, the counted instances, or a distractor
    target: int = 0  # which target (or, for a miss, the target it is mistaken for)
    avoid: tuple[tuple[float, ...], ...] = ()  # boxes it must not touch: the real targets, for a miss
    need: float = 0.0  # the detail its last look must reach for the smallest thing to be seen to show well


@dataclass(frozen=True)
class Scene:
    """What an image holds besides the question: every annotated instance and the classes boxed completely."""

    width: int
    height: int
    annotations: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    complete: frozenset[str] = frozenset()
    lookalikes: list[tuple[float, float, float, float]] = field(default_factory=list)  # unlabelled mined regions
    crowds: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)  # not boxed singly
    colours: dict[tuple[int, ...], str] = field(default_factory=dict)  # what the labeller recorded, by rounded box

    def instances(self, label: str) -> list[tuple[float, float, float, float]]:
        return [box for name, box in self.annotations if name.lower() == label.lower()]

    def crowd_boxes(self, label: str) -> list[tuple[float, float, float, float]]:
        return [box for name, box in self.crowds if name.lower() == label.lower()]

    def is_complete(self, label: str) -> bool:
        return label.lower() in {c.lower() for c in self.complete}


class PlanRejected(Exception):
    """No candidate plan obeys the rules; `reason` names the rule the last candidate broke."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- detail ---------------------------------------------------------------------------------------------------


def output_size(box: Box) -> tuple[int, int]:
    """The size the zoom tool returns a pixel box at (the same arithmetic as ZOOM.crop, without the pixels)."""
    w, h = box[2] - box[0], box[3] - box[1]
    pixels, scale = w * h, 1.0
    if pixels < ZOOM.min_output_pixels:
        scale = math.sqrt(ZOOM.min_output_pixels / pixels)
    elif pixels > ZOOM.max_output_pixels:
        scale = math.sqrt(ZOOM.max_output_pixels / pixels)
    if scale == 1.0:
        return int(w), int(h)
    fit = math.ceil if scale > 1 else math.floor
    return max(1, fit(w * scale)), max(1, fit(h * scale))


def detail(box: Box, size: Sequence[int] | None = None) -> float:
    """Output pixels per original pixel of a zoom onto `box` (returned at `size`, else as the tool would)."""
    width = (size or output_size(box))[0]
    return width / (box[2] - box[0])


def side_for(wanted: float) -> float:
    """The side of the square box the zoom tool shows at `wanted` detail (the largest, where several do)."""
    if wanted > NATIVE:
        return math.sqrt(ZOOM.min_output_pixels) / wanted
    return math.sqrt(ZOOM.max_output_pixels) / wanted


def gains(boxes: list[Box], details: list[float], view_scale: float) -> list[tuple[float, float]]:
    """Each zoom's (detail, detail of the view it refines): the latest earlier zoom that shows the new box's
    centre, else the global view (a zoom somewhere new refines nothing but the whole image)."""
    found = []
    for i, box in enumerate(boxes):
        x, y = centre(box)
        before = next((details[j] for j in range(i - 1, -1, -1) if contains(boxes[j], (x, y, x, y))), view_scale)
        found.append((details[i], before))
    return found


def gains_detail(now: float, before: float) -> bool:
    return now >= MIN_GAIN * before or (now >= NATIVE > before)


# -- rules ----------------------------------------------------------------------------------------------------


def violations(zooms: list[Zoom], view_scale: float, max_turns: int, sizes: list | None = None) -> list[str]:
    """The rules a trajectory's zooms break, by name (none: it may be used). `sizes` are the executed crops'
    sizes; without them the tool's arithmetic predicts them."""
    if not zooms:
        return ["no_zoom"]
    found = []
    if len(zooms) > max_turns:
        found.append("too_many_zooms")
    boxes = [z.box for z in zooms]
    details = [detail(b, s) for b, s in zip(boxes, sizes or [None] * len(boxes), strict=True)]
    for i, (z, (now, before)) in enumerate(zip(zooms, gains(boxes, details, view_scale), strict=True)):
        if not contains(z.box, z.subject):
            found.append("zoom_misses_target")
        if any(intersects(z.box, t) for t in z.avoid):
            found.append("reflective_miss_overlaps_target")
        if not gains_detail(now, before):
            found.append("no_detail_gain")
        if z.role != "fine" and off_centre(z.box, z.subject) < MIN_OFFSET:
            found.append("zoom_centred_on_target")
        last_look = z.role != "miss" and (i + 1 == len(zooms) or zooms[i + 1].target != z.target)
        if last_look and now < z.need:
            found.append("not_enough_detail")
        if (z.grid[2] - z.grid[0]) * (z.grid[3] - z.grid[1]) > MAX_ZOOM_SHARE * GRID * GRID:
            found.append("zoom_is_the_whole_view")
        if i and list(z.grid) == list(zooms[i - 1].grid):
            found.append("identical_zooms")
        elif i and iou(z.box, zooms[i - 1].box) >= MAX_PAIR_IOU:
            found.append("near_identical_zooms")
    return list(dict.fromkeys(found))


def off_centre(box: Box, subject: Box) -> float:
    """How far the subject's centre sits from the box's centre, as a share of the box's side (larger axis)."""
    (bx, by), (sx, sy) = centre(box), centre(subject)
    return max(abs(sx - bx) / (box[2] - box[0]), abs(sy - by) / (box[3] - box[1]))


# -- planning -------------------------------------------------------------------------------------------------


def plan(
    item,
    scene: Scene,
    cfg: TrajectoryConfig,
    view_scale: float,
    max_turns: int,
    reflective: bool | None = None,
    single: bool | None = None,
) -> tuple[list[Zoom], str]:
    """The zooms of an item's trajectory and its pattern: the first candidate plan that breaks no rule.

    `item` needs question_id, question_type, label and targets (original-pixel boxes); nothing is read from the
    question's text. `reflective` says whether to first look at a distractor, `single` whether to try one zoom
    before two (by default each for a hashed share of items). Raises PlanRejected when every candidate breaks a
    rule."""
    last = ("no_zoom", "")
    for pattern, attempt in candidates(item, scene, cfg, reflective, single):
        try:
            zooms = attempt(view_scale)
        except ZoomError as exc:
            last = ("invalid_zoom", str(exc))
            continue
        problems = violations(zooms, view_scale, max_turns)
        if not problems:
            return zooms, pattern
        last = (problems[0], f"{pattern}: {[list(z.grid) for z in zooms]}")
    raise PlanRejected(*last)


def candidates(item, scene: Scene, cfg: TrajectoryConfig, reflective: bool | None = None, single: bool | None = None):
    """Candidate plans, preferred first, as (pattern, build(view_scale) -> zooms). A reflective item tries a first
    look at each distractor, nearest first, then goes to the target: straight there where one zoom can show it well
    (it has seen where it must be), else coarse to fine, never back over the distractor. Any item falls back to its
    plain search."""
    qid, targets = item.question_id, [tuple(t) for t in item.targets]
    if not targets:
        return
    plain = list(searches(item, targets, scene, cfg, single))
    if reflective is None:
        reflective = hash_share(["reflective", qid]) < cfg.reflective_share
    if reflective and item.question_type not in UNREFLECTIVE_TYPES:
        straight = [search for pattern, search in plain if pattern != "coarse_to_fine"]
        straight += [search for pattern, search in plain if pattern == "coarse_to_fine"]
        for distractor in mistakable(item.question_type, item.label, targets, scene)[:MAX_DISTRACTORS]:
            for k in range(len(OFFSETS)):
                for search in straight:
                    yield "reflective", _after_miss(qid, k, distractor, targets, search, scene, cfg)
    yield from plain


def searches(item, targets: list[tuple], scene: Scene, cfg: TrajectoryConfig, single: bool | None = None):
    """The plain searches for an item's targets, as (pattern, build) pairs, preferred first; a `single` item
    tries one zoom first (by default, a hashed share of items)."""
    qid = item.question_id
    if single is None:
        single = hash_share(["single", qid]) < cfg.single_zoom_share
    size = max(_long(t) for t in targets)  # the context a close zoom gives is counted in objects, not in groups
    if item.question_type == "count" or len(targets) == 1:
        subject = union(targets)
        seen = cfg.min_instance_px if item.question_type == "count" else cfg.min_target_px
        need = seen / min(_short(t) for t in targets)
        for order in ["direct", "coarse_to_fine"] if single else ["coarse_to_fine", "direct"]:
            for k in range(len(OFFSETS)):
                yield order, _single(qid, k, subject, need, order, scene, cfg, size)
        if item.question_type == "count" and len(targets) > 1:  # too spread out for one zoom: one per group
            for k in range(len(OFFSETS)):
                yield "multi_target", _count_groups(qid, k, targets, need, scene, cfg)
        return
    need = min(_recognised(t, cfg) for t in targets)
    for k in range(len(OFFSETS)):  # targets close enough for one zoom to show them all well
        yield "multi_target", _single(qid, k, union(targets), need, "direct", scene, cfg, size)
    for k in range(len(OFFSETS)):
        yield "multi_target", _multi(qid, k, targets, scene, cfg)


def _single(qid, k, subject, need, order, scene, cfg, size):
    def build(view_scale: float) -> list[Zoom]:
        return _approach(qid, k, subject, need, order, scene, cfg, view_scale, size)

    return build


def holding_side(box) -> float:
    """The smallest square side that holds a box inside the zoom's margins, with room for the grid's rounding."""
    return max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * MARGIN) + 4


def widest_side(need: float, view_scale: float) -> float:
    """The largest square side that still shows its subject at `need` detail and gains on the global view, with
    room for the grid's rounding."""
    return 0.95 * side_for(max(need, MIN_GAIN * view_scale))


def largest_side(scene: Scene) -> float:
    """The side of the largest square zoom that is still a zoom (`MAX_ZOOM_SHARE` of the image), with room for
    the grid's rounding: a subject that needs little detail (two books counted at 12 px each) would otherwise be
    shown in a box as wide as the image."""
    return 0.95 * math.sqrt(MAX_ZOOM_SHARE * scene.width * scene.height)


def count_groups(targets: list[tuple], widest: float) -> list[list[tuple]]:
    """The counted instances in compact groups, each held by a square no wider than `widest`: the two groups
    whose union is smallest merge first, while it fits."""
    groups = [[t] for t in sorted(targets, key=centre)]
    while len(groups) > 1:
        side, i, j = min(
            (holding_side(union(a + b)), i, j) for i, a in enumerate(groups) for j, b in enumerate(groups) if i < j
        )
        if side > widest:
            break
        groups[i] += groups.pop(j)
    return groups


def _count_groups(qid, k, targets, need, scene, cfg):
    def build(view_scale: float) -> list[Zoom]:
        groups = count_groups(targets, min(widest_side(need, view_scale), largest_side(scene)))
        if len(groups) < 2:
            raise ZoomError("one zoom holds them all")
        zooms = []
        for i, g in enumerate(groups):  # a tight view over each group, centred on it: it gives away no position
            subject = union(g)
            side = max(holding_side(subject), ZOOM.min_side_px)
            z = _zoom(_around(subject, side, [qid, "group", i, k], scene), "fine", subject, scene, need)
            zooms.append(Zoom(z.grid, z.box, z.role, z.subject, i, need=z.need))
        return zooms

    return build


def _after_miss(qid, k, distractor, targets, search, scene, cfg):
    def build(view_scale: float) -> list[Zoom]:
        need = cfg.min_target_px / _short(distractor)
        (miss,) = _approach(["miss", qid], k, distractor, need, "direct", scene, cfg, view_scale)
        found = search(view_scale)
        if contains(found[0].box, distractor):
            raise ZoomError("the search would show the distractor again")
        return [Zoom(miss.grid, miss.box, "miss", distractor, 0, tuple(targets), need), *found]

    return build


def _multi(qid, k, targets, scene, cfg):
    def build(view_scale: float) -> list[Zoom]:
        zooms = []
        for i, t in enumerate(targets):
            (z,) = _approach([qid, i], k, t, _recognised(t, cfg), "direct", scene, cfg, view_scale)
            zooms.append(Zoom(z.grid, z.box, z.role, z.subject, i, need=z.need))
        return zooms

    return build


def _approach(key, k, subject, need, order, scene, cfg, view_scale, size: float | None = None) -> list[Zoom]:
    """One zoom that already shows the subject at enough detail (direct), or a coarse then a fine one. The closest
    zoom holds the whole subject and `context_scale` times `size` around it, the length of one object it is about
    (for a group, its largest): a count of lion heads spread along a frieze is framed by the frieze and a few heads
    of context, not by six times the frieze."""
    fit, enough = holding_side(subject), min(widest_side(need, view_scale), largest_side(scene))
    fine_side = max(min((size or _long(subject)) * cfg.context_scale, enough), fit, ZOOM.min_side_px)
    if order == "direct":
        side = max(min(2 * fine_side, enough), fine_side)
        return [_zoom(_off_centre(subject, side, key, k, scene), "direct", subject, scene, need)]
    fine_detail = detail((0, 0, fine_side, fine_side))
    coarse_detail = min(cfg.coarse_gain * view_scale, fine_detail / MIN_GAIN)
    if fine_detail >= NATIVE > cfg.coarse_gain * view_scale:
        coarse_detail = cfg.coarse_gain * view_scale  # the fine zoom reaches native resolution from below
    coarse_side = max(side_for(coarse_detail), fit / (2 * min(OFFSETS[0], 1 - OFFSETS[-1])))  # room off-centre
    coarse_side = min(coarse_side, largest_side(scene))
    coarse = _zoom(_off_centre(subject, coarse_side, key, k, scene), "coarse", subject, scene, need)
    fine = _zoom(_around(subject, fine_side, key, scene), "fine", subject, scene, need)
    return [coarse, fine]


def _off_centre(subject: Box, side: float, key, k: int, scene: Scene) -> list[float]:
    """A square box of `side` holding the subject away from its centre, at a place chosen by a hash of `key`."""
    pick = int(sha256_json(["offset", key])[:4], 16) + k
    u, v = OFFSETS[pick % len(OFFSETS)], OFFSETS[(pick // len(OFFSETS) + k) % len(OFFSETS)]
    return _place(subject, side, u, v, scene)


def _around(subject: Box, side: float, key, scene: Scene) -> list[float]:
    """A square box of `side` roughly centred on the subject (a refining zoom knows where it is)."""
    jitter = (hash_share(["jitter", key]) - 0.5) * 0.1
    return _place(subject, side, 0.5 + jitter, 0.5 - jitter, scene)


def _place(subject: Box, side: float, u: float, v: float, scene: Scene) -> list[float]:
    """A box of `side` (clipped to the image) with the subject's centre at (u, v) of it, kept inside its margins,
    then shifted back into the image."""
    sx, sy = centre(subject)
    box = []
    for lo, hi, c, limit, at in (
        (subject[0], subject[2], sx, scene.width, u),
        (subject[1], subject[3], sy, scene.height, v),
    ):
        s = min(side, limit)
        half, margin = (hi - lo) / 2, MARGIN * s
        at = min(max(at, (half + margin) / s), 1 - (half + margin) / s) if s > 2 * (half + margin) else 0.5
        start = min(max(c - at * s, 0), limit - s)
        box.append((start, start + s))
    return [box[0][0], box[1][0], box[0][1], box[1][1]]


def _zoom(box_px: list[float], role: str, subject: Box, scene: Scene, need: float) -> Zoom:
    grid = pixels_to_grid(box_px, scene.width, scene.height)
    grid = [min(max(v, 0), GRID) for v in grid]
    return Zoom(grid, ZOOM.resolve(grid, scene.width, scene.height), role, tuple(subject), need=need)


def _short(box: Box) -> float:
    return min(box[2] - box[0], box[3] - box[1])


def _long(box: Box) -> float:
    return max(box[2] - box[0], box[3] - box[1])


def _recognised(box: Box, cfg: TrajectoryConfig) -> float:
    """The detail a question of where an object stands, or how long it is, needs to show it: its shorter side at
    `min_target_px`, or, for an object too long for any zoom that holds it to show that, the most detail a zoom
    holding it whole gives. An 800x27 px inscription band is found in a view that shows it whole; reading it (a
    text question) would still need its letters' height."""
    whole = holding_side(box)
    return min(cfg.min_target_px / _short(box), 0.95 * detail((0, 0, whole, whole)))


def union(boxes: list[Box]) -> tuple[float, float, float, float]:
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def mistakable(question_type: str, label: str, targets: list[Box], scene: Scene) -> list[tuple[float, ...]]:
    """What a search for an item's targets could first look at by mistake, nearest first: `distractors` of the
    counted instances together for a count, else of the first target."""
    if not targets:
        return []
    anchor = union(targets) if question_type == "count" else targets[0]
    return distractors(anchor, targets, scene, label)


def distractors(anchor: Box, targets: list[Box], scene: Scene, label: str) -> list[tuple[float, ...]]:
    """Other instances of the targets' class (or, where every instance is boxed, unlabelled look-alike regions,
    which then cannot be one, unless a crowd box of the class holds them), nearest to `anchor` first: what a search
    could mistake for the target."""
    found = [b for b in scene.instances(label) if not any(intersects(b, t) or b == t for t in targets)]
    if scene.is_complete(label):
        boxed = scene.instances(label) + list(targets) + scene.crowd_boxes(label)
        found += [r for r in scene.lookalikes if not any(intersects(r, b) for b in boxed)]
    tx, ty = centre(anchor)
    return sorted(found, key=lambda b: (math.dist(centre(b), (tx, ty)), tuple(b)))
