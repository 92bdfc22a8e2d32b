"""Recall of the classical proposer on annotated real photos: ground-truth boxes under 1% of the image area.

For each K, the share of ground-truth boxes that some proposal among the top K overlaps at IoU >= 0.3 and >= 0.5,
and the share of those K proposals that overlap no ground-truth box at that IoU ("miss"). Proposals run exactly as
in mining, with the recipe's defaults (or --recipe's settings): objects the model's view already resolves are not
sought (`--every-size` seeks them too). The filters that look beyond the box itself (uniqueness) are left out.
Overall recall pools every ground-truth box of every image; overall miss pools every proposal. "recall_hidden" is
recall@100 over the ground truth the model's view does not resolve (its shorter side under the view's cap), the
objects mining is after. "kept_on_object" is the share of the regions mining keeps (every filter, the image taken as
unannotated) that overlap a ground-truth box at IoU >= 0.3, on the images a COCO file declares `complete_categories`
for, where a region on nothing boxed is on no object of those classes.

By default every bundled annotated image is measured (the NEON forest's VOC boxes and both labelled COCO files);
--images and --coco (repeatable, paired in order) measure other sets.

    python benchmarks/miner_recall.py [--images DIR --coco FILE ...] [--recipe FILE] [--json] [--min-side 8]
        [--every-size]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from drim_data.pixels.annotations import load_annotations
from drim_data.pixels.candidates import Job, max_hidden_side, mine_image, proposal_factor, proposals
from drim_data.pixels.images import decode, sha256
from drim_data.pixels.sources import ImageRef
from drim_data.recipe import AnnotationSource, MineConfig, ViewConfig, load_recipe

DATA = Path(__file__).resolve().parents[1] / "data"
BUNDLED = [
    (DATA / "demo" / "images", AnnotationSource("voc", DATA / "demo" / "annotations")),
    (DATA / "demo" / "images", AnnotationSource("coco", DATA / "demo" / "annotations" / "labelled.coco.json")),
    (DATA / "fixtures" / "images", AnnotationSource("coco", DATA / "fixtures" / "annotations" / "labelled.coco.json")),
]
SMALL = 0.01  # ground truth under this share of the image area
KS = (25, 50, 100)
IOUS = (0.3, 0.5)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def annotated(sets: list[tuple[Path, AnnotationSource]]) -> list[tuple[Path, np.ndarray, bool]]:
    """(image file, its ground-truth boxes, whether some category is complete) for every image a source boxes."""
    found = []
    for folder, source in sets:
        complete = _complete(source)
        for key, boxes in sorted(load_annotations(source).items()):
            matches = [p for p in (folder / key, *folder.glob(f"{key}.*")) if p.is_file()]
            if boxes and matches:
                array = np.array([(b.x1, b.y1, b.x2, b.y2) for b in boxes], float)
                found.append((matches[0], array, key in complete))
    return found


def _complete(source: AnnotationSource) -> set[str]:
    """The COCO file names of images with `complete_categories`; other formats declare none."""
    if source.format != "coco":
        return set()
    images = json.loads(source.path.read_text())["images"]
    return {im["file_name"] for im in images if im.get("complete_categories")}


def kept_on_object(ref: ImageRef, width: int, height: int, boxes: np.ndarray, cfg: MineConfig, view: ViewConfig):
    """(kept regions on a ground-truth box, kept regions) of the mine stage with these settings."""
    mined = mine_image(Job("bench", ref, width, height, [], cfg, view))
    kept = np.array([row[4:8] for row in mined.regions], float).reshape(-1, 4)
    if not len(kept):
        return 0, 0
    return int((iou_matrix(kept, boxes).max(axis=1) >= IOUS[0]).sum()), len(kept)


def measure(image: Path, boxes: np.ndarray, complete: bool, mine: MineConfig, view: ViewConfig) -> dict:
    """Hits and misses of the pipeline's own proposals on one image, for every K and IoU; the regions kept with
    `mine` as it is."""
    cfg = dataclasses.replace(mine, top_k=max(KS))
    data = image.read_bytes()
    width, height = decode(data).size
    truth = boxes[(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) < SMALL * width * height]
    started = time.perf_counter()
    ref = ImageRef(sha256(data), str(image), len(data), data)
    found = np.array([c.box for c in proposals(ref, width, height, cfg, view)], float).reshape(-1, 4)
    seconds = time.perf_counter() - started
    overlap = iou_matrix(truth, found) if len(truth) and len(found) else np.zeros((len(truth), len(found)))
    counts = {}
    for k in KS:
        top = overlap[:, :k]
        for t in IOUS:
            counts[f"hit@{k}@{t}"] = int((top.max(axis=1, initial=0) >= t).sum())
            counts[f"missed_proposals@{k}@{t}"] = int((top.max(axis=0, initial=0) < t).sum())
            counts[f"proposals@{k}"] = top.shape[1]
    # the ground truth the view does not resolve: the objects mining is after
    hidden = np.minimum(truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1]) < max_hidden_side(width, height, view)
    counts["hidden"] = int(hidden.sum())
    for t in IOUS:
        counts[f"hidden_hit@{max(KS)}@{t}"] = int((overlap[hidden, : max(KS)].max(axis=1, initial=0) >= t).sum())
    mined = kept_on_object(ref, width, height, boxes, mine, view) if complete else (0, 0)
    counts["on_object"], counts["kept"] = mined
    factor = proposal_factor(width, height, cfg)
    return {"image": image.name, "size": [width, height], "view": f"1/{factor}", "truth": len(truth)} | {
        "seconds": round(seconds, 3),
        "counts": counts,
    }


def rates(counts: dict, truth: int) -> dict[str, float]:
    """recall@K@IoU over the ground truth and miss@K@IoU over the proposals, from pooled counts."""
    out = {}
    for k in KS:
        for t in IOUS:
            out[f"recall@{k}@{t}"] = round(counts[f"hit@{k}@{t}"] / truth, 3) if truth else 0.0
            n = counts[f"proposals@{k}"]
            out[f"miss@{k}@{t}"] = round(counts[f"missed_proposals@{k}@{t}"] / n, 3) if n else 0.0
    for t in IOUS:
        hits, hidden = counts[f"hidden_hit@{max(KS)}@{t}"], counts["hidden"]
        out[f"recall_hidden@{max(KS)}@{t}"] = round(hits / hidden, 3) if hidden else 0.0
    out["kept_on_object"] = round(counts["on_object"] / counts["kept"], 3) if counts["kept"] else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, action="append", default=[], help="a folder of images")
    parser.add_argument("--coco", type=Path, action="append", default=[], help="its COCO boxes (one per --images)")
    parser.add_argument(
        "--recipe", type=Path, help="mine with this recipe's mine and view settings (default: defaults)"
    )
    parser.add_argument("--min-side", type=int, help="proposal_min_side_px (default: the recipe's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--every-size",
        action="store_true",
        help="seek objects the model's view already resolves too (the pipeline does not: view.min_resolvable_px)",
    )
    args = parser.parse_args()
    if len(args.images) != len(args.coco):
        parser.error("give one --coco file for each --images folder")
    sets = [(d, AnnotationSource("coco", c)) for d, c in zip(args.images, args.coco, strict=True)] or BUNDLED
    recipe = load_recipe(args.recipe) if args.recipe else None
    mine, view = (recipe.mine, recipe.view) if recipe else (MineConfig(), ViewConfig())
    if args.min_side:
        mine = dataclasses.replace(mine, proposal_min_side_px=args.min_side)
    if args.every_size:
        view = dataclasses.replace(view, min_resolvable_px=0)
    results = [measure(image, boxes, complete, mine, view) for image, boxes, complete in annotated(sets)]
    pooled = {key: sum(r["counts"][key] for r in results) for key in results[0]["counts"]} if results else {}
    truth = sum(r["truth"] for r in results)
    for r in results:
        r["rates"] = rates(r["counts"], r["truth"])
    overall = rates(pooled, truth) if results else {}
    if args.json:
        images = [{k: v for k, v in r.items() if k != "counts"} for r in results]
        print(json.dumps({"images": images, "overall": overall | {"truth": truth}}, indent=1))
        return
    columns = [f"{m}@100@{t}" for m in ("recall", "miss") for t in IOUS]
    columns = [f"recall@{k}@{t}" for k in (25, 50) for t in IOUS] + columns
    columns += [f"recall_hidden@100@{t}" for t in IOUS] + ["kept_on_object"]
    print(
        f"Ground-truth boxes under {SMALL:.0%} of the image area; proposal_min_side_px={mine.proposal_min_side_px}\n"
    )
    print("| image | view | n | hidden | s | " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(columns))
    for r in results:
        cells = [r["image"], r["view"], str(r["truth"]), str(r["counts"]["hidden"]), f"{r['seconds']:.2f}"]
        print("| " + " | ".join(cells + [_cell(r["rates"][c]) for c in columns]) + " |")
    hidden = str(pooled["hidden"])
    print(f"| overall | | {truth} | {hidden} | | " + " | ".join(_cell(overall[c]) for c in columns) + " |")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
