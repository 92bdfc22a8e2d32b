"""The built-in teacher: offline and deterministic, it asks about objects by name, as a benchmark would.

A referent is a class name from the annotations. When a class has several instances, the referent is a description
that picks out one of them and can be checked on the boxes and pixels: an extreme position ("the leftmost ship"),
the nearest to another named object ("the boat nearest the oil island"), a clearly different size ("the largest
boat"), a colour no other instance has ("the red ship"), or the person who has it ("the leftmost person's bag").
Uniqueness is checked against every instance of the class, with margins, and only boxes the labeller was sure of
are asked about or leaned on. So a referent is only ever of a class the image boxes completely; a crowd box (COCO's
`iscrowd`: a marina of moored boats, a shape the labeller could not call) may hide instances anywhere inside it, and
a description must hold against all of them. An unlabelled proposal is never asked about: without a name it can
only point with coordinates.

Question types follow V* Bench, HR-Bench and MME-RealWorld: colour (measured on the object's own pixels), count (of
a class boxed completely, in an area named by the image's halves or a named object), relative position between two
named objects, size comparison between two of a class (HR-Bench's cross-instance questions), text (a sign's
words, or a long text's first and last words, when OCR at full resolution agrees with the labeller), and
recognition (which of a few things a named person is carrying or wearing). Multiple-choice
distractors are plausible confusions, and the correct letter rotates over an image's questions so letters come out
balanced across a dataset.
"""

from __future__ import annotations

import collections
import difflib
import math
import random
from dataclasses import dataclass, field, replace

import numpy as np

from drim_data.pixels.ocr import squeezed
from drim_data.pixels.palette import PALETTE, confusions, to_lab
from drim_data.recipe import GenerateConfig, sha256_json
from schemas.answers import LETTERS, with_options
from schemas.tool import GRID

MODEL = "builtin"
PROMPT_VERSION = "2"
GENERIC = "object"  # a proposal's label: it could be anything
MIN_DISTRACTOR_DE = 30.0  # palette neighbours closer than this in CIELAB are not offered: white/silver (27),
# silver/beige (29), beige/tan (19) and silver/gray (14) are told apart by lighting and blur more than by the object
EDGE_PX = 2  # a box this close to the image's edge may be cut off by it
PEOPLE = frozenset({"person", "man", "woman", "child"})  # they carry things, and are described by what they wear
CARRIED_SHARE = 0.6  # a thing is a person's when this share of its box lies within theirs
RELATIONS = ("left", "right", "above", "below")
AXES = frozenset({"horizontal", "vertical"})
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class Instance:
    """One object in the image: its class and box, and what was recorded about it or measured on its pixels."""

    label: str
    box: tuple[float, float, float, float]  # original pixels
    sure: bool = True  # the labeller was sure of object and class (confidence not `likely`)
    colour: str | None = None  # palette colour measured on its own pixels
    colour_share: float = 0.0  # the share of those pixels that colour names
    recorded_colour: str | None = None  # what the labeller recorded (attributes.colour)
    text: str | None = None  # what the labeller read on it (attributes.text)
    ocr_text: str | None = None  # what OCR read on it at full resolution, None when OCR did not run
    region_id: str | None = None  # set when mining kept it as a target: small, not at the border, needs a zoom
    small: bool = True  # too small to resolve in the model's global view, or to recognise there as its class
    crowd: bool = False  # a crowd box: an area that may hold instances of the class, none of them boxed

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class ImageFacts:
    image_id: str
    width: int
    height: int
    instances: list[Instance]
    complete: frozenset[str] = field(default_factory=frozenset)  # classes whose every instance is boxed
    # the names of objects that descriptions lean on, each worked out once: every target's descriptions ask for them
    names: dict = field(default_factory=dict, compare=False, repr=False)


def length(instance: Instance) -> float:
    """An object's length: the longer side of its box, the extent a hull, a plane or a person is measured by."""
    return max(instance.box[2] - instance.box[0], instance.box[3] - instance.box[1])


def centre_grid(box: tuple, width: int, height: int) -> tuple[int, int]:
    return round((box[0] + box[2]) / 2 / width * GRID), round((box[1] + box[3]) / 2 / height * GRID)


# ---- referring expressions ----


EXTREMES = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
ORDINALS = (
    lambda noun, end: f"the {EXTREMES[end]} {noun}",
    lambda noun, end: f"the second {noun} from the {end}",
    lambda noun, end: f"the third {noun} from the {end}",
)


def _side(instance: Instance, axis: int, cut: float, margin: float, before: bool) -> bool | None:
    """Whether the object's centre lies before (or after) `cut` on the axis (0 across, 1 up and down); None when
    it is within `margin` of it, or its box straddles the line: too close to call, or on both sides."""
    value = instance.centre[axis]
    if abs(value - cut) < margin or instance.box[axis] < cut < instance.box[axis + 2]:
        return None
    return value < cut if before else value > cut


def image_areas(facts: ImageFacts, cfg: GenerateConfig, whole: bool = False) -> list[tuple]:
    """(name, axes it speaks of, test) for the image's halves and quarters (and the whole image, named ""); test
    is True inside, False outside, None for an instance too close to the edge to call."""
    w, h = facts.width, facts.height
    mx, my = cfg.position_margin * w, cfg.position_margin * h
    H, V = frozenset({"horizontal"}), frozenset({"vertical"})
    areas = [("", frozenset(), lambda i: True)] if whole else []
    areas += [
        ("in the left half of the image", H, lambda i: _side(i, 0, w / 2, mx, True)),
        ("in the right half of the image", H, lambda i: _side(i, 0, w / 2, mx, False)),
        ("in the top half of the image", V, lambda i: _side(i, 1, h / 2, my, True)),
        ("in the bottom half of the image", V, lambda i: _side(i, 1, h / 2, my, False)),
    ]
    for vertical, top in (("top", True), ("bottom", False)):
        for horizontal, left in (("left", True), ("right", False)):

            def quarter(i: Instance, top: bool = top, left: bool = left) -> bool | None:
                x, y = _side(i, 0, w / 2, mx, left), _side(i, 1, h / 2, my, top)
                return None if x is None or y is None else x and y

            areas.append((f"in the {vertical}-{horizontal} quarter of the image", H | V, quarter))
    return areas


def anchor_sides(anchor: Instance, named: str, facts: ImageFacts, cfg: GenerateConfig) -> list[tuple]:
    """(name, axes, test) for the four sides of a named object, tested like `image_areas`: each a half of the image,
    worded as one ("further left than the door"): "left of the door" reads as beside it, "below" as under it."""
    mx, my = cfg.position_margin * facts.width, cfg.position_margin * facts.height
    x1, y1, x2, y2 = anchor.box
    H, V = frozenset({"horizontal"}), frozenset({"vertical"})
    return [
        (f"further left than {named}", H, lambda i: _side(i, 0, x1, mx, True)),
        (f"further right than {named}", H, lambda i: _side(i, 0, x2, mx, False)),
        (f"higher up than {named}", V, lambda i: _side(i, 1, y1, my, True)),
        (f"lower down than {named}", V, lambda i: _side(i, 1, y2, my, False)),
    ]


def _gap(a: Instance, b: Instance) -> float:
    """Distance between two boxes (0 when they touch or overlap)."""
    dx = max(0.0, max(a.box[0], b.box[0]) - min(a.box[2], b.box[2]))
    dy = max(0.0, max(a.box[1], b.box[1]) - min(a.box[3], b.box[3]))
    return (dx * dx + dy * dy) ** 0.5


def cut_off(instance: Instance, facts: ImageFacts) -> bool:
    """Whether the image's edge cuts the object's box: its size there is not the object's size."""
    x1, y1, x2, y2 = instance.box
    return x1 <= EDGE_PX or y1 <= EDGE_PX or x2 >= facts.width - EDGE_PX or y2 >= facts.height - EDGE_PX


def could_be_taken_for(other: Instance, target: Instance, cfg: GenerateConfig) -> bool:
    """Whether a viewer looking for `target` by its class could take `other` for one: the same class, or a class
    told apart from it only by size (`look_alike`) at a length within `length_ratio` of the target's."""
    if other.label == target.label:
        return True
    if not any(other.label in group and target.label in group for group in cfg.look_alike):
        return False
    return max(length(other), length(target)) < cfg.length_ratio * min(length(other), length(target))


def fully_boxed(label: str, facts: ImageFacts) -> bool:
    """Whether every object of the class is boxed in this image: only then can a description be checked to pick
    out one of them. (A look-alike class's boxed instances count against a description; one too small to be
    boxed is too small to be taken for the target.)"""
    return label in facts.complete


def stand_ins(crowd: Instance, cfg: GenerateConfig, facts: ImageFacts) -> list[Instance]:
    """A crowd box as one-pixel instances on a grid half the position margin apart, over the whole box: whatever
    it hides lies within a quarter margin of one of them on each axis, so a description that holds against all of
    them, with its margins, holds against what the crowd hides."""
    step = cfg.position_margin * min(facts.width, facts.height) / 2
    x1, y1, x2, y2 = crowd.box
    nx, ny = (max(1, math.ceil((hi - lo) / step)) for lo, hi in ((x1, x2), (y1, y2)))
    return [
        Instance(crowd.label, (x, y, x + 1, y + 1), sure=False, crowd=True)
        for x in np.linspace(x1, x2 - 1, nx + 1).tolist()
        for y in np.linspace(y1, y2 - 1, ny + 1).tolist()
    ]


def _known_colours(instance: Instance) -> set[str | None]:
    return {instance.colour, instance.recorded_colour} - {None} or {None}


def asked_colour(instance: Instance, cfg: GenerateConfig) -> str | None:
    """The colour a question may state as fact: measured with a high share, and the labeller's, if recorded."""
    if instance.colour is None or instance.colour_share < cfg.min_colour_share:
        return None
    if min(instance.box[2] - instance.box[0], instance.box[3] - instance.box[1]) < cfg.min_colour_side_px:
        return None  # a few pixels blend with their surround: the measured colour is not the one a person sees
    if instance.recorded_colour != instance.colour and (instance.recorded_colour or cfg.colour_labelled_only):
        return None
    return instance.colour


def descriptions(
    target: Instance,
    facts: ImageFacts,
    cfg: GenerateConfig,
    avoid: frozenset[str] = frozenset(),
    anchors: bool = True,
) -> list[tuple[str, str, Instance | None]]:
    """Every (cue, phrase, the object it leans on) that picks out `target` and no other instance of its class (or
    of a look-alike class, at a similar length), checked with margins against all of them. Without `anchors`, the
    name of an object another description leans on: no relation and no area, so no name nests more than once."""
    noun = target.label
    if not fully_boxed(noun, facts):
        return []  # an object nobody boxed could fit any description as well
    others = [i for i in facts.instances if i is not target and could_be_taken_for(i, target, cfg)]
    crowded = any(o.crowd for o in others)  # what a crowd hides has no known size or colour
    others = [p for o in others for p in (stand_ins(o, cfg, facts) if o.crowd else [o])]
    if not others:
        return [("name", f"the {noun}", None)]
    found = []
    scopes = image_areas(facts, cfg, whole=True)[: None if anchors else 1]
    for anchor in facts.instances if anchors and "relation" not in avoid else []:
        if anchor.label != noun and anchor.sure and anchor.label != GENERIC:
            named = anchor_name(anchor, facts, cfg, avoid)
            scopes += [(*side, anchor) for side in anchor_sides(anchor, named, facts, cfg)] if named else []
    for scope, axes, inside, *leans_on in scopes:
        if axes & avoid or inside(target) is not True:
            continue
        verdicts = [inside(o) for o in others]
        members = [o for o, v in zip(others, verdicts, strict=True) if v]
        # one on the area's edge may be in it or not: a phrase must hold either way
        edge = [o for o, v in zip(others, verdicts, strict=True) if v is None]
        if not members and not edge:
            found.append(("area", f"the {noun} {scope}", leans_on[0] if leans_on else None))
            continue
        suffix = f" {scope}" if scope else ""
        for axis, ends in (("horizontal", ("left", "right")), ("vertical", ("top", "bottom"))):
            if axis in avoid:
                continue
            k = 0 if axis == "horizontal" else 1
            margin = cfg.position_margin * (facts.width, facts.height)[k]
            for end, sign in zip(ends, (1, -1), strict=True):
                phrase = _ordinal(target, members, edge, k, sign, margin, noun, end)
                if phrase and (not suffix or (axis, phrase, None) not in found):  # "topmost in the top half": no
                    found.append((axis, phrase + suffix, leans_on[0] if leans_on else None))
    if "size" not in avoid and not crowded and not any(cut_off(i, facts) for i in [target, *others]):
        areas = [o.area for o in others]
        if target.area >= cfg.size_ratio * max(areas):
            found.append(("size", f"the largest {noun}", None))
        if target.area * cfg.size_ratio <= min(areas):
            found.append(("size", f"the smallest {noun}", None))
    colour = asked_colour(target, cfg)
    alike = {colour, *confusions(colour)[:3]} if colour else set()  # the colour and its nearest look-alikes
    if "colour" not in avoid and colour and not crowded and all(not alike & _known_colours(o) for o in others):
        found.append(("colour", f"the {noun} in {colour}" if noun in PEOPLE else f"the {colour} {noun}", None))
    if "relation" not in avoid and anchors:
        margin = cfg.position_margin * max(facts.width, facts.height)
        for anchor in facts.instances:
            if anchor.label == noun or not anchor.sure or anchor.label == GENERIC:
                continue
            near = _gap(target, anchor)
            rest = min(_gap(o, anchor) for o in others)
            if near <= cfg.nearest_ratio * rest and rest - near >= margin:
                named = anchor_name(anchor, facts, cfg, avoid)
                if named:
                    found.append(("relation", f"the {noun} nearest {named}", anchor))
        for carrier in facts.instances:
            if carrier.label in PEOPLE and carrier.sure and carries(carrier, target, others, facts):
                named = anchor_name(carrier, facts, cfg, avoid)
                if named:
                    found.append(("relation", f"{named}'s {noun}", carrier))
    return found


def _ordinal(
    target: Instance, members: list, edge: list, k: int, sign: int, margin: float, noun: str, end: str
) -> str | None:
    """The rank phrase ("the second {noun} from the {end}") when the target holds that rank among `members`, with
    `margin` to its neighbours on axis `k`, whether or not the `edge` ones (in the area or not, too close to call)
    count."""
    here = sign * target.centre[k]

    def rank(among: list) -> int | None:
        ahead = sorted(sign * o.centre[k] for o in among if sign * o.centre[k] < here)
        behind = [sign * o.centre[k] for o in among if sign * o.centre[k] >= here]
        clear = (not ahead or here - ahead[-1] >= margin) and (not behind or min(behind) - here >= margin)
        return len(ahead) if clear else None

    ranks = {rank(members), rank(members + edge)}
    if len(ranks) != 1 or None in ranks or min(ranks) >= len(ORDINALS):
        return None
    return ORDINALS[ranks.pop()](noun, end)


def anchor_name(anchor: Instance, facts: ImageFacts, cfg: GenerateConfig, avoid: frozenset[str]) -> str | None:
    """The simplest name of an object another phrase leans on ("the oil island", "the leftmost door"): never nested,
    and never on the axis the question asks about ("nearest the rightmost door" would say "right")."""
    key = (id(anchor), id(cfg), avoid & AXES)
    if key not in facts.names:
        named = descriptions(anchor, facts, cfg, avoid & AXES, anchors=False)
        facts.names[key] = min((phrase for _, phrase, _ in named), key=lambda p: len(p.split()), default=None)
    return facts.names[key]


def _inside_share(inner: Instance, outer: Instance) -> float:
    """The share of `inner`'s box that lies inside `outer`'s."""
    w = min(inner.box[2], outer.box[2]) - max(inner.box[0], outer.box[0])
    h = min(inner.box[3], outer.box[3]) - max(inner.box[1], outer.box[1])
    return max(0.0, w) * max(0.0, h) / inner.area if inner.area else 0.0


def carries(person: Instance, thing: Instance, others: list[Instance], facts: ImageFacts) -> bool:
    """Whether `thing` is the one such thing this person has ("the leftmost person's bag"): it lies mostly within
    the person's box and within no other person's, and nothing that could be taken for it lies there too."""
    if thing.label in PEOPLE or _inside_share(thing, person) < CARRIED_SHARE:
        return False
    people = [p for p in facts.instances if p.label in PEOPLE and p is not person]
    if any(_inside_share(thing, p) >= CARRIED_SHARE / 2 for p in people):
        return False  # between two people: whose it is, is not clear
    return all(_inside_share(o, person) < CARRIED_SHARE / 2 for o in others)


SIMPLER_BY = 1  # a referent is picked among those at most this many words longer than the shortest


class Names:
    """The descriptions of one image's objects, each computed once: pairs and counts ask for them many times."""

    def __init__(self, facts: ImageFacts, cfg: GenerateConfig):
        self.facts, self.cfg, self.memo = facts, cfg, {}

    def pick(
        self,
        target: Instance,
        rng: random.Random,
        avoid: frozenset[str] = frozenset(),
        not_anchor: Instance | None = None,
        not_leaning_on: frozenset[str] = frozenset(),
    ) -> str | None:
        """One unique description of `target` (the bare name when it is the only one of its class), or None; none
        leans on `not_anchor`, or on an object of a class in `not_leaning_on`."""
        key = (id(target), avoid)
        if key not in self.memo:
            self.memo[key] = descriptions(target, self.facts, self.cfg, avoid)
        found = [
            phrase
            for _, phrase, anchor in self.memo[key]
            if anchor is None or anchor is not not_anchor and anchor.label not in not_leaning_on
        ]
        if not found:
            return None
        shortest = min(len(phrase.split()) for phrase in found)  # as a person would say it: the simplest that works
        return rng.choice([phrase for phrase in found if len(phrase.split()) <= shortest + SIMPLER_BY])


# ---- question writers: each returns drafts; letters are assigned over the whole image at the end ----


@dataclass
class Draft:
    question_type: str
    stem: str  # the question without options
    correct: str  # the correct option's text, or the short answer
    distractors: list[str]  # empty for a short answer
    checker: str  # for a short answer: "text" or "number"
    label: str
    targets: list[Instance]
    referents: list[str]


def _targets(facts: ImageFacts) -> list[Instance]:
    """What may be asked about: named, sure, and kept by mining as small and needing a zoom."""
    return [i for i in facts.instances if i.region_id and i.sure and i.label != GENERIC]


def colour_distractors(name: str) -> list[str]:
    """The three nearest palette colours that are still clearly another colour."""
    lab = to_lab(np.array(list(PALETTE.values()), np.uint8))
    index = {n: i for i, n in enumerate(PALETTE)}
    far = [c for c in confusions(name) if np.linalg.norm(lab[index[c]] - lab[index[name]]) >= MIN_DISTRACTOR_DE]
    return far[:3]


def _colour(facts: ImageFacts, cfg: GenerateConfig, rng: random.Random, names: Names) -> list[Draft]:
    found = []
    for t in rng.sample(_targets(facts), len(_targets(facts))):
        colour = asked_colour(t, cfg)
        ref = colour and names.pick(t, rng, avoid=frozenset({"colour"}))
        if not ref:
            continue
        short = rng.random() < cfg.short_answer_share
        found.append(
            Draft(
                "colour",
                f"What is the main colour of {ref}?" + (" Answer with one colour word." if short else ""),
                colour,
                [] if short else colour_distractors(colour),
                "text",
                t.label,
                [t],
                [ref],
            )
        )
        if len(found) >= cfg.per_image:
            break
    return found


def _areas(facts: ImageFacts, cfg: GenerateConfig, label: str) -> list[tuple]:
    """(name, test) for the areas a count of `label` can be asked about: the image's halves and quarters, and the
    sides of each named object of another class."""
    areas = image_areas(facts, cfg)
    for anchor in facts.instances:
        if anchor.label != label and anchor.sure and anchor.label != GENERIC:
            named = anchor_name(anchor, facts, cfg, frozenset())
            areas += anchor_sides(anchor, named, facts, cfg) if named else []
    return [(name, test) for name, _, test in areas]


PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children", "bus": "buses"}


def plural_of(label: str) -> str:
    return PLURALS.get(label, label if label.endswith("s") else label + "s")


def _count(facts: ImageFacts, cfg: GenerateConfig, rng: random.Random, names: Names) -> list[Draft]:
    found = []
    for label in sorted(facts.complete):
        same = [i for i in facts.instances if i.label == label and not i.crowd]
        hidden = [p for i in facts.instances if i.label == label and i.crowd for p in stand_ins(i, cfg, facts)]
        for area, inside in _areas(facts, cfg, label):
            verdicts = [inside(i) for i in same]
            if None in verdicts or any(inside(p) is not False for p in hidden):
                continue  # an instance on the boundary, or a crowd that reaches in: the count is not clear
            counted = [i for i, v in zip(same, verdicts, strict=True) if v]
            if not cfg.min_count <= len(counted) <= cfg.max_count or any(not i.sure for i in counted):
                continue  # an uncertain box could be miscounted
            if 2 * sum(i.small for i in counted) < len(counted):
                continue  # most of them can be counted without zooming
            n = len(counted)
            short = rng.random() < cfg.short_answer_share
            near = [str(v) for v in (n - 1, n + 1, n - 2, n + 2) if v >= 0]
            plural = plural_of(label)
            found.append(
                Draft(
                    "count",
                    f"How many {plural} are there {area}?" + (" Answer with a number." if short else ""),
                    str(n),
                    [] if short else rng.sample(near, min(3, len(near))),
                    "number",
                    label,
                    counted,
                    [f"the {plural} {area}"],
                )
            )
    rng.shuffle(found)
    return found[: cfg.per_image]


def apart_on_both_axes(a: Instance, b: Instance) -> bool:
    """Whether the boxes are apart both across and up and down, by any gap: then "left" and "below" are both true."""
    across = a.box[2] <= b.box[0] or a.box[0] >= b.box[2]
    up_down = a.box[3] <= b.box[1] or a.box[1] >= b.box[3]
    return across and up_down


def relation(a: Instance, b: Instance, facts: ImageFacts, cfg: GenerateConfig) -> str | None:
    """Where `a` is relative to `b`, when clearly so on one axis and not on the other; else None."""
    gx, gy = cfg.position_margin * facts.width, cfg.position_margin * facts.height
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    if abs(dx) >= 2 * abs(dy):
        if a.box[2] + gx <= b.box[0]:
            return "left"
        if a.box[0] - gx >= b.box[2]:
            return "right"
    if abs(dy) >= 2 * abs(dx):
        if a.box[3] + gy <= b.box[1]:
            return "above"
        if a.box[1] - gy >= b.box[3]:
            return "below"
    return None


def _pair_questions(targets: list[Instance], partners, ask, cfg: GenerateConfig, rng: random.Random, one_way: bool):
    """Questions about pairs: each target (in random order) with up to `partners_per_target` partners, at most
    `per_image` in all. `ask(a, b)` writes one or returns None; `one_way` asks a pair only one way round."""
    found, asked_pairs = [], set()
    for a in rng.sample(targets, len(targets)):
        asked, candidates = 0, partners(a)
        for b in rng.sample(candidates, len(candidates)):
            if b is a or (one_way and (id(b), id(a)) in asked_pairs):
                continue  # the same pair the other way round asks the same thing
            asked_pairs.add((id(a), id(b)))
            draft = ask(a, b)
            if draft is None:
                continue
            found.append(draft)
            asked += 1
            if asked == cfg.partners_per_target or len(found) >= cfg.per_image:
                break
        if len(found) >= cfg.per_image:
            break
    return found


def search_needed(a: Instance, b: Instance, where: str, facts: ImageFacts, cfg: GenerateConfig) -> bool:
    """Whether answering takes finding an object too small to see in the view: one whose class has no other
    instance, or another that stands differently to the other object; and whether the answer is not simply where
    the one class stands to the other. "Where is the second bag from the right relative to the statue?" is answered
    "below" by anyone who knows bags are carried on the steps, and "Is the leftmost person above or below the
    cross?" by anyone who knows people stand on the steps, whichever the cross."""

    def depends_on(target: Instance, where_peer) -> bool:
        peers = [i for i in facts.instances if i is not target and i.label == target.label and not i.crowd]
        return target.small and (not peers or any(where_peer(p) != where for p in peers))

    def side(x: Instance, y: Instance) -> str | None:  # where x is from y along the question's axis alone
        k, gap = (
            (0, cfg.position_margin * facts.width)
            if where in ("left", "right")
            else (1, cfg.position_margin * facts.height)
        )
        if x.box[k + 2] + gap <= y.box[k]:
            return "left" if k == 0 else "above"
        if x.box[k] - gap >= y.box[k + 2]:
            return "right" if k == 0 else "below"
        return None

    kinds = [[i for i in facts.instances if i.label == x.label and not i.crowd] for x in (a, b)]
    class_wide = len(kinds[0]) + len(kinds[1]) > 2 and all(side(x, y) == where for x in kinds[0] for y in kinds[1])
    return not class_wide and (depends_on(a, lambda p: side(p, b)) or depends_on(b, lambda p: side(a, p)))


def just_two(a: Instance, b: Instance, facts: ImageFacts) -> bool:
    """Whether `a` and `b` are the only two of their class: then telling them apart already says which is where."""
    return a.label == b.label and sum(i.label == a.label for i in facts.instances) == 2


def _relative_position(facts: ImageFacts, cfg: GenerateConfig, rng: random.Random, names: Names) -> list[Draft]:
    others = [i for i in facts.instances if i.sure and i.label != GENERIC]

    def ask(a: Instance, b: Instance) -> Draft | None:
        where = relation(a, b, facts, cfg)
        if not where or not search_needed(a, b, where, facts, cfg) or just_two(a, b, facts):
            return None
        # names do not give it away: none speaks of the question's axis, and none leans on a third object, whose
        # place in the view would tell where "the boat nearest the island" is without finding the boat
        avoid = frozenset({"horizontal" if where in ("left", "right") else "vertical", "relation"})
        ref_a = names.pick(a, rng, avoid=avoid, not_anchor=b)
        ref_b = names.pick(b, rng, avoid=avoid, not_anchor=a)
        if not ref_a or not ref_b or ref_a == ref_b:
            return None
        if rng.random() < cfg.short_answer_share:
            stem = (
                f"Is {ref_a} to the left or to the right of {ref_b}? Answer left or right."
                if where in ("left", "right")
                else f"Is {ref_a} above or below {ref_b}? Answer above or below."
            )
            return Draft("relative_position", stem, where, [], "text", a.label, [a, b], [ref_a, ref_b])
        wrong = [OPPOSITE[where]]
        if not apart_on_both_axes(a, b):  # else the other axis's relation could be true as well
            wrong += [r for r in RELATIONS if r not in (where, OPPOSITE[where])]
        stem = f"Where is {ref_a} relative to {ref_b}?"
        return Draft("relative_position", stem, where, wrong, "text", a.label, [a, b], [ref_a, ref_b])

    return _pair_questions(_targets(facts), lambda a: others, ask, cfg, rng, one_way=True)


def _compare_size(facts: ImageFacts, cfg: GenerateConfig, rng: random.Random, names: Names) -> list[Draft]:
    """Is one named object longer or shorter than another of its class, by at least `length_ratio`; their names
    never speak of size, which would give the answer away."""

    def partners(a: Instance) -> list[Instance]:
        return [b for b in facts.instances if b is not a and b.label == a.label and b.sure]

    def ask(a: Instance, b: Instance) -> Draft | None:
        if cut_off(a, facts) or cut_off(b, facts):
            return None  # a length the image's edge cuts is not the object's length
        longer = length(a) >= cfg.length_ratio * length(b)
        if not longer and length(b) < cfg.length_ratio * length(a):
            return None  # too close in length to call from boxes a labeller drew
        ref_a = names.pick(a, rng, avoid=frozenset({"size"}), not_anchor=b)
        ref_b = names.pick(b, rng, avoid=frozenset({"size"}), not_anchor=a)
        if not ref_a or not ref_b or ref_a == ref_b:
            return None
        stem = f"Is {ref_a} longer or shorter than {ref_b}? Answer longer or shorter."
        answer = "longer" if longer else "shorter"
        return Draft("compare_size", stem, answer, [], "text", a.label, [a, b], [ref_a, ref_b])

    return _pair_questions(_targets(facts), partners, ask, cfg, rng, one_way=True)


def text_confirmed(instance: Instance, cfg: GenerateConfig) -> bool:
    """The labeller's reading is asked only when OCR at full resolution reads nearly the same."""
    if not instance.text or not instance.ocr_text:
        return False
    return (
        difflib.SequenceMatcher(None, squeezed(instance.text), squeezed(instance.ocr_text)).ratio()
        >= cfg.min_text_agreement
    )


WORD_SLACK = 0.3


def word_box(instance: Instance, first: bool) -> tuple[float, float, float, float]:
    """Where a one-line text's first (or last) word lies in its box, taking letters and spaces as equally wide,
    widened on each side by `WORD_SLACK` of its own length and a letter: the part of the text a zoom must show.
    (In a real font an M is twice an I and a space narrower than either: a box cut to the count can cut the word.)"""
    text = instance.text
    x1, y1, x2, y2 = instance.box
    per_char = (x2 - x1) / len(text)
    word = text.split()[0 if first else -1]
    start = text.index(word) if first else text.rindex(word)
    slack = 1 + WORD_SLACK * len(word)
    left, right = x1 + (start - slack) * per_char, x1 + (start + len(word) + slack) * per_char
    return max(x1, left), y1, min(x2, right), y2


def _text(facts: ImageFacts, cfg: GenerateConfig, rng: random.Random, names: Names) -> list[Draft]:
    """What a sign says; of a longer text, its first and its last word, which an answer can match exactly."""
    found = []
    for t in _targets(facts):
        ref = text_confirmed(t, cfg) and names.pick(t, rng)
        if not ref:
            continue
        words = t.text.split()
        if len(words) <= cfg.max_text_words:
            stem = f"What does {ref} say? Answer with the text as written."
            found.append(Draft("text", stem, t.text, [], "text", t.label, [t], [ref]))
            continue
        for end, word in (("first", words[0]), ("last", words[-1])):
            stem = f"What is the {end} word of {ref}? Answer with the word as written."
            target = replace(t, box=word_box(t, end == "first"))
            found.append(Draft("text", stem, word, [], "text", t.label, [target], [f"the {end} word of {ref}"]))
    return found[: cfg.per_image]


# Things a person carries or wears, by the verb a question asks with: a question's options are all of one kind, so
# each is a plausible answer (COCO's portable classes, and those of the labelled photos)
CARRIED = frozenset(
    {"bag", "backpack", "handbag", "suitcase", "umbrella", "phone", "cell phone", "camera", "bottle", "cup", "book"}
    | {"map", "leaflet", "newspaper", "ball", "sports ball", "kite", "frisbee", "skateboard", "surfboard", "laptop"}
    | {"tennis racket", "baseball bat", "baseball glove", "leash", "tablet"}
)
WORN = frozenset({"watch", "cap", "hat", "sunglasses", "glasses", "scarf", "tie", "helmet", "mask"})


def _recognition(facts: ImageFacts, cfg: GenerateConfig, rng: random.Random, names: Names) -> list[Draft]:
    """Which of a few things of one kind a named person is carrying (or wearing), when the thing is too small to
    recognise in the view. Every other option is of a class boxed completely with none of it, singly or in a crowd,
    on the person, so exactly one option is true: "Which of these is the leftmost person carrying? A. bag B. camera
    C. bottle". The question names the person, never the thing: its class is the answer."""
    found, targets = [], _targets(facts)
    people = [p for p in facts.instances if p.label in PEOPLE and p.sure and not p.crowd]
    for person in rng.sample(people, len(people)):
        touching = {i.label for i in facts.instances if i.label not in PEOPLE and _inside_share(i, person) > 0}
        for kind, verb in ((CARRIED, "carrying"), (WORN, "wearing")):
            held = [t for t in targets if t.label in kind and carries(person, t, [], facts)]
            for thing in held:
                if not thing.small or sum(t.label == thing.label for t in held) > 1:
                    continue  # seen in the view, or two of a class: which one a zoom must show is not clear
                others = sorted(c for c in kind & facts.complete if c not in touching)
                if len(others) < 2:
                    continue
                ref = names.pick(person, rng, not_leaning_on=kind)  # "the person nearest the bag" would say it
                if not ref:
                    continue
                stem = f"Which of these is {ref} {verb}?"
                distractors = rng.sample(others, min(3, len(others)))
                found.append(
                    Draft(
                        "recognition",
                        stem,
                        thing.label,
                        distractors,
                        "text",
                        thing.label,
                        [thing],
                        [f"the thing {ref} is {verb}"],
                    )
                )
    return found[: cfg.per_image]


WRITERS = {
    "colour": _colour,
    "count": _count,
    "relative_position": _relative_position,
    "compare_size": _compare_size,
    "text": _text,
    "recognition": _recognition,
}


def letter_of(rank: int, image_id: str, options: int = 4) -> int:
    """The correct option's position: an image's multiple-choice questions with as many options take the letters
    in turn, from an offset that depends on the image, so letters come out balanced however many questions an image
    has."""
    return (int(sha256_json(image_id)[:8], 16) + rank) % options


def _finish(facts: ImageFacts, drafts: list[Draft]) -> list[dict]:
    choice = sorted((d for d in drafts if d.distractors), key=lambda d: sha256_json([d.stem, d.correct]))
    letters, ranks = {}, collections.Counter()
    for d in choice:
        n = len(d.distractors) + 1
        letters[id(d)] = letter_of(ranks[n], facts.image_id, n)
        ranks[n] += 1
    questions = []
    for d in drafts:
        base = {
            "question_type": d.question_type,
            "label": d.label,
            "target_region_ids": [t.region_id for t in d.targets if t.region_id],
            "target_boxes": [[round(v) for v in t.box] for t in d.targets],
            "referent": d.referents,
        }
        if d.question_type == "count":
            base["target_region_ids"] = []
        if not d.distractors:
            questions.append({**base, "question": d.stem, "options": [], "answer": d.correct, "checker": d.checker})
            continue
        options = random.Random(sha256_json([d.stem, d.correct])).sample(d.distractors, len(d.distractors))
        options.insert(letters[id(d)], d.correct)
        questions.append(
            {
                **base,
                "question": with_options(d.stem, options),
                "options": options,
                "answer": LETTERS[options.index(d.correct)],
                "checker": "choice",
            }
        )
    return questions


class BuiltinTeacher:
    model = MODEL
    prompt_version = PROMPT_VERSION

    def write_questions(self, facts: ImageFacts, cfg: GenerateConfig) -> list[dict]:
        """Each writer draws from a random stream of its own, and each question's options are shuffled by one of
        the question's own: adding a type, or a change to one, leaves every other question's wording, and so its
        id and split, as it was."""
        drafts, names = [], Names(facts, cfg)
        for kind in cfg.question_types:
            drafts += WRITERS[kind](facts, cfg, random.Random(sha256_json([facts.image_id, cfg.seed, kind])), names)
        return _finish(facts, drafts)
