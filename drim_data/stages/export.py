"""Export: versioned Parquet shards `OUT/<dataset>/v<N>/data/{sft,rl,test}/train-*.parquet`, written atomically.

A version is built in a hidden sibling folder and renamed into place only once complete, so a crash, a full disk
or a read-only folder never leaves a half version, and nothing is registered until the version is whole. Nothing
is written when the content fingerprint equals the latest version's and that version is still on disk.

`OUT/<dataset>/` belongs to one recipe's database: each manifest records which (`database_id`, a hash of the
database's path), the staging folder is named after it, and a run refuses a folder holding versions another
database exported rather than interleave two histories.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from drim_data import __version__
from drim_data.errors import Drop, RunFault
from drim_data.pixels.images import decode, encode_jpeg, encode_png
from drim_data.pixels.sources import image_bytes
from drim_data.recipe import ExportConfig, even_spread, hash_share, sha256_json, to_plain
from drim_data.release.card import dataset_card
from drim_data.stages.contract import Context
from schemas.answers import LETTERS, with_options
from schemas.manifest import MANIFEST, ManifestError, new_manifest, read_manifest, shard_entry
from schemas.rows import SCHEMA_VERSION, SPLITS, message
from schemas.tool import SYSTEM_PROMPT, ZOOM, global_view, global_view_size, normalise

SHARD_NAME = "train-{index:05d}-of-{count:05d}.parquet"
ITEMS = """
SELECT q.question_id, q.image_id, q.question, q.options, q.answer, q.checker, q.question_type, v.difficulty,
       q.target_boxes, t.trajectory_id, t.pattern, t.messages, t.zoom_boxes_px, i.width, i.height, q.label
FROM questions q
JOIN verdicts v USING (question_id)
LEFT JOIN trajectories t USING (question_id)
JOIN images i USING (image_id)
WHERE v.kept AND q.image_id IN (SELECT image_id FROM files WHERE status IN ('ok', 'duplicate'))
  AND (t.trajectory_id IS NOT NULL OR q.question_id IN (SELECT item_id FROM done WHERE stage = 'trajectories'))
ORDER BY q.question_id
"""

VERSION = "4"  # 2: answer letters balanced over rows of any number of options together; 3: items split by
# item take the RL share of each image in turn; 4: question type by type


class Item(NamedTuple):
    """One exported item, a row of ITEMS by column name; JSON columns are still text."""

    question_id: str
    image_id: str
    question: str
    options: str
    answer: str
    checker: str
    question_type: str
    difficulty: str
    target_boxes: str  # pixels
    trajectory_id: str | None  # None: verified, but no search could be shown for it (an RL prompt only)
    pattern: str | None
    messages: str | None
    zoom_boxes_px: str | None
    width: int
    height: int
    label: str | None


def read_items(con) -> list[Item]:
    cursor = con.execute(ITEMS)
    names = [column[0] for column in cursor.description]
    return [Item(**dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


@dataclass
class ExportResult:
    written: bool
    version: int | None
    path: Path | None
    rows: dict[str, int] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)  # images left out, by reason (their source is gone)

    def counts(self) -> dict:
        dropped = {f"dropped:{reason}": n for reason, n in self.dropped.items()}
        return {"version": self.version, "written": self.written, **self.rows, **dropped}


def image_splits(
    image_id: str,
    question_ids: Iterable[str],
    export: ExportConfig,
    undialogued: frozenset[str] = frozenset(),
    kinds: Mapping[str, str] | None = None,
) -> dict[str, str | None]:
    """The split of each of an image's kept items. Test for a share of whole images, by a hash of the image alone,
    so that no test image is trained on whatever `split_by` does; then RL for a share of images by their hash, or,
    by item, for that share of the image's items (`even_spread`, question type by type when `kinds` gives them, so
    a type is not all in one split); else SFT.

    An item no search could be shown for (in `undialogued`) is an RL prompt: its image and answer are all RL needs.
    By item, it takes the place of an RL item that has a dialogue (of its own type where there is one), which goes
    to SFT, so the shares still hold; by image, on an image bound for SFT it is left out (None), so that no image is
    in two splits."""
    question_ids, kinds = list(question_ids), kinds or {}
    if hash_share(["test", image_id]) < export.test_share:
        return dict.fromkeys(question_ids, "test")
    if export.split_by == "image":
        split = "rl" if hash_share(image_id) < export.rl_share else "sft"
        return {q: None if split == "sft" and q in undialogued else split for q in question_ids}
    salt = ["rl", image_id]
    rl = even_spread(question_ids, export.rl_share, salt, kinds)
    for q in [q for q in question_ids if q in undialogued and q not in rl]:
        spare = sorted(
            (r for r in rl if r not in undialogued),
            key=lambda r: (kinds.get(r) != kinds.get(q), hash_share([salt, r])),
        )
        rl = rl - set(spare[:1]) | {q}
    return {q: "rl" if q in rl else "sft" for q in question_ids}


@dataclass
class LetterTally:
    """The answer letters given so far, and how many each would have if every row's letters were equally likely
    (a row of two options adds a half to A and to B, one of four a quarter to each of A to D)."""

    given: Counter[int] = field(default_factory=Counter)
    expected: Counter[int] = field(default_factory=Counter)

    def take(self, options: int) -> int:
        """The letter, among a row's options, furthest behind its expected count (the first, on a tie)."""
        for i in range(options):
            self.expected[i] += 1 / options
        letter = min(range(options), key=lambda i: (self.given[i] - self.expected[i], i))
        self.given[letter] += 1
        return letter


def balanced_letters(items: list[Item], tally: LetterTally | None = None) -> list[Item]:
    """Each multiple-choice item, in question-id order (carrying on from `tally`), takes the answer letter furthest
    behind its share, so letters are balanced whatever verify dropped, for rows of any number of options together:
    the correct option moves to its letter, the others keep their order, and the question, the options and the
    dialogue's final answer are rewritten to match."""
    tally = LetterTally() if tally is None else tally
    out = []
    for item in items:
        options = json.loads(item.options)
        block = with_options("", options)
        if item.checker != "choice" or len(options) < 2 or not item.question.endswith(block):
            out.append(item)
            continue
        letter = tally.take(len(options))
        correct = LETTERS.index(item.answer.strip().upper())
        others = [o for i, o in enumerate(options) if i != correct]
        moved = [*others[:letter], options[correct], *others[letter:]]
        question = with_options(item.question[: -len(block)], moved)
        out.append(
            item._replace(
                question=question,
                options=json.dumps(moved),
                answer=LETTERS[letter],
                messages=_relettered(item.messages, item.question, question, item.answer, LETTERS[letter]),
            )
        )
    return out


def _relettered(messages: str | None, old_question: str, question: str, old_answer: str, answer: str) -> str | None:
    """A dialogue that asks the rewritten question and ends with the moved answer's letter."""
    if not messages:
        return messages
    turns = json.loads(messages)
    for turn in turns:
        for block in turn.get("content") or []:
            if block.get("text") == old_question:
                block["text"] = question
    for turn in reversed(turns):
        blocks = [b for b in turn.get("content") or [] if b.get("text")]
        if turn.get("role") == "assistant" and blocks:
            blocks[-1]["text"] = blocks[-1]["text"].replace(
                f"<answer>{old_answer}</answer>", f"<answer>{answer}</answer>"
            )
            break
    return json.dumps(turns)


def content_fingerprint(recipe, upstream: str, items: list[Item]) -> str:
    """What a version holds: the stages' settings (throughput settings excluded), the export and card settings,
    code, export and schema versions, and the items themselves."""
    described = {
        "dataset": recipe.dataset,
        "license": recipe.license,
        "sources": to_plain(recipe.sources),
        "export": to_plain(recipe.export),
    }
    identities = [(i.question_id, i.trajectory_id) for i in items]
    return sha256_json([upstream, described, __version__, VERSION, SCHEMA_VERSION, identities])


def database_id(db: Path) -> str:
    """Which database exported a version, without writing its path into the manifest."""
    return sha256_json(str(Path(db).resolve()))[:16]


def run(ctx: Context, upstream: str = "") -> ExportResult:
    con, recipe = ctx.con, ctx.recipe
    if recipe.export.rows_per_shard < 1:
        raise RunFault(f"export.rows_per_shard must be at least 1, got {recipe.export.rows_per_shard}")
    items = read_items(con)
    fingerprint = content_fingerprint(recipe, upstream, items)
    root = recipe.output_dir / recipe.dataset
    owner = database_id(recipe.db)
    latest = con.execute("SELECT version, fingerprint, path FROM exports ORDER BY version DESC LIMIT 1").fetchone()
    if latest and latest[1] == fingerprint and (Path(latest[2]) / MANIFEST).is_file():
        return ExportResult(False, latest[0], Path(latest[2]))
    _refuse_foreign_versions(ctx, root, owner)
    adopted = _adopt_finished(ctx, root, fingerprint)
    if adopted:
        return adopted
    if not items:
        return ExportResult(False, latest[0] if latest else None, None)

    version = max([latest[0] if latest else 0, *_versions_on_disk(root)]) + 1
    final = root / f"v{version}"
    staging = root / f".v{version}.{owner}.partial"
    try:
        for stale in root.glob(f".v*.{owner}.partial"):  # this database's own, left by a killed run
            shutil.rmtree(stale)
        staging.mkdir(parents=True)
        lost: dict[str, Drop] = {}
        manifest = _write_version(ctx, staging, items, version, latest[0] if latest else None, owner, upstream, lost)
        if latest and lost and manifest["fingerprint"] == latest[1] and (Path(latest[2]) / MANIFEST).is_file():
            shutil.rmtree(staging)  # what could be read is the latest version again
            return ExportResult(False, latest[0], Path(latest[2]), dropped=_record_lost(ctx, lost))
        os.replace(staging, final)  # atomic: the version appears whole or not at all
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            raise RunFault(f"cannot write version v{version} in {root}: {reason}; nothing was exported") from None
        raise
    _register(ctx, manifest, final)
    return ExportResult(True, version, final, manifest["rows"], _record_lost(ctx, lost))


def _record_lost(ctx: Context, lost: dict[str, Drop]) -> Counter[str]:
    """The images the last export had to leave out, each a drop of its own; their items wait for the next run."""
    ctx.con.execute("DELETE FROM drops WHERE stage = 'export'")
    for image_id, drop in sorted(lost.items()):
        ctx.con.execute("INSERT INTO drops VALUES ('export', ?, ?, ?)", [image_id, drop.reason, drop.detail[:2000]])
    return Counter(drop.reason for drop in lost.values())


def _write_version(
    ctx: Context,
    staging: Path,
    items: list[Item],
    version: int,
    parent: int | None,
    owner: str,
    upstream: str,
    lost: dict[str, Drop],
) -> dict:
    """The version's shards, manifest and card. An image whose source is gone or changed since ingest is left
    out with its items (kept in `lost`), and the version's fingerprint is of the items it holds, so the next run
    exports again once they can be read."""
    recipe = ctx.recipe
    splits = {**{split: [] for split in SPLITS}, None: []}
    by_image: dict[str, list[Item]] = {}
    for item in items:
        by_image.setdefault(item.image_id, []).append(item)
    for image_id, image_items in by_image.items():
        undialogued = frozenset(i.question_id for i in image_items if i.trajectory_id is None)
        kinds = {i.question_id: i.question_type for i in image_items}
        split = image_splits(image_id, kinds, recipe.export, undialogued, kinds)
        for item in image_items:
            splits[split[item.question_id]].append(item)
    splits.pop(None)  # no search to show, on an image bound for SFT
    tally = LetterTally()  # one over the whole version, so splits and version both balance
    splits = {split: balanced_letters(split_items, tally) for split, split_items in splits.items()}
    shards, kept = {}, {split: [] for split in splits}
    for split, split_items in splits.items():
        shards.update(_write_split(ctx, staging, split, split_items, kept[split], lost))
    held = {i.question_id for split_items in kept.values() for i in split_items}
    written = [i for i in items if i.question_id in held]  # in the order the fingerprint of all items reads them
    manifest = new_manifest(
        shards,
        {split: len(split_items) for split, split_items in kept.items()},
        dataset=recipe.dataset,
        version=version,
        parent=parent,
        fingerprint=content_fingerprint(recipe, upstream, written),
        recipe_hash=recipe.fingerprint(),
        database_id=owner,
        code_version=__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tool=ZOOM.manifest(),
        license=recipe.license,
        sources=to_plain(recipe.sources),
    )
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (staging / "README.md").write_text(dataset_card(manifest))
    return manifest


def _versions_on_disk(root: Path) -> list[int]:
    return [int(p.name[1:]) for p in root.glob("v*") if p.is_dir() and p.name[1:].isdigit()]


def _refuse_foreign_versions(ctx: Context, root: Path, owner: str) -> None:
    """Stop before writing beside versions another recipe's database exported into the same folder."""
    registered = {Path(p).resolve() for (p,) in ctx.con.execute("SELECT path FROM exports").fetchall()}
    for version in sorted(_versions_on_disk(root)):
        folder = root / f"v{version}"
        if folder.resolve() in registered:
            continue
        try:
            exported_by = read_manifest(folder).get("database_id")
        except ManifestError:
            continue  # not a version (no readable manifest): only its number is skipped
        if exported_by != owner:
            raise RunFault(
                f"{folder} was exported from another recipe's database; give this recipe its own `dataset` name "
                f"or `output_dir` (two databases in {root} would interleave their versions)"
            )


def _adopt_finished(ctx: Context, root: Path, fingerprint: str) -> ExportResult | None:
    """A version renamed into place by a run killed before it could record it: record it instead of rewriting."""
    known = {v for (v,) in ctx.con.execute("SELECT version FROM exports").fetchall()}
    for version in sorted(set(_versions_on_disk(root)) - known):
        manifest_path = root / f"v{version}" / MANIFEST
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


def _readable(ctx: Context, read, image_id: str, lost: dict[str, Drop]) -> bytes | None:
    """`read(ctx, image_id)`, or None when the image's source is gone or changed (kept in `lost`)."""
    if image_id in lost:
        return None
    try:
        return read(ctx, image_id)
    except Drop as exc:
        lost[image_id] = exc
        return None


def _write_split(
    ctx: Context, staging: Path, split: str, items: list[Item], kept: list[Item], lost: dict[str, Drop]
) -> dict[str, dict]:
    """The split's shards; the items written go to `kept`, and an image that cannot be read to `lost`, its items
    left out."""
    features, schema = SPLITS[split]
    out = staging / "data" / split
    out.mkdir(parents=True)
    size = ctx.recipe.export.rows_per_shard
    count = max(1, -(-len(items) // size))
    written = {}
    for index in range(count):
        chunk = items[index * size : (index + 1) * size]
        read = _global_view if split == "sft" else _original  # one copy of each image's bytes per shard
        found = {image_id: _readable(ctx, read, image_id, lost) for image_id in {item.image_id for item in chunk}}
        kept.extend(item for item in chunk if found[item.image_id] is not None)
        if split == "sft":
            rows = [_sft_row(ctx, item, found[item.image_id]) for item in chunk if found[item.image_id] is not None]
        else:
            rows = [_rl_row(ctx, item, found[item.image_id]) for item in chunk if found[item.image_id] is not None]
        table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
        del rows
        schema.validate(_checkable(table), lazy=True)  # never write a shard that breaks the contract
        path = out / SHARD_NAME.format(index=index, count=count)
        pq.write_table(table, path, row_group_size=64, compression="zstd")
        written[path.relative_to(staging).as_posix()] = shard_entry(path)
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


def _common(ctx: Context, item: Item) -> dict:
    targets = json.loads(item.target_boxes)
    return {
        "id": item.question_id,
        "image_id": item.image_id,
        "question": item.question,
        "options": json.loads(item.options),
        "answer": item.answer,
        "checker": item.checker,
        "question_type": item.question_type,
        "difficulty": item.difficulty,
        "label": item.label,
        "width": item.width,
        "height": item.height,
        "target_boxes_px": targets,
        "target_boxes_norm": [normalise(b, item.width, item.height) for b in targets],
        "global_view_size": list(global_view_size(item.width, item.height, ctx.recipe.view.max_pixels)),
    }


def _original(ctx: Context, image_id: str) -> bytes:
    """The full-resolution image as the trainer reads it: the file itself, or, where EXIF orientation turns its
    pixels, a lossless PNG of them upright, as every box is."""
    data = image_bytes(ctx.con, image_id)
    (turned,) = ctx.con.execute("SELECT exif_transposed FROM images WHERE image_id = ?", [image_id]).fetchone()
    return encode_png(decode(data)) if turned else data


def _global_view(ctx: Context, image_id: str) -> bytes:
    """The downscaled whole image the model sees; the full-size pixels are freed on return, before the next image
    is decoded."""
    image = decode(image_bytes(ctx.con, image_id))
    view = global_view(image, global_view_size(image.width, image.height, ctx.recipe.view.max_pixels))
    return encode_jpeg(view, ctx.recipe.export.global_view_quality)


def _sft_row(ctx: Context, item: Item, view: bytes) -> dict:
    """The conversation with images[0] = the global view the model sees, then each zoom's crop in order."""
    crops = [
        c
        for (c,) in ctx.con.execute(
            "SELECT crop FROM observations WHERE question_id = ? ORDER BY turn", [item.question_id]
        ).fetchall()
    ]
    images = [view, *crops]
    return {
        **_common(ctx, item),
        "messages": json.loads(item.messages),
        "pattern": item.pattern,
        "zoom_boxes_px": json.loads(item.zoom_boxes_px),
        "images": [{"bytes": b, "path": None} for b in images],
    }


def _rl_row(ctx: Context, item: Item, original: bytes) -> dict:
    """The prompt and the original image: the trainer's zoom tool crops from full resolution."""
    return {
        **_common(ctx, item),
        "prompt": [message("system", SYSTEM_PROMPT), message("user", item.question, images=1)],
        "images": [{"bytes": original, "path": None}],
    }
