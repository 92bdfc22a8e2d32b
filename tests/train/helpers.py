"""Test helpers: small versions in the exported format, and recipes parsed as the CLI does."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from drim_train.data import load_split
from schemas.manifest import new_manifest, shard_entry
from schemas.rows import SCHEMA_VERSION, SPLITS, message
from schemas.tool import (
    SYSTEM_PROMPT,
    ZOOM,
    global_view,
    global_view_size,
    normalise,
    observation_text,
    pixels_to_grid,
    tool_call,
)

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}
SIZE = (448, 336)
RECIPES = Path(__file__).resolve().parents[2] / "pipelines" / "train"


def _png(image: Image.Image) -> dict:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def scene(i: int) -> tuple[Image.Image, tuple[int, int, int, int], str]:
    """A grey image with one small coloured square; returns the image, the square's pixel box and its colour.

    The square always sits at the same place, so a tiny model learns the zoom call in a few dozen steps."""
    colour = list(COLOURS)[i % 2]
    image = Image.new("RGB", SIZE, (120 + i % 7, 120, 120))
    box = (192, 144, 240, 192)
    ImageDraw.Draw(image).rectangle(box, fill=COLOURS[colour])
    return image, box, colour


EASY_QUESTION = "What colour is the small square?\nA. red\nB. blue\nAnswer with the option's letter."


def square_fields(
    i: int,
    colour: str,
    image: Image.Image,
    box: tuple,
    question: str = EASY_QUESTION,
    difficulty: str = "easy",
    view_size: tuple = (200, 150),
    prefix: str = "q",
) -> dict:
    """The answer and metadata columns of a red-or-blue square question, as drim-data writes them."""
    return {
        "id": f"{prefix}{i:04d}",
        "image_id": hashlib.sha256(image.tobytes()).hexdigest(),
        "question": question,
        "options": ["red", "blue"],
        "answer": "AB"[list(COLOURS).index(colour)],
        "checker": "choice",
        "question_type": "colour",
        "difficulty": difficulty,
        "label": "square",
        "width": image.width,
        "height": image.height,
        "target_boxes_px": [list(box)],
        "target_boxes_norm": [normalise(box, *image.size)],
        "global_view_size": list(view_size),
    }


def sft_row(i: int) -> dict:
    image, box, colour = scene(i)
    view = global_view(image, global_view_size(image.width, image.height, 200 * 150))
    grid = pixels_to_grid(box, *image.size)
    crop, box_px = ZOOM(image, grid)
    common = square_fields(i, colour, image, box)
    messages = [
        message("system", SYSTEM_PROMPT),
        message("user", common["question"], images=1),
        message("assistant", "<think>The square is too small; zoom in.</think>", tool_calls=[tool_call(grid)]),
        message("tool", observation_text(grid, box_px), images=1, name="zoom_in"),
        message("assistant", f"<think>It is {colour}.</think>\n<answer>{common['answer']}</answer>"),
    ]
    return {
        **common,
        "messages": messages,
        "pattern": "coarse_to_fine",
        "zoom_boxes_px": [list(box_px)],
        "images": [_png(view), _png(crop)],
    }


def direct_row(i: int) -> dict:
    """An SFT row that answers from the global view, without zooming."""
    row = sft_row(i)
    messages = [
        *row["messages"][:2],
        message("assistant", f"<think>It is clear.</think>\n<answer>{row['answer']}</answer>"),
    ]
    return {**row, "messages": messages, "pattern": "direct", "zoom_boxes_px": [], "images": row["images"][:1]}


def rl_row(i: int) -> dict:
    image, box, colour = scene(i)
    common = square_fields(i, colour, image, box)
    return {
        **common,
        "prompt": [message("system", SYSTEM_PROMPT), message("user", common["question"], images=1)],
        "images": [_png(image)],
    }


def write_version(
    root: Path,
    n_sft: int = 8,
    n_rl: int = 8,
    schema_version: str = SCHEMA_VERSION,
    n_test: int = 0,
    make_sft=sft_row,
) -> Path:
    """OUT/<dataset>/v1 with one shard per split and a manifest, as drim-data writes them; test rows are RL rows
    numbered after the RL ones."""
    version = root / "synthetic" / "v1"
    shards = {}
    makers = {"sft": (n_sft, make_sft, 0), "rl": (n_rl, rl_row, 0), "test": (n_test, rl_row, n_rl)}
    for split, (n, make, first) in makers.items():
        (version / "data" / split).mkdir(parents=True, exist_ok=True)
        rows = [make(first + i) for i in range(n)]
        table = pa.Table.from_pylist(rows, schema=SPLITS[split][0].arrow_schema)
        rel = f"data/{split}/train-00000-of-00001.parquet"
        pq.write_table(table, version / rel)
        shards[rel] = shard_entry(version / rel)
    manifest = new_manifest(shards, {"sft": n_sft, "rl": n_rl, "test": n_test}, version=1, tool=ZOOM.manifest())
    (version / "manifest.json").write_text(json.dumps({**manifest, "schema_version": schema_version}))
    return version


def rewrite_manifest(version: Path) -> None:
    """Re-list the version's shards in its manifest, as an exporter would after changing them on purpose."""
    manifest = json.loads((version / "manifest.json").read_text())
    files = sorted(p.relative_to(version).as_posix() for p in (version / "data").glob("*/*.parquet"))
    manifest["shards"] = {rel: shard_entry(version / rel) for rel in files}
    manifest["rows"] = {s: sum(i["rows"] for r, i in manifest["shards"].items() if f"/{s}/" in r) for s in SPLITS}
    (version / "manifest.json").write_text(json.dumps(manifest))


DRILL_BOX = [150, 250, 750, 850]  # four different numbers: each token tells the next


def drill_version(source: Path, root: Path) -> Path:
    """A copy of `source` whose SFT rows ask each of its SFT questions of each of its photos, and answer each after
    one zoom into a fixed box; its RL prompts, whose questions the drill never shows, stay as they are.

    A constant call on real prompts is what a tiny random model learns in a few dozen steps, so tests get a policy
    that really calls the tool on the demo's prompts; learning the demo's own trajectories takes a few hundred. (A
    handful of SFT rows, each on its own photo, teach the call on those photos alone: every question is drilled on
    every photo, each photo once, however many rows show it.)"""
    rows = []
    questions = list(load_split(source, "sft"))
    views = {}  # a photo's first image: its global view in an SFT row, else its original in an RL row
    for row in [*questions, *load_split(source, "rl").select_columns(["image_id", "images"])]:
        if row["image_id"] not in views:
            views[row["image_id"]] = row["images"][0].convert("RGB")
    for row, (i, view) in ((row, v) for row in questions for v in enumerate(views.values())):
        crop, box_px = ZOOM(view, DRILL_BOX)
        messages = [
            *row["messages"][:2],  # the system prompt and the question with its image
            message("assistant", "<think>Look closer.</think>", tool_calls=[tool_call(DRILL_BOX)]),
            message("tool", observation_text(DRILL_BOX, box_px), images=1, name="zoom_in"),
            message("assistant", f"<think>Seen.</think>\n<answer>{row['answer']}</answer>"),
        ]
        rows.append(
            {
                **row,
                "id": hashlib.sha256(f"{row['id']}/{i}".encode()).hexdigest()[: len(row["id"])],
                "messages": messages,
                "pattern": "coarse_to_fine",
                "zoom_boxes_px": [list(box_px)],
                "images": [_png(view), _png(crop)],
            }
        )
    version = root / "drill" / "v1"
    (version / "data" / "sft").mkdir(parents=True)
    shutil.copytree(source / "data" / "rl", version / "data" / "rl")
    table = pa.Table.from_pylist(rows, schema=SPLITS["sft"][0].arrow_schema)
    pq.write_table(table, version / "data" / "sft" / "train-00000-of-00001.parquet")
    (version / "manifest.json").write_text((source / "manifest.json").read_text())
    rewrite_manifest(version)
    return version


def parse_recipe(name: str, types: tuple, **flags: object) -> tuple:
    """A recipe from pipelines/train/ with command-line overrides, through TRL's parser as the CLI does."""
    from trl import TrlParser

    argv = [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    return TrlParser(types).parse_args_and_config(["--config", str(RECIPES / name), *argv, "--disable_tqdm", "true"])
