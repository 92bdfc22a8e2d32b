"""Ingest: a folder of images (and their annotations) into the database, quarantining what cannot be used.

An image is its content (sha256): a renamed or restored file is the same image and keeps what was made from it.
Identical files under several current paths are one image, named by the first path in sorted order; the others
are dropped as `duplicate`, and the image takes the annotations of its first path that has any. Which path comes
first, and which annotation entry names which path, depend on the whole folder, so both are settled again at the
end of every run, from the folder as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from drim_data.errors import DrimError
from drim_data.pixels.annotations import Matched, match_annotations
from drim_data.pixels.images import IMAGE_EXTENSIONS, ImageRejected, check_image
from drim_data.stages.contract import Context, StageStats
from schemas.tables import validate_table

NAME = "ingest"
VERSION = "2"  # 2: content identity across renames; annotations matched by path under the images folder

# Drops that the listing decides, and those settled from the whole folder: both are recorded afresh every run.
LISTING_REASONS = ("unsupported_extension", "dangling_symlink", "symlink_loop", "unreadable_folder")
SETTLED_REASONS = (
    "duplicate",
    "duplicate_annotations",
    "ambiguous_annotation",
    "unmatched_annotation",
    "annotation_outside_image",
)


@dataclass
class Listing:
    images: list[Path] = field(default_factory=list)  # in sorted order
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)


def list_images(folder: Path, extensions: list[str]) -> Listing:
    """The image files under `folder`, following symlinked folders; every image-like file left out has a reason.

    Files whose extension is no image format's (labels, notes) are not images and are passed over.
    """
    allowed = {e.lower() for e in extensions}
    listing = Listing()

    def walk(directory: Path, ancestors: frozenset[str]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            listing.refused.append((str(directory), "unreadable_folder", str(exc)))
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # follows a symlinked folder, unless it leads back into a folder being walked
                real = os.path.realpath(path)
                if real in ancestors:
                    listing.refused.append((str(path), "symlink_loop", f"leads back to {real}"))
                else:
                    walk(path, ancestors | {real})
                continue
            suffix = path.suffix.lower()
            if suffix not in allowed and suffix not in IMAGE_EXTENSIONS:
                continue
            if entry.is_symlink() and not path.exists():
                listing.refused.append((str(path), "dangling_symlink", f"links to {os.readlink(path)}, which is gone"))
            elif suffix not in allowed:
                listing.refused.append(
                    (str(path), "unsupported_extension", f"{suffix} is not in ingest.extensions {sorted(allowed)}")
                )
            elif entry.is_file():
                listing.images.append(path)

    walk(folder, frozenset({os.path.realpath(folder)}))
    listing.images.sort(key=str)
    return listing


def run(ctx: Context) -> StageStats:
    cfg, con, stats = ctx.recipe.ingest, ctx.con, StageStats(NAME)
    if not cfg.images.is_dir():
        raise DrimError(f"{ctx.recipe.source}: ingest.images: {cfg.images} is not a folder")
    listing = list_images(cfg.images, cfg.extensions)
    listed = {str(p): p for p in listing.images}
    relative = {key: path.relative_to(cfg.images).as_posix() for key, path in listed.items()}
    matched = match_annotations(cfg.annotations, list(relative.values()))  # a malformed file stops the run here

    known = {
        path: (size, mtime) for path, size, mtime in con.execute("SELECT path, size, mtime_ns FROM files").fetchall()
    }
    con.begin()
    for gone in sorted(set(known) - set(listed)):  # the dataset follows the folder: removed files leave it
        con.execute("DELETE FROM files WHERE path = ?", [gone])
        con.execute("DELETE FROM drops WHERE stage = ? AND item_id = ?", [NAME, gone])
        stats.count("removed")
    _record_afresh(ctx, stats, LISTING_REASONS, listing.refused)
    con.commit()

    pending = []
    for key, path in listed.items():
        st = path.stat()
        if known.get(key) != (st.st_size, st.st_mtime_ns):
            pending.append((key, path, st))
    for key, path, st in ctx.track(pending, NAME, len(pending)):
        con.begin()
        con.execute("DELETE FROM files WHERE path = ?", [key])
        con.execute("DELETE FROM drops WHERE stage = ? AND item_id = ?", [NAME, key])  # a fixed file: no old drop
        image_id = _check_file(ctx, stats, key, path)
        status = "quarantined" if image_id is None else "ok"  # `_settle` tells the first path from its duplicates
        con.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?)", [key, st.st_size, st.st_mtime_ns, image_id, status])
        con.commit()
        stats.processed += 1

    con.begin()
    _settle(ctx, stats, relative, matched)
    con.commit()
    return stats


def _check_file(ctx: Context, stats: StageStats, key: str, path: Path) -> str | None:
    """The file's image id, storing the image when its content is new; None when it is quarantined."""
    try:
        checked = check_image(path.read_bytes(), ctx.recipe.ingest.max_pixels)
    except ImageRejected as exc:
        ctx.drop(stats, key, exc.reason, exc.detail)
        return None
    except OSError as exc:
        ctx.drop(stats, key, "unreadable", str(exc))
        return None
    con = ctx.con
    if not con.execute("SELECT 1 FROM images WHERE image_id = ?", [checked.image_id]).fetchone():
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
        stats.count("images")
    return checked.image_id


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
        source_path, width, height = con.execute(
            "SELECT source_path, width, height FROM images WHERE image_id = ?", [image_id]
        ).fetchone()
        if source_path != current[0]:
            con.execute("UPDATE images SET source_path = ? WHERE image_id = ?", [current[0], image_id])
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
