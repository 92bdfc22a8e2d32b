"""Zoom learnability on CPU: a task whose answer is unreadable in the global view and readable after one zoom.

Each image is 1536x1536 grey noise with one small patch near a fixed place (centre (384, 384) px, jittered by up to
24 px): a 12 px square of one colour (red or blue) inside a 17 px square of the other, so the inner square and the
ring have the same area and the patch averages to the same purple whichever colour the square is. The question is
"What colour is the small inner square? A. red B. blue" (letters balanced). The tiny model sees the whole image at
140x140 (its processor's pixel budget), where the patch is about 1.5 px wide: the script measures that view and
prints how well the best threshold on its red-minus-blue at the known place separates the two colours (chance is
0.5). One zoom into the constant box [200, 200, 300, 300] (grid 0-1000) shows the square at about 11 px.

A tiny random model cannot learn real search in minutes, so the box it must learn is constant: this checks that
GRPO, through the real multi-turn tool loop, raises accuracy on a task that needs the zoom, and what the redundancy
penalty changes (λ = 0 vs λ = 1 from the same SFT checkpoint and seeds), not that the model learns where to look.

    python benchmarks/zoom_learnability.py [--work runs/zoom_learnability] [--sft-steps 60] [--grpo-steps 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.learnability import grpo_config, sft_config
from drim_train import grpo, sft
from drim_train.configs import DataModelArguments
from drim_train.models import load_processor
from drim_train.rewards import RedundancyPenalty, accuracy_reward
from drim_train.tiny_model import build_tiny_model
from schemas.manifest import new_manifest, shard_entry
from schemas.rows import SPLITS, message
from schemas.tool import (
    SYSTEM_PROMPT,
    ZOOM,
    global_view,
    global_view_size,
    iou,
    observation_text,
    tool_call,
)
from tests.train.helpers import _png, square_fields

REPO = Path(__file__).resolve().parents[1]
SIZE = 1536
CENTRE, JITTER = 384, 24
INNER, OUTER = 12, 17  # 144 px inside, 145 px of ring: the same colour mass whichever way round
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}
ZOOM_BOX = [200, 200, 300, 300]  # grid 0-1000: pixels 307-461, around every patch
VIEW_BUDGET = 200 * 150  # the rows' global_view_size budget, as in tests/train/helpers.py
QUESTION = "What colour is the small inner square?\nA. red\nB. blue\nAnswer with the option's letter."
REPEAT_IOU = 0.8
TINT = 24


def scene(i: int) -> tuple[Image.Image, tuple[int, int, int, int], str]:
    """Grey noise with the two-colour patch; returns the image, the inner square's pixel box and its colour."""
    rng = np.random.default_rng(1000 + i)
    colour = list(COLOURS)[i % 2]
    other = list(COLOURS)[1 - i % 2]
    grey = (rng.integers(0, 16, (SIZE, SIZE)) * 6 + 80).astype(np.uint8)  # 16 grey levels: PNGs stay small
    pixels = np.repeat(grey[:, :, None], 3, axis=2).astype(np.int16)
    tint = np.kron(rng.integers(-TINT, TINT + 1, (SIZE // 16, SIZE // 16)), np.ones((16, 16), dtype=np.int64))
    pixels[..., 0] += tint.astype(np.int16)  # chroma noise at the global view's scale: red-minus-blue of a
    pixels[..., 2] -= tint.astype(np.int16)  # 16 px block, about one pixel there, so no pixel's tint says much
    cx, cy = (CENTRE + int(v) for v in rng.integers(-JITTER, JITTER + 1, 2))
    ox, oy = cx - OUTER // 2, cy - OUTER // 2
    pixels[oy : oy + OUTER, ox : ox + OUTER] = COLOURS[other]
    ix, iy = cx - INNER // 2, cy - INNER // 2
    pixels[iy : iy + INNER, ix : ix + INNER] = COLOURS[colour]
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), (ix, iy, ix + INNER, iy + INNER), colour


def _common(i: int, image: Image.Image, box: tuple, colour: str) -> dict:
    view = global_view_size(image.width, image.height, VIEW_BUDGET)
    return square_fields(i, colour, image, box, QUESTION, difficulty="hard", view_size=view, prefix="z")


def sft_row(i: int) -> dict:
    image, box, colour = scene(i)
    common = _common(i, image, box, colour)
    view = global_view(image, common["global_view_size"])
    crop, box_px = ZOOM(image, ZOOM_BOX)
    messages = [
        message("system", SYSTEM_PROMPT),
        message("user", QUESTION, images=1),
        message("assistant", "<think>The square is too small; zoom in.</think>", tool_calls=[tool_call(ZOOM_BOX)]),
        message("tool", observation_text(ZOOM_BOX, box_px), images=1, name="zoom_in"),
        message("assistant", f"<think>It is {colour}.</think>\n<answer>{common['answer']}</answer>"),
    ]
    return {
        **common,
        "messages": messages,
        "pattern": "coarse_to_fine",
        "zoom_boxes_px": [list(box_px)],
        "images": [_png(view), _png(crop)],
    }


def rl_row(i: int) -> dict:
    image, box, colour = scene(i)
    common = _common(i, image, box, colour)
    prompt = [message("system", SYSTEM_PROMPT), message("user", QUESTION, images=1)]
    return {**common, "prompt": prompt, "images": [_png(image)]}


def write_version(root: Path, n_sft: int, n_rl: int) -> Path:
    """OUT/zoom/v1 as drim-data writes it; RL rows are numbered after the SFT ones (other images)."""
    version = root / "zoom" / "v1"
    if (version / "manifest.json").exists():
        return version
    shards = {}
    for split, (n, make, first) in {
        "sft": (n_sft, sft_row, 0),
        "rl": (n_rl, rl_row, n_sft),
        "test": (0, rl_row, 0),
    }.items():
        (version / "data" / split).mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([make(first + i) for i in range(n)], schema=SPLITS[split][0].arrow_schema)
        rel = f"data/{split}/train-00000-of-00001.parquet"
        pq.write_table(table, version / rel)
        shards[rel] = shard_entry(version / rel)
    manifest = new_manifest(shards, {"sft": n_sft, "rl": n_rl, "test": 0}, version=1, tool=ZOOM.manifest())
    (version / "manifest.json").write_text(json.dumps(manifest))
    return version


def model_view(image: Image.Image, processor) -> Image.Image:
    """The global view as the model gets it: the row's downscaled view, resized as its image processor does."""
    view = global_view(image, global_view_size(image.width, image.height, VIEW_BUDGET))
    ip = processor.image_processor
    grid = ip(images=[view], return_tensors="pt")["image_grid_thw"][0].tolist()
    size = (int(grid[2]) * ip.patch_size, int(grid[1]) * ip.patch_size)
    return view.resize(size, ip.resample)


def visibility(processor, n: int = 200) -> dict:
    """How readable the square's colour is without and with the zoom: the best threshold on red minus blue, summed
    over a 3x3 window at the patch's known place in the model's view, and the square's size there."""

    def best_threshold(feature: list[float], red: list[bool]) -> float:
        order = np.argsort(feature)
        labels = np.array(red)[order]
        best = 0.5
        for k in range(len(labels) + 1):  # predict "red" above position k, or below
            acc = (labels[k:].sum() + (~labels[:k]).sum()) / len(labels)
            best = max(best, acc, 1 - acc)
        return float(best)

    rows = {"global": ([], []), "zoom": ([], [])}
    side = {}
    for i in range(n):
        image, box, colour = scene(10_000 + i)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        crop, box_px = ZOOM(image, ZOOM_BOX)
        for name, view, (x0, y0, w, h) in (
            ("global", model_view(image, processor), (0, 0, image.width, image.height)),
            (
                "zoom",
                model_view_crop(crop, processor),
                (box_px[0], box_px[1], box_px[2] - box_px[0], box_px[3] - box_px[1]),
            ),
        ):
            a = np.asarray(view, dtype=np.float64)
            sx, sy = view.width / w, view.height / h
            px, py = int((cx - x0) * sx), int((cy - y0) * sy)
            r = 1 if name == "global" else 0  # in the zoom, the inner square's own centre pixel
            window = a[max(0, py - r) : py + r + 1, max(0, px - r) : px + r + 1]
            rows[name][0].append(float((window[..., 0] - window[..., 2]).sum()))
            rows[name][1].append(colour == "red")
            side[name] = (INNER * sx, OUTER * sx, view.size)
    return {
        name: {
            "view_px": list(side[name][2]),
            "inner_square_px": round(side[name][0], 2),
            "patch_px": round(side[name][1], 2),
            "best_threshold_accuracy": round(best_threshold(*rows[name]), 3),
        }
        for name in rows
    }


def model_view_crop(crop: Image.Image, processor) -> Image.Image:
    ip = processor.image_processor
    grid = ip(images=[crop], return_tensors="pt")["image_grid_thw"][0].tolist()
    return crop.resize((int(grid[2]) * ip.patch_size, int(grid[1]) * ip.patch_size), ip.resample)


class RecordingPenalty(RedundancyPenalty):
    """The redundancy penalty, unchanged, that also records per step how many wrong rollouts repeated a box."""

    def __init__(self, lam: float, eps: float, trainer_ref: list):
        super().__init__(lam, eps)
        self.trainer_ref = trainer_ref
        self.log: list[dict] = []

    def __call__(self, completions, answer, checker, options=None, environments=None, **kwargs):
        rewards = super().__call__(completions, answer, checker, options, environments, **kwargs)
        correct = accuracy_reward(completions, answer, checker, options)
        wrong = repeated = 0
        for right, env in zip(correct, environments or [None] * len(completions), strict=True):
            if right or env is None:
                continue
            wrong += 1
            boxes = env.boxes_norm
            repeated += any(iou(a, b) >= REPEAT_IOU for a, b in zip(boxes, boxes[1:], strict=False))
        self.log.append({"step": self.trainer_ref[0].state.global_step + 1, "wrong": wrong, "repeated": repeated})
        return rewards


def grpo_run(
    version: Path, model: Path, work: Path, lam: float, steps: int, batch: int, gens: int, lr: float
) -> list[dict]:
    processor = load_processor(str(model))
    turns = 2
    config = grpo_config(
        work / f"grpo-lambda{lam:g}",
        steps,
        lr,
        batch,
        num_generations=gens,
        max_completion_length=grpo.completion_budget(ZOOM, processor, turns),
        max_tool_calling_iterations=turns,
        redundancy_lambda=lam,
    )
    args = DataModelArguments(data=str(version), model=str(model))
    trainer = grpo.build_trainer(args, config)
    ref: list = [trainer]
    index = next(i for i, f in enumerate(trainer.reward_funcs) if isinstance(f, RedundancyPenalty))
    recorder = RecordingPenalty(lam, config.redundancy_epsilon, ref)
    trainer.reward_funcs[index] = recorder
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    repeats = {r["step"]: r for r in recorder.log}
    return [
        {
            "step": h["step"],
            "accuracy": h["rewards/accuracy_reward/mean"],
            "calls": h["zoom/calls_per_rollout"],
            "redundancy": h["rewards/redundancy_penalty/mean"],
            "wrong": repeats.get(h["step"], {}).get("wrong", 0),
            "repeated": repeats.get(h["step"], {}).get("repeated", 0),
        }
        for h in logs
    ]


def by_tens(curve: list[dict], every: int = 10) -> list[dict]:
    blocks = []
    for start in range(0, len(curve), every):
        part = curve[start : start + every]
        wrong = sum(r["wrong"] for r in part)
        blocks.append(
            {
                "steps": f"{part[0]['step']}-{part[-1]['step']}",
                "accuracy": sum(r["accuracy"] for r in part) / len(part),
                "calls": sum(r["calls"] for r in part) / len(part),
                "redundancy": sum(r["redundancy"] for r in part) / len(part),
                "wrong_repeated": sum(r["repeated"] for r in part) / wrong if wrong else 0.0,
                "wrong": wrong,
            }
        )
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "zoom_learnability")
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--sft-lr", type=float, default=5e-3)
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--grpo-lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--n-sft", type=int, default=48)
    parser.add_argument("--n-rl", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = parser.parse_args()

    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_model(args.work / "tiny")
    processor = load_processor(str(tiny))
    seen = visibility(processor)
    print("colour readability at the patch's known place (best threshold on red-blue, 200 images, chance 0.5):")
    for name, v in seen.items():
        print(
            f"  {name:>6} view {v['view_px'][0]}x{v['view_px'][1]} px: inner square {v['inner_square_px']} px, "
            f"patch {v['patch_px']} px, best-threshold accuracy {v['best_threshold_accuracy']}"
        )
    version = write_version(args.work, args.n_sft, args.n_rl)
    data = DataModelArguments(data=str(version), model=str(tiny))
    sft.main(data, sft_config(args.work / "sft", args.sft_steps, args.sft_lr))
    print(f"data and SFT done in {time.time() - started:.0f} s")

    results = {}
    for lam in (0.0, 1.0):
        t = time.time()
        curve = grpo_run(
            version, args.work / "sft", args.work, lam, args.grpo_steps, args.batch, args.generations, args.grpo_lr
        )
        results[lam] = {"curve": curve, "blocks": by_tens(curve), "seconds": round(time.time() - t)}

    print(
        f"\nGRPO after {args.sft_steps} SFT steps, {args.batch} rollouts per step ({args.generations} per prompt), "
        f"same SFT checkpoint and seed 0; chance accuracy 0.5"
    )
    print(f"{'lambda':>7}{'steps':>8}{'accuracy':>10}{'zooms/rollout':>15}{'redundancy':>12}{'wrong w/ repeat':>17}")
    for lam, r in results.items():
        for b in r["blocks"]:
            print(
                f"{lam:>7g}{b['steps']:>8}{b['accuracy']:>10.3f}{b['calls']:>15.2f}{b['redundancy']:>12.4f}"
                f"{b['wrong_repeated']:>11.2f} of {b['wrong']:>3}"
            )
    print(f"total {time.time() - started:.0f} s")
    if args.json:
        out = {"visibility": seen, "sft_steps": args.sft_steps, "lambda": {str(k): v for k, v in results.items()}}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
