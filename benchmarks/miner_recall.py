"""Recall of the classical proposer on annotated real photos: ground-truth boxes under 1% of the image area.

For each K, the share of ground-truth boxes that some proposal among the top K overlaps at IoU >= 0.3 and >= 0.5,
and the share of those K proposals that overlap no ground-truth box at that IoU ("miss"). A single image with N
objects caps recall@K at K/N (the "bound" column). Proposals run exactly as in mining, without the filters that
look beyond the box itself (zoom necessity, uniqueness).

    python benchmarks/miner_recall.py [--min-side 32 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from drim_data.pixels.annotations import load_annotations
from drim_data.pixels.candidates import proposal_factor, proposals
from drim_data.pixels.images import decode
from drim_data.recipe import AnnotationSource, MineConfig, ViewConfig

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
ANNOTATED = [(DEMO / "images" / "neon_2019_YELL_2_541000_4977000_image_crop.png", DEMO / "annotations")]
SMALL = 0.01  # ground truth under this share of the image area


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-side", type=int, nargs="+", default=[32, 16], help="proposal_min_side_px settings")
    parser.add_argument("-k", type=int, nargs="+", default=[25, 50, 100])
    args = parser.parse_args()
    for image, boxes_folder in ANNOTATED:
        data = image.read_bytes()
        width, height = decode(data).size
        boxes = load_annotations(AnnotationSource("voc", boxes_folder))[image.stem]
        truth = np.array([(b.x1, b.y1, b.x2, b.y2) for b in boxes])
        truth = truth[(truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]) < SMALL * width * height]
        ks = sorted(set(args.k) | {len(truth), 1000})
        print(f"\n{image.name}: {width}x{height}, {len(truth)} ground-truth boxes under {SMALL:.0%} of the area")
        for min_side in args.min_side:
            cfg = MineConfig(top_k=max(ks), proposal_min_side_px=min_side)
            view = ViewConfig(min_resolvable_px=0)
            started = time.perf_counter()
            found = np.array([c.box for c in proposals(data, width, height, cfg, view)], float).reshape(-1, 4)
            seconds = time.perf_counter() - started
            factor = proposal_factor(width, height, cfg)
            print(f"\nproposal_min_side_px={min_side} (view 1/{factor}), {len(found)} proposals in {seconds:.2f} s")
            print("|    K | bound | recall@0.3 | recall@0.5 | miss@0.3 | miss@0.5 |")
            print("|-----:|------:|-----------:|-----------:|---------:|---------:|")
            overlap = iou_matrix(truth, found)
            for k in ks:
                top = overlap[:, :k]
                recall = [(top.max(axis=1) >= t).mean() if top.size else 0.0 for t in (0.3, 0.5)]
                miss = [(top.max(axis=0) < t).mean() if top.size else 0.0 for t in (0.3, 0.5)]
                bound = min(k, len(truth)) / len(truth)
                cells = [f"{k:4d}", f"{bound:5.2f}", f"{recall[0]:10.3f}", f"{recall[1]:10.3f}"]
                cells += [f"{miss[0]:8.3f}", f"{miss[1]:8.3f}"]
                print("| " + " | ".join(cells) + " |")
            sides = np.sqrt((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]))
            hit = overlap[:, : len(truth)].max(axis=1) >= 0.5 if overlap.size else np.zeros(len(truth), bool)
            buckets = [(0, 24), (24, 32), (32, 48), (48, 1e9)]
            row = ", ".join(
                f"{lo}-{hi if hi < 1e9 else ''} px: {hit[(sides >= lo) & (sides < hi)].mean():.2f} "
                f"(n={int(((sides >= lo) & (sides < hi)).sum())})"
                for lo, hi in buckets
            )
            print(f"recall@{len(truth)} at IoU 0.5 by object size (sqrt of area): {row}")


if __name__ == "__main__":
    main()
