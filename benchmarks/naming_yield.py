"""Model calls and named regions: naming the mined proposals (`name`) against tile grounding (`ground`).

The labelled fixture photos (COCO boxes with class names; by default the six of
`../shared/fixtures/hires/annotations.labelled.coco.json`) are ingested without their boxes and mined once with
the recipe's defaults; each way of naming then runs on a copy of that database against the local test server. The
scripted teacher answers from the boxes: `name` is told the class of a proposal that overlaps a labelled box at
IoU >= 0.5 and a rejection otherwise; `ground` gets every labelled box that lies wholly inside the tile (the
prompt asks for at most 8 that appear once, so this is ground's best case). The teacher knows which crop or tile
it was sent by its exact bytes, computed beforehand with the stages' own functions.

For each way: requests answered, regions that came out named (a class instead of the proposal's "object"),
labelled objects among them (distinct boxes a named region overlaps at IoU >= 0.5) and calls per named region.

    python benchmarks/naming_yield.py [--coco FILE] [--names-per-image 12]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drim_data.pipeline import run_pipeline  # noqa: E402
from drim_data.pixels.candidates import GENERIC, Candidate, not_unique, region_problem  # noqa: E402
from drim_data.pixels.images import decode  # noqa: E402
from drim_data.pixels.sources import image_bytes  # noqa: E402
from drim_data.recipe import load_recipe  # noqa: E402
from drim_data.stages.ground import tiles  # noqa: E402
from drim_data.stages.name import marked_crop  # noqa: E402
from drim_data.teacher.client import image_part  # noqa: E402
from schemas.geometry import GRID, iou  # noqa: E402
from tests.conftest import write_recipe  # noqa: E402
from tests.fake_teacher import task_of  # noqa: E402
from tests.openai_server import FakeOpenAI, Reply  # noqa: E402

KEY_ENV = "DRIM_BENCH_TEACHER_KEY"
COCO = REPO.parent / "shared" / "fixtures" / "hires" / "annotations.labelled.coco.json"
NAMED_IOU = 0.5


def labelled_boxes(coco: Path) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """Image file name -> (class, [x1, y1, x2, y2]) of every labelled box."""
    doc = json.loads(coco.read_text())
    classes = {c["id"]: c["name"] for c in doc["categories"]}
    files = {i["id"]: Path(i["file_name"]).name for i in doc["images"]}
    boxes: dict[str, list] = {name: [] for name in files.values()}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[files[a["image_id"]]].append((classes[a["category_id"]], (x, y, x + w, y + h)))
    return boxes


def recipe_for(folder: Path, images: Path, base_url: str, stages: list[str], names_per_image: int) -> Path:
    endpoint = {"base_url": base_url, "model": "big-vlm", "api_key_env": KEY_ENV, "max_in_flight": 16}
    teacher = {"stages": stages, "endpoint": endpoint, "names_per_image": names_per_image}
    return write_recipe(folder, images, annotations=False, teacher=teacher)


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def what_was_sent(db: Path, truth: dict, max_pixels: int, tile_grid: int) -> tuple[dict, dict]:
    """What each crop `name` may send and each tile `ground` sends shows, keyed by the hash of its data URL:
    (image file, proposal box) and (image file, tile)."""
    con = duckdb.connect(str(db), read_only=True)
    crops, shown = {}, {}
    try:
        files = dict(con.execute("SELECT image_id, path FROM files WHERE status = 'ok'").fetchall())
        for image_id, path in files.items():
            image = decode(image_bytes(con, image_id))
            name = Path(path).name
            boxes = con.execute(
                "SELECT x1, y1, x2, y2 FROM regions WHERE image_id = ? AND label = ?", [image_id, GENERIC]
            ).fetchall()
            for box in boxes:
                crops[_key(image_part(marked_crop(image, box), max_pixels)[0]["image_url"]["url"])] = (name, box)
            for tile in tiles(image.width, image.height, tile_grid):
                shown[_key(image_part(image.crop(tile), max_pixels)[0]["image_url"]["url"])] = (name, tile)
    finally:
        con.close()
    return crops, shown


def scripted_teacher(truth: dict, crops: dict, shown: dict):
    def reply(body: dict):
        task = task_of(body)
        url = body["messages"][1]["content"][0]["image_url"]["url"]
        if task == "name" and _key(url) in crops:
            name, box = crops[_key(url)]
            best = max(truth[name], key=lambda lb: iou(box, lb[1]), default=None)
            if best is not None and iou(box, best[1]) >= NAMED_IOU:
                return json.dumps({"label": best[0], "whole": True, "description": "", "reject": ""})
            return json.dumps({"label": "", "whole": False, "description": "", "reject": "no object"})
        if task == "ground" and _key(url) in shown:
            name, (x0, y0, x1, y1) = shown[_key(url)]
            w, h = x1 - x0, y1 - y0
            inside = [(c, b) for c, b in truth[name] if b[0] >= x0 and b[1] >= y0 and b[2] <= x1 and b[3] <= y1]
            objects = [
                {
                    "label": c,
                    "bbox_2d": [
                        (b[0] - x0) / w * GRID,
                        (b[1] - y0) / h * GRID,
                        (b[2] - x0) / w * GRID,
                        (b[3] - y0) / h * GRID,
                    ],
                }
                for c, b in inside
            ]
            return json.dumps({"objects": objects})
        return Reply(400)

    return reply


def measure(db: Path, truth: dict) -> dict:
    """Named regions, and the labelled boxes they find, per image file."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT f.path, r.label, r.x1, r.y1, r.x2, r.y2 FROM regions r JOIN files f USING (image_id) "
            "WHERE r.label != ?",
            [GENERIC],
        ).fetchall()
    finally:
        con.close()
    named: dict[str, int] = {}
    found: dict[str, set] = {}
    for path, label, *box in rows:
        name = Path(path).name
        named[name] = named.get(name, 0) + 1
        hits = {i for i, (c, b) in enumerate(truth[name]) if c == label and iou(box, b) >= NAMED_IOU}
        found.setdefault(name, set()).update(hits)
    return {"named": named, "found": {k: len(v) for k, v in found.items()}}


def perfect_proposals(db: Path, truth: dict, recipe) -> dict[str, int]:
    """Replace the mined proposals with what mining would keep from a proposer that found every labelled object
    and nothing else: the labelled boxes that pass the region filters, unlabelled, thinned by the uniqueness rule
    (an unlabelled proposal could be taken for anything near it). Returns the boxes per image that pass the
    filters, before that rule."""
    con = duckdb.connect(str(db))
    usable: dict[str, int] = {}
    try:
        images = con.execute(
            "SELECT f.path, i.image_id, i.width, i.height FROM files f JOIN images i USING (image_id)"
        )
        rows = []
        for path, image_id, width, height in images.fetchall():
            boxes = [
                (math.floor(b[0]), math.floor(b[1]), math.ceil(b[2]), math.ceil(b[3]))
                for _, b in truth[Path(path).name]
            ]
            kept = [
                Candidate("proposal", GENERIC, box, 1.0)
                for box in boxes
                if region_problem(box, width, height, recipe.mine, recipe.view) is None
            ]
            usable[Path(path).name] = len(kept)
            crowded = not_unique(kept, width, height, recipe.mine.unique_radius) if kept else []
            rows += [
                [f"{image_id}:{c.box}", image_id, "proposal", GENERIC, *c.box, 1.0]
                for c, no in zip(kept, crowded, strict=True)
                if not no
            ]
        con.execute("DELETE FROM regions")
        con.executemany("INSERT OR IGNORE INTO regions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        con.close()
    return usable


def count_by_image(db: Path, sql: str) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {Path(p).name: n for p, n in con.execute(sql).fetchall()}
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", type=Path, default=COCO, help="COCO boxes with class names; images beside it")
    parser.add_argument("--names-per-image", type=int, default=12, help="teacher.names_per_image for `name`")
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "local")
    truth = labelled_boxes(args.coco)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for name in truth:
            shutil.copy(args.coco.parent / "images" / name, images / name)
        mined = load_recipe(recipe_for(Path(tmp) / "mined", images, "http://127.0.0.1:9/v1", [], 1))
        run_pipeline(mined, until="mine")
        perfect = Path(tmp) / "perfect.duckdb"
        shutil.copy(mined.db, perfect)
        usable = perfect_proposals(perfect, truth, mined)
        per_image = "SELECT f.path, count(*) FROM regions r JOIN files f USING (image_id) GROUP BY 1"
        proposals, unique = count_by_image(mined.db, per_image), count_by_image(perfect, per_image)
        endpoint, grid, top_k = mined.teacher.endpoint, mined.teacher.tile_grid, mined.mine.top_k
        crops, shown = what_was_sent(mined.db, truth, endpoint.image_max_pixels, grid)
        crops.update(what_was_sent(perfect, truth, endpoint.image_max_pixels, grid)[0])
        cap = args.names_per_image
        ways = [  # (what, stages, names_per_image, the database it starts from)
            (f"name, {cap} an image", ["name"], cap, mined.db),
            (f"name, every proposal (up to {top_k})", ["name"], top_k, mined.db),
            (f"ground, {grid}x{grid} tiles", ["ground"], cap, mined.db),
            (f"ground, then name {cap} an image", ["ground", "name"], cap, mined.db),
            (f"name, a perfect proposer, up to {top_k}", ["name"], top_k, perfect),
        ]
        results = []
        for n, (what, stages, names_per_image, start) in enumerate(ways):
            folder = Path(tmp) / str(n)
            folder.mkdir()
            shutil.copy(start, folder / "state.duckdb")
            with FakeOpenAI(scripted_teacher(truth, crops, shown)) as server:
                recipe = load_recipe(recipe_for(folder, images, server.base_url, stages, names_per_image))
                run_pipeline(recipe, until=stages[-1])
            results.append((what, len(server.successful()), measure(recipe.db, truth)))
    total = sum(len(b) for b in truth.values())
    print(
        f"{len(truth)} images, {total} labelled boxes, {sum(usable.values())} of them pass the region filters "
        f"(size, border, visibility) and {sum(unique.values())} the uniqueness rule as unlabelled proposals; "
        f"{sum(proposals.values())} proposals mined"
    )
    print("| way | calls | named regions | labelled objects found | calls per named region |")
    print("|---|---:|---:|---:|---:|")
    for what, calls, m in results:
        named, found = sum(m["named"].values()), sum(m["found"].values())
        print(f"| {what} | {calls} | {named} | {found} | {f'{calls / named:.2f}' if named else '-'} |")
    print()
    print("| image | labelled | pass filters | and unique | proposals | " + " | ".join(r[0] for r in results) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(results))
    for name in truth:
        cells = " | ".join(f"{m['named'].get(name, 0)} ({m['found'].get(name, 0)})" for _, _, m in results)
        counts = f"{len(truth[name])} | {usable.get(name, 0)} | {unique.get(name, 0)} | {proposals.get(name, 0)}"
        print(f"| {Path(name).stem} | {counts} | {cells} |")
    print("(named regions, with the labelled objects among them in brackets)")


if __name__ == "__main__":
    main()
