"""Ingest: the images of a folder, a URL or a dataset (and their annotations) into the database, by reference,
quarantining what cannot be used.

An image is its content (sha256): a renamed or restored file is the same image and keeps what was made from it,
and the same photo from a folder and from a dataset is one image. The database records where each image lives,
its size and hash, and its bytes only with `ingest.embed`; `pixels.sources` reads it back from there.
Identical files under several current paths are one image, named by the first path in sorted order; the others
are dropped as `duplicate`, and the image takes the annotations of its first path that has any. Which path comes
first, and which annotation entry names which path, depend on the whole input, so both are settled again at the
end of every run, from the input as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from drim_data.errors import DrimError
from drim_data.pixels.annotations import Matched, declared_complete, match_annotations
from drim_data.pixels.images import CheckedImage, ImageRejected, check_image, sha256
from drim_data.pixels.sources import SOURCE_REASONS, SourceUnreadable, fetch, image_ref, read_image
from drim_data.pixels.workers import cpu_count, threaded_map
from drim_data.stages.contract import Context, StageStats
from drim_data.stages.inputs import Entry, list_input
from schemas.tables import validate_table

NAME = "ingest"
VERSION = "4"  # 2: content identity across renames; annotations matched by path under the images folder;
# 3: images by reference (URI, size, hash), from folders, URLs and datasets; 4: COCO crowd boxes marked

# Drops that the listing decides, and those settled from the whole folder: both are recorded afresh every run.
LISTING_REASONS = ("unsupported_extension", "dangling_symlink", "symlink_loop", "unreadable_folder")
SETTLED_REASONS = (
    "duplicate",
    "duplicate_annotations",
    "ambiguous_annotation",
    "unmatched_annotation",
    "annotation_outside_image",
)


def run(ctx: Context) -> StageStats:
    cfg, con, stats = ctx.recipe.ingest, ctx.con, StageStats(NAME)
    try:
        listing = list_input(cfg)  # an input that cannot be listed stops the run here
    except DrimError as exc:
        raise type(exc)(f"{ctx.recipe.source}: {exc}") from None
    listed = {e.uri: e for e in listing.entries}
    relative = {e.uri: e.name for e in listing.entries}
    matched = match_annotations(cfg.annotations, list(relative.values()))  # a malformed file stops the run here
    for name, boxes in listing.boxes.items():  # a dataset's own column
        matched.boxes.setdefault(name, []).extend(boxes)
        matched.entries.setdefault(name, []).append(boxes[0][0])
        complete = declared_complete({box.label for _, box in boxes}, cfg.dataset.complete)
        if complete:
            matched.complete.setdefault(name, set()).update(complete)

    known = {uri: (size, stamp) for uri, size, stamp in con.execute("SELECT path, size, stamp FROM files").fetchall()}
    con.begin()
    for gone in sorted(set(known) - set(listed)):  # the dataset follows the input: removed files leave it
        con.execute("DELETE FROM files WHERE path = ?", [gone])
        con.execute("DELETE FROM drops WHERE stage = ? AND item_id = ?", [NAME, gone])
        stats.count("removed")
    _record_afresh(ctx, stats, LISTING_REASONS, listing.refused)
    con.commit()

    pending = [e for e in listing.entries if known.get(e.uri) != (e.size, e.stamp)]
    recorded = _recorded(con)
    reads = threaded_map(lambda e: _read(e, cfg.max_pixels, recorded), pending, cpu_count())
    for read in ctx.track(reads, NAME, len(pending)):
        entry = read.entry
        con.begin()
        con.execute("DELETE FROM files WHERE path = ?", [entry.uri])
        con.execute("DELETE FROM drops WHERE stage = ? AND item_id = ?", [NAME, entry.uri])  # fixed: no old drop
        image_id = _record(ctx, stats, read)
        status = "quarantined" if image_id is None else "ok"  # `_settle` tells the first path from its duplicates
        con.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?)", [entry.uri, entry.size, entry.stamp, image_id, status])
        con.commit()
        stats.processed += 1

    con.begin()
    _settle(ctx, stats, relative, matched)
    _retry_stale_sources(ctx)
    con.commit()
    _embed(ctx, stats)
    return stats


@dataclass
class Read:
    """One listed file as read off the main thread: its bytes and id, and its check unless its content is known."""

    entry: Entry
    data: bytes = b""
    image_id: str | None = None
    checked: CheckedImage | None = None
    problem: tuple[str, str] | None = None  # (reason, detail): the file is quarantined


def _read(entry: Entry, max_pixels: int, recorded: Callable[[str], bool]) -> Read:
    """Fetch, hash and check one file. Content already recorded was checked when it was first read, so it is only
    hashed. Runs in a thread: fetching, hashing and decoding release the GIL."""
    try:
        data = fetch(entry.uri)
    except (OSError, SourceUnreadable) as exc:
        return Read(entry, problem=("unreadable", str(exc)))
    image_id = sha256(data)
    if recorded(image_id):
        return Read(entry, image_id=image_id)
    try:
        return Read(entry, data, image_id, check_image(data, max_pixels))
    except ImageRejected as exc:
        return Read(entry, problem=(exc.reason, exc.detail))


def _recorded(con) -> Callable[[str], bool]:
    """Whether an image id is recorded, askable from any thread (through its own cursor, one caller at a time)."""
    cursor, lock = con.cursor(), threading.Lock()

    def recorded(image_id: str) -> bool:
        with lock:
            return cursor.execute("SELECT 1 FROM images WHERE image_id = ?", [image_id]).fetchone() is not None

    return recorded


def _record(ctx: Context, stats: StageStats, read: Read) -> str | None:
    """The file's image id, recording the image when its content is new; None when it is quarantined."""
    if read.problem is not None:
        ctx.drop(stats, read.entry.uri, *read.problem)
        return None
    con, checked = ctx.con, read.checked
    if checked is None or con.execute("SELECT 1 FROM images WHERE image_id = ?", [read.image_id]).fetchone():
        return read.image_id  # known content, or a copy of a file read just before it in this run
    con.execute(
        "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            read.image_id,
            read.entry.uri,
            len(read.data),
            checked.width,
            checked.height,
            checked.format,
            checked.mode,
            checked.exif_transposed,
            read.data if ctx.recipe.ingest.embed else None,
        ],
    )
    stats.count("images")
    return read.image_id


def _retry_stale_sources(ctx: Context) -> None:
    """A later stage's drop for a source that was gone or changed is forgotten, with its done marker, once its
    image is current again (its file restored): the stage tries it again. Images no longer current stay dropped."""
    reasons = ", ".join(f"'{r}'" for r in SOURCE_REASONS)
    stale = f"""
        SELECT d.stage, d.item_id FROM drops d LEFT JOIN questions q ON q.question_id = d.item_id
        WHERE d.stage <> '{NAME}' AND d.reason IN ({reasons})
          AND coalesce(q.image_id, d.item_id) IN (SELECT image_id FROM files WHERE status = 'ok')"""
    for table in ("done", "drops"):
        ctx.con.execute(f"DELETE FROM {table} WHERE (stage, item_id) IN ({stale})")


def _embed(ctx: Context, stats: StageStats) -> None:
    """Hold every image's bytes in the database with `ingest.embed`, and none without: turning it on or off
    changes no output, so it redoes no stage."""
    con = ctx.con
    if not ctx.recipe.ingest.embed:
        if con.execute("SELECT 1 FROM images WHERE data IS NOT NULL LIMIT 1").fetchone():
            con.execute("UPDATE images SET data = NULL")
        return
    for (image_id,) in con.execute("SELECT image_id FROM images WHERE data IS NULL ORDER BY 1").fetchall():
        try:
            data = read_image(image_ref(con, image_id))
        except Exception as exc:  # a source gone since it was read: later stages drop it; nothing to hold
            stats.count(f"not_embedded:{getattr(exc, 'reason', 'unreadable')}")
            continue
        con.execute("UPDATE images SET data = ? WHERE image_id = ?", [data, image_id])
        stats.count("embedded")


def _settle(ctx: Context, stats: StageStats, relative: dict[str, str], matched: Matched) -> None:
    """Name each image by its first current path and mark its other paths duplicates; give it the annotations of
    its first path that has any (those of its other paths are dropped, not added twice). Annotations are
    rewritten only where they differ from what is stored."""
    con = ctx.con
    rows = sorted(con.execute("SELECT path, image_id, status FROM files WHERE status <> 'quarantined'").fetchall())
    paths: dict[str, list[str]] = {}
    for path, image_id, _ in rows:
        paths.setdefault(image_id, []).append(path)
    drops = list(matched.drops)
    for path, image_id, status in rows:
        wanted = "ok" if paths[image_id][0] == path else "duplicate"
        if status != wanted:
            con.execute("UPDATE files SET status = ? WHERE path = ?", [wanted, path])
        if wanted == "duplicate":
            drops.append((path, "duplicate", f"same content as {paths[image_id][0]}"))
    stored = _stored_annotations(ctx)
    for image_id, current in sorted(paths.items(), key=lambda item: item[1][0]):
        uri, width, height = con.execute(
            "SELECT uri, width, height FROM images WHERE image_id = ?", [image_id]
        ).fetchone()
        if uri != current[0]:
            con.execute("UPDATE images SET uri = ? WHERE image_id = ?", [current[0], image_id])
        labelled = [relative[p] for p in current if relative[p] in matched.entries] or [relative[current[0]]]
        for other in labelled[1:]:
            for entry in matched.entries[other]:
                drops.append((entry, "duplicate_annotations", f"{other} has the same content as {labelled[0]}"))
        boxes = []
        for entry, box in matched.boxes.get(labelled[0], []):
            clamped = box.to_pixels(width, height)
            if clamped is None:
                drops.append((f"{entry}#{box.label}@{box.x1:g},{box.y1:g}", "annotation_outside_image", ""))
                continue
            boxes.append((clamped.label, clamped.x1, clamped.y1, clamped.x2, clamped.y2, entry, clamped.attributes))
        wanted = (sorted(boxes), sorted(matched.complete.get(labelled[0], set())))
        if stored.get(image_id, ([], [])) != wanted:
            _write_annotations(ctx, stats, image_id, *wanted)
    _record_afresh(ctx, stats, SETTLED_REASONS, drops)


def _stored_annotations(ctx: Context) -> dict[str, tuple[list[tuple], list[str]]]:
    stored: dict[str, tuple[list[tuple], list[str]]] = {}
    for image_id, *box in ctx.con.execute(
        "SELECT image_id, label, x1, y1, x2, y2, source, attributes::VARCHAR FROM annotations"
    ).fetchall():
        stored.setdefault(image_id, ([], []))[0].append(tuple(box))
    for image_id, label in ctx.con.execute("SELECT image_id, label FROM complete_categories").fetchall():
        stored.setdefault(image_id, ([], []))[1].append(label)
    return {image_id: (sorted(boxes), sorted(labels)) for image_id, (boxes, labels) in stored.items()}


def _write_annotations(ctx: Context, stats: StageStats, image_id: str, boxes: list[tuple], labels: list[str]) -> None:
    con = ctx.con
    con.execute("DELETE FROM annotations WHERE image_id = ?", [image_id])
    con.execute("DELETE FROM complete_categories WHERE image_id = ?", [image_id])
    if boxes:
        con.executemany("INSERT INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [[image_id, *b] for b in boxes])
    if labels:
        con.executemany("INSERT INTO complete_categories VALUES (?, ?)", [[image_id, label] for label in labels])
    stats.count("annotations", len(boxes))


def _record_afresh(ctx: Context, stats: StageStats, reasons: tuple[str, ...], drops: list[tuple[str, str, str]]):
    """Replace the drops of these reasons: they describe the folder as it is now, not as it once was."""
    ctx.con.execute(
        f"DELETE FROM drops WHERE stage = ? AND reason IN ({', '.join('?' * len(reasons))})", [NAME, *reasons]
    )
    for item_id, reason, detail in drops:
        ctx.drop(stats, item_id, reason, detail)


def validate(con) -> None:
    validate_table(con, "images", "SELECT image_id, width, height, format, mode FROM images")
