"""The recall benchmark on an annotated folder, as it is run on sets outside the repository: its JSON keys and
what it counts as found and as hidden."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIDE = 1600  # seen at 0.63x in the 1M-pixel view: objects 38 px wide and up need no zoom
BOATS = [(400, 300, 412, 320), (1100, 500, 1120, 512), (700, 1200, 714, 1214)]  # hidden: 12-20 px
SHIP = (1200, 1100, 1260, 1180)  # 60 x 80 px: small (under 1% of the image) but visible without zoom


def test_the_benchmark_counts_hidden_and_visible_ground_truth_apart_and_reads_a_recipe(tmp_path):
    rgb = np.clip(np.random.default_rng(0).normal(40, 2, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)  # open water
    for x1, y1, x2, y2 in [*BOATS, SHIP]:
        rgb[y1:y2, x1:x2] = 220
    (tmp_path / "images").mkdir()
    Image.fromarray(rgb).save(tmp_path / "images" / "sea.png")
    boxes = [*BOATS, SHIP]
    coco = {
        "images": [{"id": 1, "file_name": "sea.png", "width": SIDE, "height": SIDE, "complete_categories": ["boat"]}],
        "categories": [{"id": 1, "name": "boat"}],
        "annotations": [
            {"id": i, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}
            for i, (x1, y1, x2, y2) in enumerate(boxes, 1)
        ],
    }
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    result = _benchmark(tmp_path)
    overall = result["overall"]
    assert overall["truth"] == 4 and result["images"][0]["image"] == "sea.png"
    # the boats are found with boxes of their own; the ship the view resolves is not sought
    assert overall["recall_hidden@100@0.5"] == 1.0
    assert overall["recall@100@0.5"] == 0.75
    assert 0 < overall["kept_on_object"] <= 1
    assert {"recall@25@0.3", "recall@50@0.5", "miss@100@0.3"} <= overall.keys()

    # a recipe's settings: a view that resolves nothing, so the ship is sought too
    recipe = {"dataset": "sea", "db": "sea.duckdb", "output_dir": "out", "ingest": {"images": "images"}}
    recipe["view"] = {"min_resolvable_px": 0}
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))  # YAML reads JSON
    overall = _benchmark(tmp_path, "--recipe", str(tmp_path / "recipe.yaml"))["overall"]
    assert overall["recall_hidden@100@0.5"] == overall["recall@100@0.5"] == 1.0


def _benchmark(folder: Path, *extra: str) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "miner_recall.py"), "--json", *extra]
    command += ["--images", str(folder / "images"), "--coco", str(folder / "boxes.json")]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
