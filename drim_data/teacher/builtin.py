"""The built-in teacher: offline and deterministic, it writes questions whose answers follow from what was measured.

Every answer is verifiable by construction: a colour measured on the full-resolution pixels, a count of annotated
boxes centred inside a window, the brighter of two distant objects. Referents are given as points or boxes on the
0..1000 grid, so a question is unambiguous without revealing the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from drim_data.pixels.palette import PALETTE, confusions
from drim_data.recipe import GenerateConfig, sha256_json
from schemas.answers import LETTERS, with_options
from schemas.tool import GRID, grid_to_pixels

MODEL = "builtin"
PROMPT_VERSION = "1"
# Colours a person could reasonably call by the other name are never offered as distractors of each other.
CONFUSABLE = {name: set(confusions(name)[:3]) for name in PALETTE}
COLOURS = tuple(PALETTE)


@dataclass(frozen=True)
class Region:
    region_id: str
    label: str
    box: tuple[int, int, int, int]  # original pixels
    colour: str
    colour_share: float
    brightness: float


@dataclass(frozen=True)
class ImageFacts:
    image_id: str
    width: int
    height: int
    regions: list[Region]
    annotations: list[tuple[str, tuple[float, float, float, float]]]  # every annotated box, for counting


def centre_grid(box: tuple, width: int, height: int) -> tuple[int, int]:
    return round((box[0] + box[2]) / 2 / width * GRID), round((box[1] + box[3]) / 2 / height * GRID)


def _where(label: str, point: tuple[int, int]) -> str:
    return f"the {label} centred at ({point[0]}, {point[1]})"


GRID_NOTE = "Coordinates are on a 0-1000 grid over the image."


class BuiltinTeacher:
    model = MODEL
    prompt_version = PROMPT_VERSION

    def write_questions(self, facts: ImageFacts, cfg: GenerateConfig) -> list[dict]:
        rng = random.Random(sha256_json([facts.image_id, cfg.seed]))
        writers = {"colour": self._colour, "count": self._count, "compare_brightness": self._compare}
        questions = []
        for kind in cfg.question_types:
            questions += writers[kind](facts, cfg, rng)
        return questions

    def _colour(self, facts: ImageFacts, cfg: GenerateConfig, rng: random.Random) -> list[dict]:
        found = []
        candidates = [r for r in facts.regions if r.colour_share >= cfg.min_colour_share]
        for region in rng.sample(candidates, min(cfg.per_image, len(candidates))):
            point = centre_grid(region.box, facts.width, facts.height)
            label = region.label.lower()
            stem = f"What is the main colour of {_where(label, point)}? {GRID_NOTE}"
            base = {
                "question_type": "colour",
                "label": label,
                "target_region_ids": [region.region_id],
                "target_boxes": [list(region.box)],
                "referent": [list(point)],
            }
            if rng.random() < cfg.short_answer_share:
                found.append(
                    {
                        **base,
                        "question": f"{stem} Answer with one colour word.",
                        "options": [],
                        "answer": region.colour,
                        "checker": "text",
                    }
                )
                continue
            distractors = [c for c in COLOURS if c != region.colour and c not in CONFUSABLE[region.colour]]
            options = rng.sample(distractors, 3) + [region.colour]
            rng.shuffle(options)
            found.append(
                {
                    **base,
                    "question": with_options(stem, options),
                    "options": options,
                    "answer": LETTERS[options.index(region.colour)],
                    "checker": "choice",
                }
            )
        return found

    def _count(self, facts: ImageFacts, cfg: GenerateConfig, rng: random.Random) -> list[dict]:
        labels = sorted({label for label, _ in facts.annotations})
        found: list[dict] = []
        windows: list[list[int]] = []
        for _ in range(200):
            if len(found) >= cfg.per_image or not labels:
                break
            label = rng.choice(labels)
            side = rng.randint(120, 260)
            x, y = rng.randint(0, GRID - side), rng.randint(0, GRID - side)
            window = [x, y, x + side, y + side]
            if any(_overlap(window, w) for w in windows):
                continue
            px = grid_to_pixels(window, facts.width, facts.height)
            margin = 0.05 * (px[2] - px[0])  # centres this close to an edge are too close to call
            inside, unclear = [], False
            for name, box in facts.annotations:
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                if name != label or not (
                    px[0] - margin < cx < px[2] + margin and px[1] - margin < cy < px[3] + margin
                ):
                    continue
                if px[0] + margin <= cx <= px[2] - margin and px[1] + margin <= cy <= px[3] - margin:
                    inside.append([round(v) for v in box])
                else:
                    unclear = True
                    break
            if unclear or not 2 <= len(inside) <= 9:
                continue
            windows.append(window)
            noun = label.lower() + "s"
            found.append(
                {
                    "question_type": "count",
                    "label": label.lower(),
                    "question": f"How many {noun} have their centre inside the box {window}? {GRID_NOTE} "
                    "Answer with a number.",
                    "options": [],
                    "answer": str(len(inside)),
                    "checker": "number",
                    "target_region_ids": [],
                    "target_boxes": inside,
                    "referent": [window],
                }
            )
        return found

    def _compare(self, facts: ImageFacts, cfg: GenerateConfig, rng: random.Random) -> list[dict]:
        regions = list(facts.regions)
        rng.shuffle(regions)
        found, used = [], set()
        for i, a in enumerate(regions):
            for b in regions[i + 1 :]:
                if len(found) >= cfg.per_image:
                    return found
                if a.region_id in used or b.region_id in used or a.label != b.label:
                    continue
                if abs(a.brightness - b.brightness) < cfg.min_brightness_gap:
                    continue
                pa_, pb = centre_grid(a.box, facts.width, facts.height), centre_grid(b.box, facts.width, facts.height)
                if ((pa_[0] - pb[0]) ** 2 + (pa_[1] - pb[1]) ** 2) ** 0.5 < 0.35 * GRID * 2**0.5:
                    continue  # close pairs fit in one zoom; distant ones need two
                used |= {a.region_id, b.region_id}
                label = a.label.lower()
                options = [f"the one at ({pa_[0]}, {pa_[1]})", f"the one at ({pb[0]}, {pb[1]})"]
                stem = f"Which is brighter: {_where(label, pa_)} or {_where(label, pb)}? {GRID_NOTE}"
                found.append(
                    {
                        "question_type": "compare_brightness",
                        "label": label,
                        "question": with_options(stem, options),
                        "options": options,
                        "answer": "A" if a.brightness > b.brightness else "B",
                        "checker": "choice",
                        "target_region_ids": [a.region_id, b.region_id],
                        "target_boxes": [list(a.box), list(b.box)],
                        "referent": [list(pa_), list(pb)],
                    }
                )
        return found


def _overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
