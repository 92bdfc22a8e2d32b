"""The audit: figures that say whether a version can teach visual search, computed from its shards alone.

A version is verified first, then every row of every split is read. Questions must name their target (a class
name, never coordinates); zooms must not repeat and must gain detail; the reasoning text must vary; the answer
letters of multiple-choice rows must be balanced. Each row gets the flags it breaks, so the review page can show
them and filter by them, and `--fail-on KEY=VALUE` turns any figure into a gate: figures of bad things are upper
bounds, figures of good things lower bounds (`FIGURES` says which).
"""

from __future__ import annotations

import io
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from drim_data.errors import DrimError
from drim_data.pixels.solver import BlindItem, blind_answer
from drim_data.release.versions import iter_rows, verify_version
from schemas.answers import LETTERS, is_correct
from schemas.geometry import iou
from schemas.rows import SPLITS
from schemas.tool import global_view

NEAR_IDENTICAL_IOU = 0.8  # consecutive zooms this alike show the model nothing new
MIN_DETAIL_GAIN = 1.5  # a zoom should show at least 1.5x the pixels per original pixel of the view it zooms from

# figure -> (bound, what it measures); "max": an upper bound (a bad thing), "min": a lower bound (a good thing)
FIGURES: dict[str, tuple[str, str]] = {
    "rows": ("min", "rows in all splits"),
    "coordinate_referents": ("max", "questions with coordinates in their text (points, boxes, 0-1000, grid)"),
    "coordinate_referent_share": ("max", "share of questions with coordinates in their text"),
    "unnamed_referents": ("max", "questions that do not name their target's class"),
    "unnamed_referent_share": ("max", "share of questions that do not name their target's class"),
    "zoom_pairs": ("min", "consecutive zoom pairs in SFT dialogues"),
    "identical_zooms": ("max", "consecutive zoom pairs with identical boxes"),
    "identical_zoom_share": ("max", "share of consecutive zoom pairs with identical boxes"),
    "near_identical_zooms": ("max", f"consecutive zoom pairs at IoU >= {NEAR_IDENTICAL_IOU}"),
    "near_identical_zoom_share": ("max", f"share of consecutive zoom pairs at IoU >= {NEAR_IDENTICAL_IOU}"),
    "median_detail_gain": ("min", "median pixels per original pixel of a zoom over the view it zooms from"),
    "low_detail_gain_share": ("max", f"share of zooms gaining less than {MIN_DETAIL_GAIN}x detail"),
    "reflective_sft_share": ("min", "share of SFT rows with a reflective trajectory"),
    "distinct_think_share": ("min", "distinct <think> texts over all <think> texts"),
    "distinct_think_template_share": ("min", "the same with every number masked: templates filled with numbers"),
    "letter_max_deviation": ("max", "largest gap between an answer letter's share and its uniform share"),
    "question_types": ("min", "distinct question types"),
    "blind_solver_pass_share": ("max", "share of rows the blind solver answers from the global view alone"),
}
FLAGS = (
    "coordinates",  # the question or its options hold coordinates
    "unnamed_referent",  # the question does not name the target's class
    "identical_zooms",  # two consecutive zooms show the same box
    "near_identical_zooms",  # two consecutive zooms overlap at IoU >= NEAR_IDENTICAL_IOU
    "low_detail_gain",  # a zoom gains less than MIN_DETAIL_GAIN over the view it zooms from
    "shared_think",  # a <think> text that another row (or turn) repeats word for word
    "solvable_without_zoom",  # the blind solver answers it correctly from the global view alone
)

_NUMBER = r"\d+(?:\.\d+)?"
COORDINATES = re.compile(
    rf"\(\s*{_NUMBER}(?:\s*,\s*{_NUMBER}){{1,3}}\s*\)"  # a point or box in parentheses: (684, 731)
    rf"|\[\s*{_NUMBER}(?:\s*,\s*{_NUMBER}){{1,3}}\s*\]"  # ... or in brackets: [244, 355, 425, 536]
    r"|\b0\s*(?:-|–|to)\s*1000\b|\bgrid\b|\bcoordinates?\b",
    re.IGNORECASE,
)
# labels that name nothing: a proposal without a class, or a placeholder
GENERIC_LABELS = {"", "object", "objects", "region", "regions", "thing", "things", "item", "patch", "spot", "blob"}
GENERIC_NOUNS = re.compile(r"\b(?:object|thing)s?\b", re.IGNORECASE)  # "the object next to the boat" names no target
IRREGULAR_PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children", "foot": "feet"}
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_DIGITS = re.compile(r"\d+(?:\.\d+)?")


def has_coordinates(text: str) -> bool:
    return COORDINATES.search(text) is not None


def _plurals(word: str) -> list[str]:
    forms = [word, word + "s", word + "es"]
    if word.endswith("y"):
        forms.append(word[:-1] + "ies")
    if word in IRREGULAR_PLURALS:
        forms.append(IRREGULAR_PLURALS[word])
    return forms


def names_class(question: str, label: str | None) -> bool:
    """Whether the question names the target's class (in the singular or plural) and calls nothing an "object" or
    a "thing"; a generic label never counts. A label of several classes ("ship, oil island") must have each named."""
    parts = [p.strip() for p in re.split(r"[,;|/]| and ", (label or "").lower().replace("_", " "))]
    if not parts or any(p in GENERIC_LABELS for p in parts) or GENERIC_NOUNS.search(question):
        return False
    text = question.lower()
    for part in parts:
        *head, last = part.split()
        pattern = r"[\s-]+".join([*map(re.escape, head), "(?:" + "|".join(map(re.escape, _plurals(last))) + ")"])
        if not re.search(rf"\b{pattern}\b", text):
            return False
    return True


def think_texts(messages: list[dict]) -> list[str]:
    """Every <think> text of a dialogue's assistant turns, whitespace collapsed."""
    found = []
    for m in messages or []:
        if m["role"] != "assistant":
            continue
        for block in m["content"] or []:
            for think in _THINK.findall(block.get("text") or ""):
                found.append(" ".join(think.split()))
    return found


def detail_gains(row: dict) -> list[float]:
    """For each zoom, its pixels per original pixel over those of the view it zooms from: the latest earlier
    crop that shows the zoom's centre, else the global view (a zoom elsewhere, such as a reflective recovery or the
    next target, is chosen from the whole image). A crop's scale is its width over its box's width in pixels."""
    views = [(None, row["global_view_size"][0] / row["width"])]  # (pixel box, scale), the global view first
    gains = []
    for turn, (box, crop) in enumerate(zip(row["zoom_boxes_px"] or [], (row["images"] or [])[1:], strict=False)):
        try:
            width = Image.open(io.BytesIO(crop["bytes"])).width  # reads the header only
        except OSError:
            raise DrimError(f"row {row['id']}: the crop of zoom {turn + 1} is not an image") from None
        scale = width / max(1, box[2] - box[0])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        source = next(s for b, s in reversed(views) if b is None or (b[0] <= cx <= b[2] and b[1] <= cy <= b[3]))
        gains.append(scale / source)
        views.append((box, scale))
    return gains


def solved_blind(row: dict) -> bool:
    """The blind solver, told where the targets are, answers the row correctly from the global view alone: the
    view is an SFT row's first image, or an RL row's original downscaled as the trainer shows it."""
    image = Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")
    view = global_view(image, row["global_view_size"])
    item = BlindItem(
        row["question_type"],
        row["label"],
        row["target_boxes_px"],
        row["width"],
        row["height"],
        row["options"],
        row["checker"],
        row["question"],
    )
    return is_correct(row["checker"], blind_answer(view, item), row["answer"])


def letter_balance(choices: list[tuple[str, int]]) -> tuple[dict[str, float], float | None]:
    """Each answer letter's share of the multiple-choice rows, and the largest gap from the share it would have if
    every row's letters were equally likely (rows with fewer options give their letters more)."""
    if not choices:
        return {}, None
    letters = LETTERS[: max(n for _, n in choices)]
    counts = Counter(answer for answer, _ in choices)
    shares = {x: counts[x] / len(choices) for x in letters}
    uniform = {x: sum(1 / n for _, n in choices if i < n) / len(choices) for i, x in enumerate(letters)}
    return shares, max(abs(shares[x] - uniform[x]) for x in letters)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass
class Audit:
    figures: dict[str, float | int | None]
    breakdown: dict
    rows: list[dict]  # {"id", "split", "flags"}

    def to_json(self) -> dict:
        return {"figures": self.figures, "breakdown": self.breakdown, "rows": self.rows}


@dataclass
class Tally:
    """Accumulates the audit row by row (the review page feeds it the rows it already reads)."""

    rows: list[dict] = field(default_factory=list)
    types: dict[str, Counter] = field(default_factory=lambda: {split: Counter() for split in SPLITS})
    patterns: dict[str, Counter] = field(default_factory=lambda: {split: Counter() for split in SPLITS})
    thinks: dict[str, list[str]] = field(default_factory=lambda: {split: [] for split in SPLITS})
    row_thinks: list[list[str]] = field(default_factory=list)
    choices: list[tuple[str, int]] = field(default_factory=list)
    pairs: int = 0
    identical: int = 0
    near_identical: int = 0
    gains: list[float] = field(default_factory=list)

    def add(self, split: str, row: dict) -> None:
        flags = []
        text = "\n".join([row["question"], *(row.get("options") or [])])
        if has_coordinates(text):
            flags.append("coordinates")
        if not names_class(row["question"], row.get("label")):
            flags.append("unnamed_referent")
        self.types[split][row["question_type"]] += 1
        if row.get("pattern"):
            self.patterns[split][row["pattern"]] += 1
        if row["checker"] == "choice" and row.get("options"):
            self.choices.append((row["answer"].strip().upper(), len(row["options"])))
        boxes = row.get("zoom_boxes_px") or []
        pairs = list(zip(boxes, boxes[1:], strict=False))
        identical = sum(list(a) == list(b) for a, b in pairs)
        near = sum(iou(a, b) >= NEAR_IDENTICAL_IOU for a, b in pairs)
        self.pairs += len(pairs)
        self.identical += identical
        self.near_identical += near
        if identical:
            flags.append("identical_zooms")
        if near:
            flags.append("near_identical_zooms")
        gains = detail_gains(row) if boxes else []
        self.gains += gains
        if any(g < MIN_DETAIL_GAIN for g in gains):
            flags.append("low_detail_gain")
        if solved_blind(row):
            flags.append("solvable_without_zoom")
        thinks = think_texts(row.get("messages") or row.get("prompt") or [])
        self.thinks[split] += thinks
        self.row_thinks.append(thinks)
        self.rows.append({"id": row["id"], "split": split, "flags": flags})

    def result(self) -> Audit:
        repeated = {t for t, n in Counter(t for ts in self.row_thinks for t in ts).items() if n > 1}
        for entry, thinks in zip(self.rows, self.row_thinks, strict=True):
            if repeated.intersection(thinks):
                entry["flags"].append("shared_think")
        flagged = Counter(f for entry in self.rows for f in entry["flags"])
        n = len(self.rows)
        sft = sum(self.types["sft"].values())
        everything = [t for thinks in self.thinks.values() for t in thinks]
        shares, deviation = letter_balance(self.choices)
        figures = {
            "rows": n,
            "coordinate_referents": flagged["coordinates"],
            "coordinate_referent_share": _share(flagged["coordinates"], n),
            "unnamed_referents": flagged["unnamed_referent"],
            "unnamed_referent_share": _share(flagged["unnamed_referent"], n),
            "zoom_pairs": self.pairs,
            "identical_zooms": self.identical,
            "identical_zoom_share": _share(self.identical, self.pairs),
            "near_identical_zooms": self.near_identical,
            "near_identical_zoom_share": _share(self.near_identical, self.pairs),
            "median_detail_gain": statistics.median(self.gains) if self.gains else None,
            "low_detail_gain_share": _share(sum(g < MIN_DETAIL_GAIN for g in self.gains), len(self.gains)),
            "reflective_sft_share": _share(self.patterns["sft"]["reflective"], sft),
            "distinct_think_share": _share(len(set(everything)), len(everything)),
            "distinct_think_template_share": _share(len({_DIGITS.sub("#", t) for t in everything}), len(everything)),
            "letter_max_deviation": deviation,
            "question_types": len(set().union(*self.types.values())),
            "blind_solver_pass_share": _share(flagged["solvable_without_zoom"], n),
        }
        breakdown = {
            "rows": {s: sum(c.values()) for s, c in self.types.items()},
            "question_types": {s: dict(sorted(c.items())) for s, c in self.types.items()},
            "patterns": {s: dict(sorted(c.items())) for s, c in self.patterns.items()},
            "distinct_think_share": {s: _share(len(set(t)), len(t)) for s, t in self.thinks.items()},
            "answer_letters": shares,
            "zooms": len(self.gains),
            "flags": {f: flagged[f] for f in FLAGS},
        }
        return Audit(figures, breakdown, self.rows)


def audit_version(version_dir: Path) -> Audit:
    """The audit of a version, once every shard checks out against its manifest."""
    manifest = verify_version(Path(version_dir))
    tally = Tally()
    for split, row in iter_rows(version_dir, manifest):
        tally.add(split, row)
    return tally.result()


def parse_thresholds(specs: list[str]) -> dict[str, float]:
    """`KEY=VALUE` strings -> {figure: threshold}; an unknown figure or a value that is not a number is an error."""
    thresholds = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip()
        if not sep or key not in FIGURES:
            raise DrimError(f"--fail-on {spec!r}: expected KEY=VALUE with KEY one of {', '.join(FIGURES)}")
        try:
            thresholds[key] = float(value)
        except ValueError:
            raise DrimError(f"--fail-on {spec!r}: {value!r} is not a number") from None
    return thresholds


def broken_thresholds(figures: dict, thresholds: dict[str, float]) -> list[str]:
    """One line per figure that breaks its threshold; a figure the version cannot measure breaks it too."""
    broken = []
    for key, limit in thresholds.items():
        bound, _ = FIGURES[key]
        value = figures.get(key)
        if value is None:
            broken.append(f"{key} cannot be measured on this version (nothing to measure it on); threshold {limit:g}")
        elif bound == "max" and value > limit:
            broken.append(f"{key} = {value:.4g} is above its upper bound {limit:g}")
        elif bound == "min" and value < limit:
            broken.append(f"{key} = {value:.4g} is below its lower bound {limit:g}")
    return broken
