"""Ingest: a folder of images (and their annotations) into the database, quarantining what cannot be used."""

from __future__ import annotations

import os
from pathlib import Path

from drim_data.pixels.annotations import Box, complete_categories, load_annotations
from drim_data.pixels.images import ImageRejected, check_image
from drim_data.stages.contract import Context, StageStats
from schemas.tables import validate_table

NAME = "ingest"
VERSION = "1"


def list_images(folder: Path, extensions: list[str]) -> list[Path]:
    allowed = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in allowed)


def run(ctx: Context) -> StageStats:
    cfg, con, stats = ctx.recipe.ingest, ctx.con, StageStats(NAME)
    if not cfg.images.is_dir():
        from drim_data.errors import DrimError

        raise DrimError(f"{ctx.recipe.source}: ingest.images: {cfg.images} is not a folder")
    boxes: dict[str, list[Box]] = {}
    complete: dict[str, set[str]] = {}
    for source in cfg.annotations:
        for stem, found in load_annotations(source).items():
            boxes.setdefault(stem, []).extend(found)
        for stem, labels in complete_categories(source).items():
            complete.setdefault(stem, set()).update(labels)

    known = {
        path: (size, mtime) for path, size, mtime in con.execute("SELECT path, size, mtime_ns FROM files").fetchall()
    }
    listed = {str(p): p for p in list_images(cfg.images, cfg.extensions)}
    con.begin()
    for gone in sorted(set(known) - set(listed)):  # the dataset follows the folder: removed files leave it
        con.execute("DELETE FROM files WHERE path = ?", [gone])
        stats.count("removed")
    con.commit()
    pending = []
    for key, path in listed.items():
        st = path.stat()
        if known.get(key) != (st.st_size, st.st_mtime_ns):
            pending.append((key, path, st))
    for key, path, st in ctx.track(pending, NAME, len(pending)):
        con.begin()
        con.execute("DELETE FROM files WHERE path = ?", [key])
        status, image_id = _ingest_file(
            ctx, stats, key, path, boxes.get(path.stem, []), complete.get(path.stem, set())
        )
        con.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?)", [key, st.st_size, st.st_mtime_ns, image_id, status])
        con.commit()
        stats.processed += 1
    return stats


def _ingest_file(
    ctx: Context, stats: StageStats, key: str, path: Path, boxes: list[Box], complete: set[str]
) -> tuple[str, str | None]:
    try:
        checked = check_image(path.read_bytes(), ctx.recipe.ingest.max_pixels)
    except ImageRejected as exc:
        ctx.drop(stats, key, exc.reason, exc.detail)
        return "quarantined", None
    except OSError as exc:
        ctx.drop(stats, key, "unreadable", str(exc))
        return "quarantined", None
    con = ctx.con
    if con.execute("SELECT 1 FROM images WHERE image_id = ?", [checked.image_id]).fetchone():
        first = con.execute("SELECT source_path FROM images WHERE image_id = ?", [checked.image_id]).fetchone()[0]
        ctx.drop(stats, key, "duplicate", f"same content as {first}")
        return "duplicate", checked.image_id
    con.execute(
        "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            checked.image_id,
            key,
            checked.width,
            checked.height,
            checked.format,
            checked.mode,
            checked.exif_transposed,
            checked.data,
        ],
    )
    for box in boxes:
        clamped = box.to_pixels(checked.width, checked.height)
        if clamped is None:
            ctx.drop(stats, f"{key}#{box.label}@{box.x1:g},{box.y1:g}", "annotation_outside_image")
            continue
        con.execute(
            "INSERT INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                checked.image_id,
                clamped.label,
                clamped.x1,
                clamped.y1,
                clamped.x2,
                clamped.y2,
                os.fspath(path),
                clamped.attributes,
            ],
        )
    for label in sorted(complete):
        con.execute("INSERT OR IGNORE INTO complete_categories VALUES (?, ?)", [checked.image_id, label])
    stats.count("images")
    stats.count("annotations", len(boxes))
    return "ok", checked.image_id


def validate(con) -> None:
    validate_table(con, "images", "SELECT image_id, width, height, format, mode FROM images")
