"""The audit on a version made by hand whose flaws are known: each figure's exact value, each flag on its rows,
the `--fail-on` gates and their exit codes, and a tampered version refused."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from drim_data.cli import app
from drim_data.errors import DrimError
from drim_data.release.audit import (
    audit_version,
    broken_thresholds,
    has_coordinates,
    letter_balance,
    names_class,
    parse_thresholds,
)
from schemas.answers import with_options
from schemas.rows import SCHEMA_VERSION, SPLITS, message
from schemas.tool import SYSTEM_PROMPT, ZOOM, normalise, observation_text, pixels_to_grid, tool_call

runner = CliRunner()
WIDTH, HEIGHT = 1000, 800
VIEW = [250, 200]  # the global view's scale is 0.25
COLOURS = ["red", "blue", "green", "gray"]


def _png(size: tuple[int, int], colour=(120, 120, 120)) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _common(row_id: str, qtype: str, label: str, question: str, options: list, answer: str, checker: str) -> dict:
    target = [410, 300, 430, 318]
    return {
        "id": row_id,
        "image_id": hashlib.sha256(b"scene").hexdigest(),
        "question": with_options(question, options),
        "options": options,
        "answer": answer,
        "checker": checker,
        "question_type": qtype,
        "difficulty": "hard",
        "label": label,
        "width": WIDTH,
        "height": HEIGHT,
        "target_boxes_px": [target],
        "target_boxes_norm": [normalise(target, WIDTH, HEIGHT)],
        "global_view_size": VIEW,
    }


def sft(row_id, qtype, label, question, options, answer, checker, pattern, zooms, thinks) -> dict:
    """An SFT row whose zooms are (pixel box, crop width): each crop is an image of that width, so the detail a zoom
    gains is known; `thinks` holds one text per zoom and one for the answer."""
    common = _common(row_id, qtype, label, question, options, answer, checker)
    messages = [message("system", SYSTEM_PROMPT), message("user", common["question"], images=1)]
    images = [_png(tuple(VIEW))]
    for (box, crop_width), think in zip(zooms, thinks, strict=False):
        grid = pixels_to_grid(box, WIDTH, HEIGHT)
        messages.append(message("assistant", f"<think>{think}</think>", tool_calls=[tool_call(grid)]))
        messages.append(message("tool", observation_text(grid, box), images=1, name="zoom_in"))
        images.append(_png((crop_width, max(1, crop_width * (box[3] - box[1]) // (box[2] - box[0])))))
    messages.append(message("assistant", f"<think>{thinks[-1]}</think>\n<answer>{answer}</answer>"))
    return {
        **common,
        "messages": messages,
        "pattern": pattern,
        "zoom_boxes_px": [list(b) for b, _ in zooms],
        "images": images,
    }


def rl(row_id, qtype, label, question, options, answer, checker) -> dict:
    common = _common(row_id, qtype, label, question, options, answer, checker)
    prompt = [message("system", SYSTEM_PROMPT), message("user", common["question"], images=1)]
    return {**common, "prompt": prompt, "images": [_png((WIDTH, HEIGHT))]}


SHARED = "The boat is too small to see here; I will zoom in."
ROWS = {
    "sft": [
        # clean: named, coarse (scale 0.75, gain 3) then fine inside it (scale 2.5, gain 3.33), IoU 0.0625
        sft(
            "s1", "colour", "boat", "What colour is the northernmost boat?", COLOURS, "A", "choice", "coarse_to_fine",
            [([100, 100, 500, 420], 300), ([200, 200, 300, 280], 250)],
            ["The boats lie along the top edge.", "The northernmost boat is in this corner.", "Its hull is red."],
        ),
        # coordinates; the same box twice (gains 4 then 1); a think text shared with s3
        sft(
            "s2", "colour", "boat", "What colour is the boat centred at (630, 316)? Coordinates are on a 0-1000 grid.",
            COLOURS, "A", "choice", "coarse_to_fine",
            [([100, 100, 300, 260], 200), ([100, 100, 300, 260], 200)],
            [SHARED, "A closer look at the same place.", "It is red."],
        ),
        # an unnamed referent ("object", class boat never named); IoU 0.9 (gains 4 then 3)
        sft(
            "s3", "colour", "boat", "What colour is the small object at the left?", COLOURS, "B", "choice",
            "coarse_to_fine",
            [([0, 0, 100, 100], 100), ([0, 0, 100, 90], 300)],
            [SHARED, "The object fills this view.", "It is blue."],
        ),
        # reflective: a miss elsewhere (gain 4), then the target, chosen from the global view (1.2 / 0.25 = 4.8)
        sft(
            "s4", "colour", "person", "What colour is the leftmost person's coat?", COLOURS, "A", "choice",
            "reflective",
            [([600, 500, 800, 660], 200), ([50, 50, 150, 130], 120)],
            ["Someone stands at 600 px.", "That is not the leftmost person; the left edge has one.", "Red."],
        ),
        # one zoom (scale 0.5, gain 2); "people" names the class person
        sft(
            "s5", "count", "person", "How many people are in the top half of the image?", [], "3", "number",
            "direct", [([0, 0, 1000, 400], 500)], ["Someone stands at 40 px.", "I count three."],
        ),
    ],
    "rl": [
        rl("r1", "text", "sign", "What does the sign above the door say?", [], "OPEN", "text"),
        rl("r2", "relative_position", "statue", "Is the statue left or right of the door?", ["left", "right"], "B",
           "choice"),
        rl("r3", "count", "ship", "How many ships have their centre inside the box [244, 355, 425, 536]?", [], "2",
           "number"),
        rl("r4", "colour", "region", "What colour is the thing near the pier?", COLOURS, "C", "choice"),
    ],
}  # fmt: skip
FLAGS = {
    "s1": [],
    "s2": ["coordinates", "identical_zooms", "near_identical_zooms", "low_detail_gain", "shared_think"],
    "s3": ["unnamed_referent", "near_identical_zooms", "shared_think"],
    "s4": [],
    "s5": [],
    "r1": [],
    "r2": [],
    "r3": ["coordinates"],
    "r4": ["unnamed_referent"],
}


def write_shards(version: Path, rows: dict[str, list[dict]], form: str = "drim-shards/1") -> Path:
    """A version folder as export writes it: schema-checked shards and a manifest with their sha256; in format 1
    (no test split) unless `form` says otherwise."""
    shards = {}
    for split, split_rows in rows.items():
        features, schema = SPLITS[split]
        schema.validate(pa.Table.from_pylist(split_rows, schema=features.arrow_schema).to_pandas(), lazy=True)
        rel = f"data/{split}/train-00000-of-00001.parquet"
        (version / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(split_rows, schema=features.arrow_schema), version / rel)
        shards[rel] = {"rows": len(split_rows), "sha256": hashlib.sha256((version / rel).read_bytes()).hexdigest()}
    manifest = {
        "format": form,
        "dataset": "flawed",
        "version": 1,
        "parent": None,
        "fingerprint": hashlib.sha256(str(version).encode()).hexdigest(),
        "recipe_hash": "0" * 64,
        "code_version": "test",
        "schema_version": SCHEMA_VERSION,
        "created_at": "2025-01-01T00:00:00+00:00",
        "rows": {split: len(r) for split, r in rows.items()},
        "shards": shards,
        "tool": ZOOM.manifest(),
        "license": "other",
        "sources": [],
    }
    (version / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return version


def flawed_version(root: Path) -> Path:
    return write_shards(root / "flawed" / "v1", ROWS)


@pytest.fixture
def version(tmp_path) -> Path:
    return flawed_version(tmp_path)


def test_each_figure_on_the_hand_made_version(version):
    figures = audit_version(version).figures
    assert figures == pytest.approx(
        {
            "rows": 9,
            "coordinate_referents": 2,  # s2 (a point, "0-1000 grid"), r3 (a box)
            "coordinate_referent_share": 2 / 9,
            "unnamed_referents": 2,  # s3 ("object"), r4 (a generic label)
            "unnamed_referent_share": 2 / 9,
            "zoom_pairs": 4,
            "identical_zooms": 1,
            "identical_zoom_share": 1 / 4,
            "near_identical_zooms": 2,  # the identical pair and the pair at IoU 0.9
            "near_identical_zoom_share": 2 / 4,
            # gains 3, 10/3 | 4, 1 | 4, 3 | 4, 4.8 | 2: the fifth of nine
            "median_detail_gain": 10 / 3,
            "low_detail_gain_share": 1 / 9,
            "reflective_sft_share": 1 / 5,
            "distinct_think_share": 13 / 14,  # fourteen <think> texts, SHARED twice
            "distinct_think_template_share": 12 / 14,  # and "Someone stands at # px." twice
            # A 3, B 2, C 1, D 0 of six choice rows; uniform (5 rows of four options, one of two) is 7/24, 7/24,
            # 5/24, 5/24
            "letter_max_deviation": 5 / 24,
            "question_types": 4,
            "blind_solver_pass_share": 0.0,  # every target is 5 px wide in the view: too small to find
        }
    )


def test_the_blind_solver_flags_what_the_global_view_already_answers(tmp_path):
    """A large red square is answered from the global view; the same question on a 5-pixel square is not."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (120, 120, 120))
    image.paste((200, 30, 30), (300, 200, 600, 500))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    large = {
        **rl("big", "colour", "boat", "What colour is the boat?", COLOURS, "A", "choice"),
        "images": [{"bytes": buf.getvalue(), "path": None}],
        "target_boxes_px": [[300, 200, 600, 500]],
        "target_boxes_norm": [normalise([300, 200, 600, 500], WIDTH, HEIGHT)],
    }
    small = rl("small", "colour", "boat", "What colour is the boat?", COLOURS, "A", "choice")
    audit = audit_version(write_shards(tmp_path / "v1", {"sft": ROWS["sft"][:1], "rl": [large, small]}))
    assert audit.figures["blind_solver_pass_share"] == pytest.approx(1 / 3)
    assert {r["id"]: "solvable_without_zoom" in r["flags"] for r in audit.rows} == {
        "s1": False,
        "big": True,
        "small": False,
    }


def test_breakdown_per_split(version):
    breakdown = audit_version(version).breakdown
    assert breakdown["rows"] == {"sft": 5, "rl": 4, "test": 0}  # a format-1 version: no test split
    assert breakdown["question_types"] == {
        "sft": {"colour": 4, "count": 1},
        "rl": {"colour": 1, "count": 1, "relative_position": 1, "text": 1},
        "test": {},
    }
    assert breakdown["patterns"] == {"sft": {"coarse_to_fine": 3, "direct": 1, "reflective": 1}, "rl": {}, "test": {}}
    assert breakdown["distinct_think_share"] == {"sft": pytest.approx(13 / 14), "rl": None, "test": None}
    assert breakdown["answer_letters"] == pytest.approx({"A": 3 / 6, "B": 2 / 6, "C": 1 / 6, "D": 0})
    assert breakdown["zooms"] == 9
    assert breakdown["flags"] == {
        "coordinates": 2,
        "unnamed_referent": 2,
        "identical_zooms": 1,
        "near_identical_zooms": 2,
        "low_detail_gain": 1,
        "shared_think": 2,
        "solvable_without_zoom": 0,
    }


def test_the_test_split_is_audited_beside_the_training_splits(tmp_path):
    rows = {"sft": ROWS["sft"], "rl": ROWS["rl"][:2], "test": ROWS["rl"][2:]}
    audit = audit_version(write_shards(tmp_path / "v1", rows, form="drim-shards/2"))
    assert audit.breakdown["rows"] == {"sft": 5, "rl": 2, "test": 2} and audit.figures["rows"] == 9
    assert sum(audit.breakdown["question_types"]["test"].values()) == 2
    assert [r["split"] for r in audit.rows].count("test") == 2


def test_each_flag_on_its_rows(version):
    rows = audit_version(version).rows
    assert [(r["split"], r["id"]) for r in rows] == [("rl", f"r{i}") for i in range(1, 5)] + [
        ("sft", f"s{i}") for i in range(1, 6)
    ]
    assert {r["id"]: r["flags"] for r in rows} == FLAGS


def test_a_zoom_elsewhere_gains_over_the_global_view(tmp_path):
    """The reflective recovery zooms from the whole image, not from the miss it follows: 4.8x, not 1.2x."""
    row = ROWS["sft"][3]
    small = {**row, "id": "slow", "images": [*row["images"][:2], _png((30, 24))]}  # 0.3 / 0.25 = 1.2x
    rows = audit_version(write_shards(tmp_path / "v", {"sft": [row, small], "rl": []})).rows
    assert [r["flags"] for r in rows] == [["shared_think"], ["low_detail_gain", "shared_think"]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What colour is the boat centred at (630, 316)?", True),
        ("How many ships are inside [244, 355, 425, 536]?", True),
        ("Boxes are on a 0-1000 grid.", True),
        ("Boxes are on a 0–1000 scale.", True),
        ("Give the coordinates of the boat.", True),
        ("What colour is the northernmost boat?", False),
        ("How many boats are left of the oil island?\nA. 2\nB. 3", False),
        ("What does the sign reading 1000 say?", False),
    ],
)
def test_coordinates_in_text(text, expected):
    assert has_coordinates(text) is expected


@pytest.mark.parametrize(
    ("question", "label", "expected"),
    [
        ("What colour is the boat?", "boat", True),
        ("How many boats are there?", "boat", True),
        ("How many people are in the top half?", "person", True),
        ("How many bushes are there?", "bush", True),
        ("How many ferries are there?", "ferry", True),
        ("What colour is the Tree at the left?", "Tree", True),
        ("Is the oil island left of the ship?", "oil_island", True),
        ("Is the ship left of the oil island?", "ship, oil island", True),
        ("Is the ship left of the island?", "ship, oil island", False),
        ("What colour is the object?", "boat", False),
        ("What colour is the object next to the boat?", "boat", False),
        ("How many boats are in the region left of the oil island?", "boat", True),
        ("What colour is the boathouse?", "boat", False),
        ("What colour is the region?", "region", False),
        ("What colour is it?", None, False),
    ],
)
def test_names_class(question, label, expected):
    assert names_class(question, label) is expected


def test_letter_balance_against_uniform():
    assert letter_balance([]) == ({}, None)
    shares, deviation = letter_balance([("A", 2), ("B", 2), ("A", 4), ("D", 4)])
    assert shares == {"A": 0.5, "B": 0.25, "C": 0.0, "D": 0.25}
    assert deviation == pytest.approx(0.125)  # C: uniform 1/8, seen 0 (and A: 3/8 vs 1/2)


def test_thresholds_parse_and_break():
    thresholds = parse_thresholds(["identical_zooms=0", "median_detail_gain=1.5", " reflective_sft_share=0.15"])
    assert thresholds == {"identical_zooms": 0, "median_detail_gain": 1.5, "reflective_sft_share": 0.15}
    figures = {"identical_zooms": 0, "median_detail_gain": 1.4, "reflective_sft_share": None}
    assert broken_thresholds(figures, thresholds) == [
        "median_detail_gain = 1.4 is below its lower bound 1.5",
        "reflective_sft_share cannot be measured on this version (nothing to measure it on); threshold 0.15",
    ]
    assert broken_thresholds({"identical_zooms": 1}, {"identical_zooms": 0}) == [
        "identical_zooms = 1 is above its upper bound 0"
    ]
    for bad, why in [("nonsense=1", "KEY one of"), ("identical_zooms", "KEY=VALUE"), ("identical_zooms=x", "number")]:
        with pytest.raises(DrimError, match=why):
            parse_thresholds([bad])


def test_cli_json(version):
    result = runner.invoke(app, ["audit", str(version), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["figures"]["identical_zooms"] == 1 and report["figures"]["question_types"] == 4
    assert {r["id"]: r["flags"] for r in report["rows"]} == FLAGS
    assert {r["id"]: r["split"] for r in report["rows"]}["r3"] == "rl"


@pytest.mark.parametrize(
    ("gates", "code", "named"),
    [
        ([], 0, []),
        (["median_detail_gain=3", "reflective_sft_share=0.15", "near_identical_zoom_share=0.5"], 0, []),
        (["identical_zooms=0"], 1, ["identical_zooms = 1 is above its upper bound 0"]),
        (
            ["median_detail_gain=3.5", "reflective_sft_share=0.25", "distinct_think_share=0.5"],
            1,
            ["median_detail_gain = 3.333 is below its lower bound 3.5", "reflective_sft_share = 0.2 is below"],
        ),
        (["near_identical_zoom_share=0.05", "letter_max_deviation=0.1"], 1, ["near_identical", "letter_max_dev"]),
        (["no_such_figure=1"], 2, ["KEY one of"]),
    ],
)
def test_cli_fail_on(version, gates, code, named):
    args = ["audit", str(version), "--json"] + [a for g in gates for a in ("--fail-on", g)]
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    for text in named:
        assert text in result.output
    if code == 0:
        assert "fail:" not in result.output
    if code == 1:
        assert json.loads(result.stdout)["figures"]["rows"] == 9  # the report is still printed, on stdout
        assert result.stderr.count("fail: ") == len(gates) - ("distinct_think_share=0.5" in gates)


def test_cli_table(version):
    result = runner.invoke(app, ["audit", str(version)])
    assert result.exit_code == 0, result.output
    assert "identical_zooms" in result.output and "at most" in result.output
    assert "patterns: sft {'coarse_to_fine': 3, 'direct': 1, 'reflective': 1}, rl {}" in result.output


def test_a_crop_that_is_not_an_image_is_a_clear_error(tmp_path):
    row = ROWS["sft"][0]
    broken = {**row, "images": [row["images"][0], {"bytes": b"not an image", "path": None}, row["images"][2]]}
    result = runner.invoke(app, ["audit", str(write_shards(tmp_path / "v", {"sft": [broken], "rl": []}))])
    assert result.exit_code == 2 and "row s1: the crop of zoom 1 is not an image" in result.output


def test_a_tampered_version_is_refused(version):
    shard = version / "data" / "rl" / "train-00000-of-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["audit", str(version)])
    assert result.exit_code == 2 and "modified after export" in result.output
    assert "Traceback" not in result.output
