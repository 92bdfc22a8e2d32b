"""The `<think>` text of built-in trajectories, written from what each view shows and nothing else.

Every statement is a measurement: sizes from the boxes and the views' scales, colours named on the palette from
the crop's (or the object's own) pixels, counts of annotated instances inside the crop (stated exactly only for
classes whose every instance is boxed), text read by OCR, directions and distances from box centres. A view is
said to be too small for a detail only when the object spans fewer pixels there than the view can resolve.
"""

from __future__ import annotations

import difflib
import math

import numpy as np
from PIL import Image

from drim_data.errors import Drop
from drim_data.pixels.measure import measure
from drim_data.pixels.ocr import squeezed
from drim_data.pixels.palette import colour_name, object_pixels
from drim_data.stages.search import Scene, Zoom, centre, contains, detail
from schemas.geometry import intersects
from schemas.tool import GRID

SAMPLE = 4096  # pixels of a crop its colour is named on
SAID_COLOUR_SHARE = 0.6  # an object's colour is said only when this share of its own pixels carry it
ASPECT = {
    "colour": "its colour",
    "count": "one {label} from the next",
    "text": "any writing",
    "relative_position": "where exactly each one is",
    "compare_size": "how long each one is",
    "compare_brightness": "their brightness",
    "recognition": "what it is",
}
IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children"}


def plural(label: str, n: int = 2) -> str:
    if n == 1:
        return label
    if label in IRREGULAR:
        return IRREGULAR[label]
    if label.endswith(("s", "x", "ch", "sh")):
        return label + "es"
    if label.endswith("y") and label[-2:-1] not in "aeiou":
        return label[:-1] + "ies"
    return label + "s"


def names(item) -> list[str]:
    """How the dialogue names each target: the question's referring expressions when it has them as text."""
    ref, n = item.referent, len(item.targets)
    if isinstance(ref, str):
        ref = [ref]
    if isinstance(ref, list) and len(ref) == n and all(isinstance(r, str) and r for r in ref):
        return [r if r.lower().startswith(("the ", "a ")) else f"the {r}" for r in ref]
    if n == 1 or item.question_type == "count":
        return [f"the {item.label}"] * n
    return [f"the {('first', 'second', 'third', 'fourth')[i % 4]} {item.label}" for i in range(n)]


def region_name(box, width: int, height: int) -> str:
    """Where a box lies in the image, in words: 'upper left', 'centre', 'lower middle'..."""
    x, y = centre(box)
    row = ("upper", "middle", "lower")[min(2, int(3 * y / height))]
    col = ("left", "middle", "right")[min(2, int(3 * x / width))]
    if row == col == "middle":
        return "centre"
    return f"{row} {col}" if row != "middle" else f"middle {col}"


def placed(subject, box) -> str:
    """Where in a view (box) the subject's centre is."""
    (x, y), (bx, by) = centre(subject), centre(box)
    w, h = box[2] - box[0], box[3] - box[1]
    dx, dy = (x - bx) / w, (y - by) / h
    parts = [
        ("upper" if dy < 0 else "lower") if abs(dy) >= 0.1 else "",
        ("left" if dx < 0 else "right") if abs(dx) >= 0.1 else "",
    ]
    where = " ".join(p for p in parts if p)
    return f"in the {where} part of this view" if where else "near the centre of this view"


def direction(src, dst) -> str:
    """The direction from one box's centre to another's, in image terms."""
    (x1, y1), (x2, y2) = centre(src), centre(dst)
    dx, dy = x2 - x1, y2 - y1
    vertical = ("above" if dy < 0 else "below") if abs(dy) >= 0.4 * abs(dx) else ""
    horizontal = ("to the left" if dx < 0 else "to the right") if abs(dx) >= 0.4 * abs(dy) else ""
    return " and ".join(p for p in (vertical, horizontal) if p)


def direction_of(src, dst, what: str) -> str:
    """Where dst lies from src, said of `what`: 'above it', 'to the left of it', 'below and to the right of it'."""
    where = direction(src, dst)
    return f"{where} of {what}" if "to the" in where else f"{where} {what}"


def grid_distance(a, b, scene: Scene) -> int:
    (x1, y1), (x2, y2) = centre(a), centre(b)
    return round(math.hypot((x2 - x1) / scene.width * GRID, (y2 - y1) / scene.height * GRID))


def size_in(box, scale: float, decimals: int | None = None) -> str:
    w, h = (box[2] - box[0]) * scale, (box[3] - box[1]) * scale
    places = decimals if decimals is not None else 0 if min(w, h) >= 10 else 1
    return f"{w:.{places}f}x{h:.{places}f} px"


def crop_colour(crop: Image.Image) -> tuple[str, float]:
    pixels = np.asarray(crop.convert("RGB")).reshape(-1, 3)
    step = max(1, len(pixels) // SAMPLE)
    return colour_name(pixels[::step])


def own_colour(image: Image.Image, box) -> tuple[str, float]:
    """The palette colour of an object's own pixels (separated from its surround) and the share it names."""
    x1, y1, x2, y2 = (round(v) for v in box)
    patch = np.asarray(image.crop((x1, y1, x2, y2)).convert("RGB"))
    return colour_name(object_pixels(patch, (0, 0, patch.shape[1], patch.shape[0])))


def instances_in(box, scene: Scene, label: str) -> str:
    """How many annotated instances of the class have their centre in the view, said as exactly as is known: a
    crowd box in view may hide more."""
    n = sum(contains(box, (*centre(b), *centre(b))) for b in scene.instances(label))
    exact = scene.is_complete(label) and not any(intersects(box, b) for b in scene.crowd_boxes(label))
    if n == 0:
        return f"no {plural(label)}" if exact else f"no {label} I can identify"
    return f"{n} {plural(label, n)}" if exact else f"at least {n} {plural(label, n)}"


class Narrator:
    """Writes one item's `<think>` texts from its executed zooms and their crops."""

    def __init__(self, item, scene: Scene, image: Image.Image, view_scale: float, min_resolvable_px: float):
        self.item, self.scene, self.image = item, scene, image
        self.scale, self.resolvable = view_scale, min_resolvable_px
        self.label = item.label
        self.names = names(item)

    def thinks(self, zooms: list[Zoom], crops: list[Image.Image]) -> tuple[list[str], str]:
        """The think text before each zoom (about the view it refines) and the final one (about the last crop)."""
        before = [self.opening(zooms[0])]
        for i in range(1, len(zooms)):
            before.append(self.between(zooms[i - 1], crops[i - 1], zooms[i]))
        return before, self.conclusion(zooms, crops)

    def opening(self, first: Zoom) -> str:
        """From the global view: how small the object is there, and where the first zoom looks."""
        item, label = self.item, self.label
        shown = smallest(item.targets)
        small = _short(shown) * self.scale
        aspect = ASPECT.get(item.question_type, "its details").format(label=label)
        w, h = self.scene.width * self.scale, self.scene.height * self.scale
        if item.question_type == "count":
            who = f"the smallest of the {plural(label)} asked about"
        else:
            who = self.names[0] if len(item.targets) == 1 else "the smaller of them"
        size = f"In this {w:.0f}x{h:.0f} view {who} spans about {size_in(shown, self.scale, 1)}"
        if small < self.resolvable:
            size += f": its shorter side is under the {self.resolvable:g} px it takes to make out {aspect}."
        else:
            size += f"; a closer view will make {aspect} certain."
        where = region_name(first.box, self.scene.width, self.scene.height)
        if first.role == "miss":
            look = f"One candidate sits in the {where} of the image; I zoom there to check it."
        elif item.question_type == "count":
            total = instances_in((0, 0, self.scene.width, self.scene.height), self.scene, label)
            look = f"The image holds {total} in all; the ones asked about are in the {where}, so I look there."
        elif len(item.targets) > 1 and all(contains(first.box, t) for t in item.targets):
            look = f"They are close together in the {where} of the image, so one zoom can show them all."
        elif len(item.targets) > 1:
            look = f"I need each of them up close, starting with {self.names[0]} in the {where}."
        elif first.role == "direct":
            look = f"One zoom into the {where} of the image will show it large enough."
        else:
            look = f"I will look at the {where} of the image first."
        return f"{size} {look}"

    def between(self, seen: Zoom, crop: Image.Image, nxt: Zoom) -> str:
        """After a crop and before the next zoom: what the crop showed and why another zoom is needed."""
        colour, share = crop_colour(crop)
        scale = detail(seen.box, crop.size)
        # what the thing is, is the answer: a view is not said to hold some of its class before the last one
        held = (
            ""
            if self.item.question_type == "recognition"
            else f" and holds {instances_in(seen.box, self.scene, self.label)}"
        )
        view = (
            f"This view ({seen.box[2] - seen.box[0]}x{seen.box[3] - seen.box[1]} px of the original at "
            f"{scale:.2f}x) is {share:.0%} {colour}{held}."
        )
        name = self.names[nxt.target]
        if seen.role == "miss" and self.item.question_type == "count":
            goal = item_box(self.item, nxt)
            away = grid_distance(seen.box, goal, self.scene)
            return (
                f"{view} These are not the {plural(self.label)} the question asks about: those lie "
                f"{direction_of(seen.box, goal, 'here')}, about {away} grid units away. I zoom over there."
            )
        if seen.role == "miss":
            d = seen.subject
            what, part = self.describe(d, scale), placed(d, seen.box)
            kind = f"The {self.label} {part}" if self.is_instance(d) else f"The blob {part}, not a {self.label},"
            goal = item_box(self.item, nxt)
            why = (
                f"{kind} is {what}. It is not {name}: that one lies {direction_of(d, goal, 'it')}, "
                f"about {grid_distance(d, goal, self.scene)} grid units away"
                f"{self.size_compare(d, goal)}. I zoom over there."
            )
            return f"{view} {why}"
        if seen.target != nxt.target and self.item.question_type == "count":  # one group counted, on to the next
            here = len(counted_in(seen, [seen], self.item.targets))
            where = region_name(nxt.box, self.scene.width, self.scene.height)
            return (
                f"{view} {here} of the {plural(self.label)} asked about are here. More lie in the {where} of the "
                "image; I zoom there."
            )
        if seen.target != nxt.target:  # multi-target: done with one, on to the next
            t = self.item.targets[seen.target]
            done = f"{self.names[seen.target].capitalize()} {placed(t, seen.box)} is {self.describe(t, scale)}."
            where = region_name(nxt.box, self.scene.width, self.scene.height)
            return f"{view} {done} Now {name}, in the {where} of the image."
        subject = seen.subject
        if self.item.question_type == "count":
            least = size_in(smallest(self.item.targets), scale)
            found = f"The {plural(self.label)} asked about are {placed(subject, seen.box)}, the smallest still {least}"
        else:
            found = f"{name.capitalize()} is {placed(subject, seen.box)}, still only {size_in(subject, scale)}"
        return f"{view} {found} here; a closer zoom will show it at {detail(nxt.box):.1f}x."

    def conclusion(self, zooms: list[Zoom], crops: list[Image.Image]) -> str:
        """From the last crop (each target's own crop, for several): the measurement that gives the answer."""
        item, qtype = self.item, self.item.question_type
        last, crop = zooms[-1], crops[-1]
        scale = detail(last.box, crop.size)
        chosen = item.options["ABCD".index(item.answer)] if item.options and item.answer in "ABCD" else item.answer
        if qtype == "colour":
            return self.colour(item.targets[0], scale, chosen)
        if qtype == "count":
            return self.count(zooms, chosen)
        if qtype == "compare_brightness":
            return self.brightness(chosen)
        if qtype == "relative_position":
            return self.relation(chosen)
        if qtype == "compare_size":
            return self.lengths(chosen)
        if qtype == "text":
            return self.text(item.targets[0], last, crop, chosen)
        target = item.targets[last.target]
        if qtype == "recognition":
            what = f"{'an' if self.label[:1] in 'aeiou' else 'a'} {self.label}"
            return f"Up close {self.names[0]} spans {size_in(target, scale)}: it is {what}. The answer is {chosen}."
        return f"Up close {self.names[last.target]} is {self.describe(target, scale)}. The answer is {chosen}."

    def colour(self, target, scale: float, chosen: str) -> str:
        for measured, of in (
            (own_colour(self.image, target), "of its own pixels"),
            (self.central(target), "of its central pixels"),
        ):
            if measured[0] == str(chosen).lower():
                return (
                    f"Up close {self.names[0]} spans {size_in(target, scale)}; {measured[1]:.0%} {of} are "
                    f"{measured[0]}, so its colour is {chosen}."
                )
        raise Drop(
            "colour_not_confirmed", f"{self.names[0]}: measured {own_colour(self.image, target)}, answer {chosen}"
        )

    def count(self, zooms: list[Zoom], chosen: str) -> str:
        last = zooms[-1]
        n = len(self.item.targets)
        if str(chosen).strip() != str(n):
            raise Drop("count_not_confirmed", f"{n} counted instances, answer {chosen}")
        shown = instances_in(last.box, self.scene, self.label)
        looks = [z for z in zooms if z.role != "miss"]
        if len({z.target for z in looks}) > 1:  # counted over several views: each instance in the first that holds it
            parts = [len(counted_in(z, looks, self.item.targets)) for z in looks]
            if sum(parts) != n:
                raise Drop("count_not_confirmed", f"views hold {parts} of {n} counted instances")
            return (
                f"This view holds {shown}, {parts[-1]} of them asked about; with the "
                f"{' and '.join(map(str, parts[:-1]))} seen before, {n} are in the area the question describes. "
                f"The answer is {chosen}."
            )
        return (
            f"This view holds {shown}; the smallest of those asked about now spans "
            f"{size_in(smallest(self.item.targets), detail(last.box))}, and {n} of them are in the area the "
            f"question describes. The answer is {chosen}."
        )

    def brightness(self, chosen: str) -> str:
        levels = [
            measure(np.asarray(self.image.crop(tuple(round(v) for v in t)).convert("RGB"))).brightness
            for t in self.item.targets
        ]
        brighter = int(np.argmax(levels))
        if self.item.options and self.item.answer != "ABCD"[brighter]:
            raise Drop("brightness_not_confirmed", f"levels {levels}, answer {self.item.answer}")
        said = "; ".join(f"{n} has mean brightness {b:.0f} of 255" for n, b in zip(self.names, levels, strict=True))
        return f"{said[0].upper()}{said[1:]}. So {self.names[brighter]} is the brighter: {chosen}."

    def relation(self, chosen: str) -> str:
        (a, b), (na, nb) = self.item.targets[:2], self.names[:2]
        ga, gb = (self.grid_point(t) for t in (a, b))
        where = direction(b, a)
        words = {w for w in ("left", "right", "above", "below") if w in str(chosen).lower()}
        if words and not words <= set(where.replace("to the ", "").split(" and ")):
            raise Drop("position_not_confirmed", f"{na} is {where} of {nb}, answer {chosen}")
        return (
            f"{na.capitalize()} is centred near {ga} and {nb} near {gb}: {na} is {direction_of(b, a, nb)}. "
            f"The answer is {chosen}."
        )

    def lengths(self, chosen: str) -> str:
        """The two objects' lengths in original pixels (the longer side of each box), which decide the answer."""
        (a, b), (na, nb) = self.item.targets[:2], self.names[:2]
        la, lb = (max(t[2] - t[0], t[3] - t[1]) for t in (a, b))
        measured = "longer" if la > lb else "shorter"
        if str(chosen).strip().lower() != measured:
            raise Drop("size_not_confirmed", f"{na} {la:.0f} px, {nb} {lb:.0f} px, answer {chosen}")
        return (
            f"At full resolution {na} is about {la:.0f} px long and {nb} about {lb:.0f} px, "
            f"{max(la, lb) / max(1.0, min(la, lb)):.1f} times as long: {na} is {measured}. The answer is {chosen}."
        )

    def text(self, target, last: Zoom, crop: Image.Image, chosen: str) -> str:
        """What the text reads up close; OCR's reading of the crop is quoted only where it agrees with the answer,
        since a reading that contradicts it would teach a conclusion the view does not support."""
        said = f"Up close {self.names[0]} spans {size_in(target, detail(last.box, crop.size))}"
        agreeing = [t for t in ocr_lines(crop) if agrees(t, str(chosen))]
        if agreeing:
            said += f", and OCR on this view reads {agreeing[0]!r}"
        return f"{said}: it reads {chosen}. The answer is {chosen}."

    def describe(self, box, scale: float) -> str:
        """Its colour, where the measurement can be trusted (most of its pixels, and the labeller's colour if one
        was recorded: a thin conifer's box is mostly the pale wall behind it), and its size at this zoom."""
        colour, share = own_colour(self.image, box)
        recorded = self.scene.colours.get(tuple(round(v) for v in box))
        if share < SAID_COLOUR_SHARE or recorded not in (None, colour):
            return f"{size_in(box, scale)} at this zoom"
        return f"{colour} ({share:.0%} of its pixels) and {size_in(box, scale)} at this zoom"

    def size_compare(self, seen, target) -> str:
        ratio = (_area(target) / _area(seen)) ** 0.5 if _area(seen) else 1.0
        if ratio >= 1.25:
            return f", and about {ratio:.1f} times its size"
        if ratio <= 0.8:
            return f", and about {1 / ratio:.1f} times smaller"
        return ", and of about its size"

    def is_instance(self, box) -> bool:
        return tuple(box) in {tuple(b) for b in self.scene.instances(self.label)}

    def central(self, box) -> tuple[str, float]:
        m = measure(np.asarray(self.image.crop(tuple(round(v) for v in box)).convert("RGB")))
        return m.colour, m.colour_share

    def grid_point(self, box) -> tuple[int, int]:
        x, y = centre(box)
        return round(x / self.scene.width * GRID), round(y / self.scene.height * GRID)


def counted_in(zoom: Zoom, looks: list[Zoom], targets) -> list:
    """The counted instances a view is the first of `looks` to hold wholly: each is counted once."""
    first = {}
    for i, z in enumerate(looks):
        for j, t in enumerate(targets):
            if j not in first and contains(z.subject, t):
                first[j] = i
    here = looks.index(zoom)
    return [targets[j] for j, i in first.items() if i == here]


def item_box(item, zoom: Zoom):
    return item.targets[zoom.target] if item.question_type != "count" else zoom.subject


def smallest(boxes):
    """The box with the shortest side, the smaller in area on a tie: the one a view resolves last."""
    return min(boxes, key=lambda b: (round(_short(b)), _area(b)))


def _short(box) -> float:
    return min(box[2] - box[0], box[3] - box[1])


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def agrees(reading: str, answer: str, least: float = 0.7) -> bool:
    """Whether an OCR reading holds the answer, letter for letter or nearly (OCR drops and swaps letters)."""
    reading, answer = squeezed(reading), squeezed(answer)
    if not reading or not answer:
        return False
    if answer in reading:
        return True
    best = max(
        difflib.SequenceMatcher(None, reading[i : i + len(answer)], answer).ratio()
        for i in range(max(1, len(reading) - len(answer) + 1))
    )
    return best >= least


def ocr_lines(crop: Image.Image) -> list[str]:
    """Text OCR reads in a crop, confident lines first; none where no OCR model is installed."""
    try:
        from drim_data.pixels.ocr import read_text
    except ImportError:
        return []
    lines = sorted(read_text(crop), key=lambda line: -line.confidence)
    return [line.text for line in lines if line.confidence >= 0.5]
