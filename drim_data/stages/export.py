"""Export: versioned Parquet shards `OUT/<dataset>/v<N>/data/{sft,rl}/train-*.parquet`, written atomically.

A version is built in a hidden sibling folder and renamed into place only once complete, so a crash never leaves
a half version. Nothing is written when the content fingerprint equals the latest version's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from drim_data import __version__
from drim_data.pixels.images import decode, encode_jpeg
from drim_data.recipe import sha256_json, to_plain
from drim_data.release.card import dataset_card
from drim_data.release.versions import file_sha256
from drim_data.stages.contract import Context
from schemas.rows import SCHEMA_VERSION, SPLITS, message
from schemas.tool import SYSTEM_PROMPT, ZOOM, global_view, global_view_size, normalise

FORMAT_VERSION = "drim-shards/1"
SHARD_NAME = "train-{index:05d}-of-{count:05d}.parquet"
ITEMS = """
SELECT q.question_id, q.image_id, q.question, q.options, q.answer, q.checker, q.question_type, v.difficulty,
       q.target_boxes, t.trajectory_id, t.pattern, t.messages, t.zoom_boxes_px, i.width, i.height, q.label
FROM questions q
JOIN verdicts v USING (question_id)
JOIN trajectories t USING (question_id)
JOIN images i USING (image_id)
WHERE v.kept AND q.image_id IN (SELECT image_id FROM files WHERE status IN ('ok', 'duplicate'))
ORDER BY q.question_id
"""


@dataclass
class ExportResult:
    written: bool
    version: int | None
    path: Path | None
    rows: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict:
        return {"version": self.version, "written": self.written, **self.rows}


def split_of(question_id: str, rl_share: float) -> str:
    return "rl" if int(sha256_json(question_id)[:8], 16) / 16**8 < rl_share else "sft"


def content_fingerprint(recipe, upstream: str, items: list[tuple]) -> str:
    """What a version holds: the stages' settings (throughput settings excluded), the export and card settings,
    code and schema versions, and the items themselves."""
    described = {
        "dataset": recipe.dataset,
        "license": recipe.license,
        "sources": to_plain(recipe.sources),
        "export": to_plain(recipe.export),
    }
    return sha256_json([upstream, described, __version__, SCHEMA_VERSION, [(r[0], r[9]) for r in items]])


def run(ctx: Context, upstream: str = "") -> ExportResult:
    con, recipe = ctx.con, ctx.recipe
    items = con.execute(ITEMS).fetchall()
    fingerprint = content_fingerprint(recipe, upstream, items)
    root = recipe.output_dir / recipe.dataset
    latest = con.execute("SELECT version, fingerprint, path FROM exports ORDER BY version DESC LIMIT 1").fetchone()
    if latest and latest[1] == fingerprint:
        return ExportResult(False, latest[0], Path(latest[2]))
    adopted = _adopt_finished(ctx, root, fingerprint)
    if adopted:
        return adopted
    if not items:
        return ExportResult(False, latest[0] if latest else None, None)

    version = max([latest[0] if latest else 0, *_versions_on_disk(root)]) + 1
    parent = latest[0] if latest else None
    final = root / f"v{version}"
    staging = root / f".v{version}.partial"
    for stale in root.glob(".v*.partial"):
        shutil.rmtree(stale)
    staging.mkdir(parents=True)
    rows = {"sft": [], "rl": []}
    for item in items:
        rows[split_of(item[0], recipe.export.rl_share)].append(item)
    shards, counts = {}, {}
    for split, split_items in rows.items():
        shards.update(_write_split(ctx, staging, split, split_items))
        counts[split] = len(split_items)
    manifest = {
        "format": FORMAT_VERSION,
        "dataset": recipe.dataset,
        "version": version,
        "parent": parent,
        "fingerprint": fingerprint,
        "recipe_hash": recipe.fingerprint(),
        "code_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": counts,
        "shards": shards,
        "tool": ZOOM.manifest(),
        "license": recipe.license,
        "sources": to_plain(recipe.sources),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (staging / "README.md").write_text(dataset_card(manifest))
    os.replace(staging, final)  # atomic: the version appears whole or not at all
    _register(ctx, manifest, final)
    return ExportResult(True, version, final, counts)


def _versions_on_disk(root: Path) -> list[int]:
    return [int(p.name[1:]) for p in root.glob("v*") if p.is_dir() and p.name[1:].isdigit()]


def _adopt_finished(ctx: Context, root: Path, fingerprint: str) -> ExportResult | None:
    """A version renamed into place by a run killed before it could record it: record it instead of rewriting."""
    known = {v for (v,) in ctx.con.execute("SELECT version FROM exports").fetchall()}
    for version in sorted(set(_versions_on_disk(root)) - known):
        manifest_path = root / f"v{version}" / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("fingerprint") == fingerprint:
                _register(ctx, manifest, manifest_path.parent)
                return ExportResult(True, version, manifest_path.parent, manifest["rows"])
    return None


def _register(ctx: Context, manifest: dict, path: Path) -> None:
    ctx.con.execute(
        "INSERT INTO exports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            manifest["version"],
            manifest["parent"],
            manifest["fingerprint"],
            manifest["recipe_hash"],
            str(path),
            manifest["rows"]["sft"],
            manifest["rows"]["rl"],
            datetime.now(UTC).replace(tzinfo=None),
        ],
    )


def _write_split(ctx: Context, staging: Path, split: str, items: list[tuple]) -> dict[str, dict]:
    features, schema = SPLITS[split]
    out = staging / "data" / split
    out.mkdir(parents=True)
    size = ctx.recipe.export.rows_per_shard
    count = max(1, -(-len(items) // size))
    written = {}
    for index in range(count):
        chunk = items[index * size : (index + 1) * size]
        if split == "sft":
            views = {image_id: _global_view(ctx, image_id) for image_id in {item[1] for item in chunk}}
            rows = [_sft_row(ctx, item, views[item[1]]) for item in chunk]
        else:
            originals = {image_id: _image_bytes(ctx, image_id) for image_id in {item[1] for item in chunk}}
            rows = [_rl_row(ctx, item, originals[item[1]]) for item in chunk]  # one copy of each image's bytes
        table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
        del rows
        schema.validate(_checkable(table), lazy=True)  # never write a shard that breaks the contract
        path = out / SHARD_NAME.format(index=index, count=count)
        pq.write_table(table, path, row_group_size=64, compression="zstd")
        written[str(path.relative_to(staging))] = {"rows": table.num_rows, "sha256": file_sha256(path)}
    return written


def _checkable(table: pa.Table) -> pd.DataFrame:
    """The shard as its schema checks it, each image's bytes stood in for by their length: the checks only ask
    that bytes are there, and a copy of them as Python objects would cost more memory than the shard itself."""
    stand_ins = pa.chunked_array(
        [
            pa.ListArray.from_arrays(
                pc.subtract(chunk.offsets, chunk.offsets[0]),
                pa.StructArray.from_arrays([pc.binary_length(pc.list_flatten(chunk).field("bytes"))], ["bytes"]),
            )
            for chunk in table.column("images").chunks
        ]
    )
    return table.drop_columns(["images"]).append_column("images", stand_ins).to_pandas()


def _common(ctx: Context, item: tuple) -> dict:
    qid, image_id, question, options, answer, checker, qtype, difficulty = item[:8]
    width, height, targets = item[13], item[14], json.loads(item[8])
    return {
        "id": qid,
        "image_id": image_id,
        "question": question,
        "options": json.loads(options),
        "answer": answer,
        "checker": checker,
        "question_type": qtype,
        "difficulty": difficulty,
        "label": item[15],
        "width": width,
        "height": height,
        "target_boxes_px": targets,
        "target_boxes_norm": [normalise(b, width, height) for b in targets],
        "global_view_size": list(global_view_size(width, height, ctx.recipe.view.max_pixels)),
    }


def _image_bytes(ctx: Context, image_id: str) -> bytes:
    return ctx.con.execute("SELECT data FROM images WHERE image_id = ?", [image_id]).fetchone()[0]


def _global_view(ctx: Context, image_id: str) -> bytes:
    """The downscaled whole image the model sees; the full-size pixels are freed on return, before the next image
    is decoded."""
    image = decode(_image_bytes(ctx, image_id))
    view = global_view(image, global_view_size(image.width, image.height, ctx.recipe.view.max_pixels))
    return encode_jpeg(view, ctx.recipe.export.global_view_quality)


def _sft_row(ctx: Context, item: tuple, view: bytes) -> dict:
    """The conversation with images[0] = the global view the model sees, then each zoom's crop in order."""
    qid = item[0]
    crops = [
        c
        for (c,) in ctx.con.execute(
            "SELECT crop FROM observations WHERE question_id = ? ORDER BY turn", [qid]
        ).fetchall()
    ]
    images = [view, *crops]
    return {
        **_common(ctx, item),
        "messages": json.loads(item[11]),
        "pattern": item[10],
        "zoom_boxes_px": json.loads(item[12]),
        "images": [{"bytes": b, "path": None} for b in images],
    }


def _rl_row(ctx: Context, item: tuple, original: bytes) -> dict:
    """The prompt and the original image: the trainer's zoom tool crops from full resolution."""
    return {
        **_common(ctx, item),
        "prompt": [message("system", SYSTEM_PROMPT), message("user", item[2], images=1)],
        "images": [{"bytes": original, "path": None}],
    }
