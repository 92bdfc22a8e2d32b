"""The review page: a static HTML page over one version, opened from disk, to look at the data before training.

The page pages through a sidecar data file (`items.js`) in the browser, and every image is a small JPEG written
beside it (one downscaled image per source image, one thumbnail per zoom crop), so 10,000 items stay fast. With the
recipe, the page also shows the verdict rows from its database and the items the pipeline dropped, with reasons.
Each row carries the flags `drim-data audit` gives it, shown as badges and filtered by.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from drim_data.errors import DrimError, Drop
from drim_data.pixels.images import thumbnail
from drim_data.pixels.sources import image_bytes
from drim_data.release.audit import Tally
from drim_data.release.versions import iter_rows, prepare_folder, verify_version
from schemas.tool import GRID

PAGE = Path(__file__).with_name("view.html")
IMAGE_SIDE = 1024  # the full image, downscaled: boxes are drawn over it in the browser
CROP_SIDE = 480
PAGE_SIZE = 25


@dataclass
class ViewResult:
    page: Path
    kept: int
    dropped: int


def build_view(
    version_dir: Path,
    folder: Path | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    page_size: int = PAGE_SIZE,
) -> ViewResult:
    """Write the page for a verified version; with `con` (the recipe's database) add verdicts and dropped items."""
    version_dir = Path(version_dir)
    manifest = verify_version(version_dir)
    folder = prepare_folder(version_dir, folder, "view", ["index.html"], "--out")
    (folder / "img").mkdir()
    (folder / "crops").mkdir()
    images = _ImageWriter(folder)
    tally = Tally()  # the audit's flags, from the rows the page reads anyway
    items = []
    for split, row in iter_rows(version_dir, manifest):
        tally.add(split, row)
        items.append(_shard_item(split, row, images))
    for item, audited in zip(items, tally.result().rows, strict=True):
        item["flags"] = audited["flags"]
    dropped = []
    if con is not None:
        _check_same_database(con, manifest, version_dir)
        dropped = _add_database(con, items, images)
    meta = {
        "dataset": manifest["dataset"],
        "version": manifest["version"],
        "parent": manifest["parent"],
        "rows": manifest["rows"],
        "created_at": manifest.get("created_at"),
        "with_drops": con is not None,
        "page_size": page_size,
    }
    page = write_page(folder, items + dropped, meta)
    return ViewResult(page, len(items), len(dropped))


def write_page(folder: Path, items: list[dict], meta: dict) -> Path:
    """The page and its data file; the images must already sit in `folder`."""
    data = json.dumps({"meta": meta, "items": items}, separators=(",", ":"), default=str)
    (folder / "items.js").write_text(f"window.DRIM_VIEW = {data};\n")
    shutil.copy(PAGE, folder / "index.html")
    return folder / "index.html"


class _ImageWriter:
    """Writes each source image once and each crop as a thumbnail; returns paths relative to the page."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: set[str] = set()

    def full(
        self, image_id: str, data: bytes | None = None, con: duckdb.DuckDBPyConnection | None = None
    ) -> str | None:
        """The image written once; its bytes come from `data`, or through its reference when it is first needed
        (None when its source is gone or changed: the page shows the item without it)."""
        rel = f"img/{image_id[:16]}.jpg"
        if rel not in self.written:
            if data is None:
                try:
                    data = image_bytes(con, image_id)
                except Drop:
                    return None
            self._save(data, IMAGE_SIDE, self.folder / rel)
            self.written.add(rel)
        return rel

    def crop(self, item_id: str, turn: int, data: bytes) -> str:
        rel = f"crops/{item_id}-{turn}.jpg"
        self._save(data, CROP_SIDE, self.folder / rel)
        return rel

    @staticmethod
    def _save(data: bytes, side: int, dest: Path) -> None:
        thumbnail(data, side).save(dest, format="JPEG", quality=82)


def _shard_item(split: str, row: dict, images: _ImageWriter) -> dict:
    item = {
        "id": row["id"],
        "status": "kept",
        "split": split,
        "type": row["question_type"],
        "difficulty": row["difficulty"],
        "question": row["question"],
        "options": list(row["options"] or []),
        "answer": row["answer"],
        "checker": row["checker"],
        "pattern": row.get("pattern"),
        "image": images.full(row["image_id"], row["images"][0]["bytes"]),
        "targets": row.get("target_boxes_norm") or [],
        "zooms": [],
        "turns": [],
        "verdict": {"kept": True, "difficulty": row["difficulty"]},
        "votes": [],
        "reason": None,
    }
    if split == "sft":
        crops = [img["bytes"] for img in row["images"][1:]]
        _set_trajectory(item, row["messages"], crops, images)
    return item


def _set_trajectory(item: dict, messages: list[dict], crops: list[bytes], images: _ImageWriter) -> None:
    """Turns as (role, text, zoom box on the 0..1000 grid, crop); image blocks after the first are the crops."""
    turns, zooms, seen_images = [], [], 0
    for m in messages:
        if m["role"] == "system":
            continue
        texts, crop = [], None
        for block in m["content"] or []:
            if block["type"] == "image":
                if seen_images and seen_images - 1 < len(crops):
                    crop = images.crop(item["id"], seen_images - 1, crops[seen_images - 1])
                seen_images += 1
            elif block.get("text"):
                texts.append(block["text"])
        zoom = None
        for call in m.get("tool_calls") or []:
            zoom = json.loads(call["function"]["arguments"]).get("bbox_2d")
            zooms.append([v / GRID for v in zoom])
        turns.append({"role": m["role"], "text": "\n".join(texts), "zoom": zoom, "crop": crop})
    item["turns"], item["zooms"] = turns, zooms


def _check_same_database(con, manifest: dict, version_dir: Path) -> None:
    found = con.execute("SELECT version FROM exports WHERE fingerprint = ?", [manifest["fingerprint"]]).fetchone()
    if found is None:
        raise DrimError(f"{version_dir} was not exported from this recipe's database, so its drops are not there")


DROPPED = """
SELECT q.question_id, q.image_id, q.question_type, q.question, q.options, q.answer, q.checker, q.target_boxes,
       i.width, i.height, (SELECT string_agg(DISTINCT d.reason, ', ') FROM drops d WHERE d.item_id = q.question_id)
FROM questions q JOIN images i USING (image_id)
ORDER BY q.question_id
"""


def _add_database(con, items: list[dict], images: _ImageWriter) -> list[dict]:
    """Verdicts, votes and target boxes for the version's items, trajectories the RL split leaves out, and the
    dropped items."""
    cursor = con.execute("SELECT * FROM verdicts")
    columns = [c[0] for c in cursor.description]
    verdicts = {row[0]: dict(zip(columns[1:], row[1:], strict=True)) for row in cursor.fetchall()}
    votes: dict[str, list[dict]] = {}
    for qid, role, answer, correct in con.execute(
        "SELECT question_id, role, answer, correct FROM votes ORDER BY question_id, "
        "list_position(['vote', 'validator', 'solver_full', 'solver_crop'], role), role, idx"
    ).fetchall():
        votes.setdefault(qid, []).append({"role": role, "answer": answer, "correct": correct})
    by_id = {item["id"]: item for item in items}
    dropped = []
    for qid, image_id, qtype, question, options, answer, checker, boxes, width, height, drops in con.execute(
        DROPPED
    ).fetchall():
        verdict = verdicts.get(qid)
        targets = [[x1 / width, y1 / height, x2 / width, y2 / height] for x1, y1, x2, y2 in json.loads(boxes)]
        if qid in by_id:
            item = by_id[qid]
            item["targets"], item["verdict"] = targets, verdict or item["verdict"]
            item["votes"] = votes.get(qid, [])
            if not item["turns"]:
                _trajectory_from_database(con, item, images)
            continue
        reason = drops or (verdict["reason"] if verdict and not verdict["kept"] else None)
        if reason is None:
            continue  # kept, but belongs to another version (or is not verified yet)
        item = {
            "id": qid,
            "status": "dropped",
            "split": None,
            "type": qtype,
            "difficulty": verdict["difficulty"] if verdict else None,
            "question": question,
            "options": json.loads(options),
            "answer": answer,
            "checker": checker,
            "pattern": None,
            "image": images.full(image_id, con=con),
            "targets": targets,
            "zooms": [],
            "turns": [],
            "verdict": verdict,
            "votes": votes.get(qid, []),
            "reason": reason,
            "flags": [],  # the audit reads shards: a dropped item is in none
        }
        _trajectory_from_database(con, item, images)
        dropped.append(item)
    return dropped


def _trajectory_from_database(con, item: dict, images: _ImageWriter) -> None:
    found = con.execute("SELECT pattern, messages FROM trajectories WHERE question_id = ?", [item["id"]]).fetchone()
    if found is None:
        return
    crops = [
        c
        for (c,) in con.execute(
            "SELECT crop FROM observations WHERE question_id = ? ORDER BY turn", [item["id"]]
        ).fetchall()
    ]
    item["pattern"] = found[0]
    _set_trajectory(item, json.loads(found[1]), crops, images)
