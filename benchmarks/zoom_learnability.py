"""Zoom learnability on CPU: a task whose answer is unreadable in the global view and readable after one zoom.

Each image is 6144x6144 blocky grey noise, with chroma noise in 32 px blocks, and one small patch near a fixed place
(centre (1536, 1536) px, jittered by up to 2 px): a 28 px square of one colour (red or blue) inside a 40 px square of
the other, so the inner square (784 px) and the ring (816 px) have about the same area and the patch averages to the
same purple whichever colour the square is. The question is "What colour is the small inner square? A. red B. blue"
(letters balanced, chance 0.5). The tiny model sees the whole image at 140x140 (its processor's pixel budget), where
the patch is under one pixel (0.9 px). One zoom into the constant box [248, 248, 253, 253] (grid 0-1000, 31 px, about
the tool's smallest) falls inside the ring, so its 140x140 view is mostly the inner square (about 130 px wide) with a
thin edge of the ring. The script measures both views and prints how well the best threshold on red minus blue at the
patch's known place (its centre pixel, and summed over a 3x3 window) separates the two colours (200 images).

SFT teaches the tool call and the answer format, not the answer: its trajectories reach that box in one of three
ways, by turn (straight there; coarse to fine, from a wider look around it that the penalty never touches; or into
it twice, the repeat the penalty is for) and end with a letter drawn independently of the colour, so the SFT policy
is at chance by construction and any gain in accuracy is GRPO's, learnt from the reward. A policy that keeps one
zoom for every rollout sits on the edge of "at least one zoom per rollout": the coarse-to-fine way gives a policy
that drops its repeats a second zoom worth keeping, as real searches have.
GRPO then runs with at most 3 zooms, from the same SFT checkpoint and seed, with λ = 0 and with λ = 1. The table
gives, per 10 steps, the accuracy and zooms per rollout of the sampled rollouts, the mean redundancy penalty and the
share of wrong rollouts with two consecutive boxes at IoU >= 0.8; greedy accuracy on held-out images is measured
after SFT and after each GRPO run. A tiny random model cannot learn real search in minutes, so the box is constant:
this checks that GRPO, through the real multi-turn tool loop, raises accuracy on a task that needs the zoom, and what
the redundancy penalty changes, not that the model learns where to look.

The settings are those under which the tiny model learns the colour from the reward in 40 steps (the README gives
what fails without them): a model of hidden size 256; GRPO at lr 1e-3 with a KL term (β = 0.1) to the SFT policy,
without which the calls break and the policy learns to answer without zooming; 32 rollouts per step, 8 prompts of
4, taken in order from RL rows that alternate red and blue, so every step holds 4 prompts of each colour and the
letter's bias (A over B, whatever the colour) is not pushed one way by the draw. The RL rows are decoded once and
held in memory (about 113 MB each), as TRL reads a prompt once per rollout and decoding a 6144 px PNG takes about
half a second.

    python benchmarks/zoom_learnability.py [--work runs/zoom_learnability] [--hidden 256] [--sft-steps 100]
        [--grpo-steps 40] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from benchmarks.learnability import sft_config
from drim_train import grpo, sft
from drim_train.configs import DataModelArguments, DrimGRPOConfig
from drim_train.evaluate import aggregate, load_rows, sample
from drim_train.models import load_model, load_processor
from drim_train.rewards import RedundancyPenalty, graded
from drim_train.rollout import rollout
from drim_train.tiny_model import build_tiny_model
from drim_train.zoom_env import ZoomEnv
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
SIZE = 6144
CENTRE, JITTER = 1536, 2
INNER, OUTER = 28, 40  # 784 px inside, 816 px of ring: the same colour mass whichever way round
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}
ZOOM_BOX = [248, 248, 253, 253]  # grid 0-1000: pixels 1524-1554 (the tool's smallest side is 28), inside the ring
COARSE_BOX = [150, 150, 350, 350]  # a wider look around it first: IoU with ZOOM_BOX 0.0006, so never penalised
SEARCHES = (  # the SFT trajectories' three ways to the box, by turn
    ("direct", (("The square is too small; zoom in.", ZOOM_BOX),)),
    ("coarse_to_fine", (("The square is too small; look around it.", COARSE_BOX), ("Closer.", ZOOM_BOX))),
    ("reflective", (("The square is too small; zoom in.", ZOOM_BOX), ("Look again.", ZOOM_BOX))),
)
VIEW_BUDGET = 200 * 150  # the rows' global_view_size budget, as in tests/train/helpers.py
QUESTION = "What colour is the small inner square?\nA. red\nB. blue\nAnswer with the option's letter."
REPEAT_IOU = 0.8
TINT = 32
GREY_BLOCK, TINT_BLOCK = 16, 32
MAX_TURNS = 3
REWARDS = ["accuracy", "redundancy", "format"]  # drim's default; add "tool" for DeepEyes's bonus
HIDDEN = 256  # the tiny model's width; the 128 of the tests learns too, more slowly (see benchmarks/README.md)


def scene(i: int) -> tuple[Image.Image, tuple[int, int, int, int], str]:
    """Blocky grey and chroma noise with the two-colour patch; returns the image, the inner square's pixel box and its
    colour. The noise is drawn in blocks and scaled up, so the 6144 px images are quick to make and small as PNGs."""
    rng = np.random.default_rng(1000 + i)
    colour = list(COLOURS)[i % 2]
    other = list(COLOURS)[1 - i % 2]
    n = SIZE // GREY_BLOCK
    grey = rng.integers(0, 16, (n, n)) * 6 + 80  # 16 grey levels in blocks of a third of a global-view pixel
    k = TINT_BLOCK // GREY_BLOCK  # chroma noise in blocks of under a global-view pixel: no pixel's tint says much
    tint = np.kron(rng.integers(-TINT, TINT + 1, (n // k, n // k)), np.ones((k, k), dtype=np.int64))
    small = np.stack([grey + tint, grey, grey - tint], axis=2).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(small).resize((SIZE, SIZE), Image.Resampling.NEAREST)
    cx, cy = (CENTRE + int(v) for v in rng.integers(-JITTER, JITTER + 1, 2))
    ox, oy = cx - OUTER // 2, cy - OUTER // 2
    image.paste(COLOURS[other], (ox, oy, ox + OUTER, oy + OUTER))
    ix, iy = cx - INNER // 2, cy - INNER // 2
    image.paste(COLOURS[colour], (ix, iy, ix + INNER, iy + INNER))
    return image, (ix, iy, ix + INNER, iy + INNER), colour


def _common(i: int, image: Image.Image, box: tuple, colour: str) -> dict:
    view = global_view_size(image.width, image.height, VIEW_BUDGET)
    return square_fields(i, colour, image, box, QUESTION, difficulty="hard", view_size=view, prefix="z")


def sft_row(i: int) -> dict:
    """A trajectory that zooms into ZOOM_BOX, in one of three ways by turn (straight there; from a wider look around
    it, coarse to fine; or into it twice, which the penalty should prune), and answers a letter that alternates
    every two rows while the colour alternates every row: the call and the format, with an answer independent of
    the image."""
    image, box, colour = scene(i)
    common = _common(i, image, box, colour)
    view = global_view(image, common["global_view_size"])
    pattern, looks = SEARCHES[i % len(SEARCHES)]
    messages = [message("system", SYSTEM_PROMPT), message("user", QUESTION, images=1)]
    crops, boxes = [], []
    for think, grid in looks:
        crop, box_px = ZOOM(image, grid)
        crops.append(crop)
        boxes.append(list(box_px))
        messages += [
            message("assistant", f"<think>{think}</think>", tool_calls=[tool_call(grid)]),
            message("tool", observation_text(grid, box_px), images=1, name="zoom_in"),
        ]
    messages.append(message("assistant", f"<think>Seen.</think>\n<answer>{'AB'[i // 2 % 2]}</answer>"))
    return {
        **common,
        "messages": messages,
        "pattern": pattern,
        "zoom_boxes_px": boxes,
        "images": [_png(view)] + [_png(c) for c in crops],
    }


def rl_row(i: int) -> dict:
    image, box, colour = scene(i)
    common = _common(i, image, box, colour)
    prompt = [message("system", SYSTEM_PROMPT), message("user", QUESTION, images=1)]
    return {**common, "prompt": prompt, "images": [_png(image)]}


def write_version(root: Path, n_sft: int, n_rl: int, n_test: int) -> Path:
    """OUT/zoom/v1 as drim-data writes it; RL rows are numbered after the SFT ones and test rows after those (other
    images each). A version written before is reused only if it was written with this design and these counts
    (`design.json`), and written anew otherwise."""
    version = root / "zoom" / "v1"
    design = {
        "size": SIZE,
        "centre": CENTRE,
        "jitter": JITTER,
        "square": [INNER, OUTER],
        "colours": COLOURS,
        "tint": [TINT, GREY_BLOCK, TINT_BLOCK],
        "zoom_box": ZOOM_BOX,
        "searches": SEARCHES,
        "rows": [n_sft, n_rl, n_test],
    }
    stamp, key = version / "design.json", json.dumps(design, sort_keys=True)
    if (version / "manifest.json").exists() and stamp.exists() and stamp.read_text() == key:
        return version
    shutil.rmtree(version, ignore_errors=True)
    shards = {}
    for split, (n, make, first) in {
        "sft": (n_sft, sft_row, 0),
        "rl": (n_rl, rl_row, n_sft),
        "test": (n_test, rl_row, n_sft + n_rl),
    }.items():
        (version / "data" / split).mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([make(first + i) for i in range(n)], schema=SPLITS[split][0].arrow_schema)
        rel = f"data/{split}/train-00000-of-00001.parquet"
        pq.write_table(table, version / rel)
        shards[rel] = shard_entry(version / rel)
    manifest = new_manifest(shards, {"sft": n_sft, "rl": n_rl, "test": n_test}, version=1, tool=ZOOM.manifest())
    (version / "manifest.json").write_text(json.dumps(manifest))
    stamp.write_text(key)
    return version


def model_view(image: Image.Image, processor) -> Image.Image:
    """The global view as the model gets it: the row's downscaled view, resized as its image processor does."""
    view = global_view(image, global_view_size(image.width, image.height, VIEW_BUDGET))
    ip = processor.image_processor
    grid = ip(images=[view], return_tensors="pt")["image_grid_thw"][0].tolist()
    size = (int(grid[2]) * ip.patch_size, int(grid[1]) * ip.patch_size)
    return view.resize(size, ip.resample)


def visibility(processor, n: int = 200) -> dict:
    """How readable the square's colour is without and with the zoom: the best threshold on red minus blue at the
    patch's known place in the model's view, at its centre pixel and summed over the 3x3 window around it, and the
    square's size there."""

    def best_threshold(feature: list[float], red: list[bool]) -> float:
        order = np.argsort(feature)
        labels = np.array(red)[order]
        best = 0.5
        for k in range(len(labels) + 1):  # predict "red" above position k, or below
            acc = (labels[k:].sum() + (~labels[:k]).sum()) / len(labels)
            best = max(best, acc, 1 - acc)
        return float(best)

    features = {(name, r): [] for name in ("global", "zoom") for r in (0, 1)}
    red, side = [], {}
    for i in range(n):
        image, box, colour = scene(10_000 + i)
        red.append(colour == "red")
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
            for r in (0, 1):
                window = a[max(0, py - r) : py + r + 1, max(0, px - r) : px + r + 1]
                features[name, r].append(float((window[..., 0] - window[..., 2]).sum()))
            side[name] = (INNER * sx, OUTER * sx, view.size)
    return {
        name: {
            "view_px": list(side[name][2]),
            "inner_square_px": round(side[name][0], 2),
            "patch_px": round(side[name][1], 2),
            "centre_pixel_accuracy": round(best_threshold(features[name, 0], red), 3),
            "window_3x3_accuracy": round(best_threshold(features[name, 1], red), 3),
        }
        for name in side
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
        rollouts = graded(completions, answer, checker, options, environments)
        wrong = [boxes for right, boxes in rollouts if not right]
        pairs = [list(zip(bs, bs[1:], strict=False)) for bs in wrong]  # each wrong rollout's consecutive boxes
        self.log.append(
            {
                "step": self.trainer_ref[0].state.global_step + 1,
                "wrong": len(wrong),
                "repeated": sum(any(iou(a, b) >= REPEAT_IOU for a, b in p) for p in pairs),
                "unzoomed": sum(not boxes for _, boxes in rollouts),
                "n": len(rollouts),
            }
        )
        return rewards


def greedy_eval(model, processor, version: Path, batch: int = 16) -> dict:
    """Greedy accuracy and zooms per rollout on the held-out test images, through the same tool loop; the rows are
    decoded batch by batch, as `drim-train eval` does (a 6144 px original takes 113 MB)."""
    rows, spec = load_rows(str(version), split="test")
    penalty = RedundancyPenalty()
    was_training = model.training
    model.eval()
    samples = []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            part = [rows[i] for i in range(start, min(start + batch, len(rows)))]
            envs = [ZoomEnv(spec, MAX_TURNS) for _ in part]
            done = rollout(model, processor, part, envs, MAX_TURNS, grpo.TURN_TEXT_TOKENS)
            samples += [sample(r, row, penalty) for r, row in zip(done, part, strict=True)]
    model.train(was_training)
    report = aggregate(samples, penalty)
    return {"accuracy": report["accuracy"], "calls": report["tool_calls"]["mean"]}


class DecodedRows(torch.utils.data.Dataset):
    """The RL rows as the trainer reads them, decoded once. TRL fetches a prompt once per rollout, and decoding a
    6144 px PNG and downscaling it to the global view takes about half a second: most of a step at 32 rollouts.
    The training itself is unchanged; the rows held in memory take about 113 MB each."""

    def __init__(self, dataset):
        self.rows = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return dict(self.rows[i])


def grpo_config(out: Path, steps: int, lr: float, batch: int, **settings) -> DrimGRPOConfig:
    """The GRPO settings of the CPU benchmarks (constant lr, temperature 1, a log line per step, no saving), with
    `settings` for what a benchmark varies."""
    return DrimGRPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=lr,
        lr_scheduler_type="constant",
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
        **settings,
    )


def grpo_run(
    version: Path,
    model: Path,
    work: Path,
    lam: float,
    steps: int,
    batch: int,
    gens: int,
    lr: float,
    beta: float,
    rewards: list[str],
) -> tuple[list[dict], dict]:
    """GRPO from the SFT checkpoint; the per-step curve and the greedy evaluation of the trained policy. The RL rows
    alternate red and blue and are taken in order (`shuffle_dataset` off), so every step holds as many prompts of
    each colour: a step's prompts then pull the letter's bias (A over B, whatever the colour) both ways, and what
    is left is the colour."""
    processor = load_processor(str(model))
    turns = MAX_TURNS
    config = grpo_config(
        work / f"grpo-lambda{lam:g}",
        steps,
        lr,
        batch,
        num_generations=gens,
        max_completion_length=grpo.completion_budget(ZOOM, processor, turns),
        max_tool_calling_iterations=turns,
        redundancy_lambda=lam,
        beta=beta,
        shuffle_dataset=False,
        reward_funcs=rewards,
    )
    args = DataModelArguments(data=str(version), model=str(model))
    trainer = grpo.build_trainer(args, config)
    trainer.train_dataset = decoded = DecodedRows(trainer.train_dataset)
    ref: list = [trainer]
    index = next(i for i, f in enumerate(trainer.reward_funcs) if isinstance(f, RedundancyPenalty))
    recorder = RecordingPenalty(lam, config.redundancy_epsilon, ref)
    trainer.reward_funcs[index] = recorder
    trainer.train()
    decoded.rows.clear()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    repeats = {r["step"]: r for r in recorder.log}
    curve = [
        {
            "step": h["step"],
            "accuracy": h["rewards/accuracy_reward/mean"],
            "calls": h["zoom/calls_per_rollout"],
            "redundancy": h["rewards/redundancy_penalty/mean"],
            "wrong": repeats.get(h["step"], {}).get("wrong", 0),
            "repeated": repeats.get(h["step"], {}).get("repeated", 0),
            "unzoomed": repeats.get(h["step"], {}).get("unzoomed", 0) / max(1, repeats.get(h["step"], {}).get("n", 0)),
        }
        for h in logs
    ]
    final = greedy_eval(trainer.model, processor, version)
    ref.clear()  # the recorder refers back to the trainer: drop the cycle before the next run
    del trainer
    gc.collect()
    return curve, final


def sft_stage(work: Path, tiny: Path, steps: int, lr: float, n_sft: int, n_rl: int, n_test: int) -> tuple[Path, dict]:
    """The task's version and the SFT checkpoint (`work/sft`), with its greedy evaluation on the held-out images."""
    version = write_version(work, n_sft, n_rl, n_test)
    sft.main(DataModelArguments(data=str(version), model=str(tiny)), sft_config(work / "sft", steps, lr))
    return version, greedy_eval(load_model(str(work / "sft")), load_processor(str(tiny)), version)


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
                "unzoomed": sum(r["unzoomed"] for r in part) / len(part),
                "redundancy": sum(r["redundancy"] for r in part) / len(part),
                "wrong_repeated": sum(r["repeated"] for r in part) / wrong if wrong else 0.0,
                "wrong": wrong,
            }
        )
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "zoom_learnability")
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="the tiny model's width")
    parser.add_argument("--sft-steps", type=int, default=100)
    parser.add_argument("--sft-lr", type=float, default=5e-3)
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--grpo-lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.1, help="KL coefficient to the SFT policy")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--n-sft", type=int, default=48)
    parser.add_argument("--n-rl", type=int, default=32)
    parser.add_argument("--n-test", type=int, default=48, help="held-out images of the greedy evaluations")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--rewards", nargs="+", default=REWARDS, help="GRPO's reward_funcs")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = parser.parse_args()

    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_model(args.work / "tiny", hidden=args.hidden)
    processor = load_processor(str(tiny))
    seen = visibility(processor)
    print("colour readability at the patch's known place (best threshold on red-blue, 200 images, chance 0.5):")
    for name, v in seen.items():
        print(
            f"  {name:>6} view {v['view_px'][0]}x{v['view_px'][1]} px: inner square {v['inner_square_px']} px, "
            f"patch {v['patch_px']} px; best-threshold accuracy: centre pixel {v['centre_pixel_accuracy']}, "
            f"3x3 window {v['window_3x3_accuracy']}"
        )
    version, after_sft = sft_stage(args.work, tiny, args.sft_steps, args.sft_lr, args.n_sft, args.n_rl, args.n_test)
    print(
        f"data and SFT done in {time.time() - started:.0f} s; greedy on {args.n_test} held-out images after SFT: "
        f"accuracy {after_sft['accuracy']:.3f}, zooms/rollout {after_sft['calls']:.2f}"
    )

    results = {}
    for lam in args.lambdas:
        t = time.time()
        curve, final = grpo_run(
            version,
            args.work / "sft",
            args.work,
            lam,
            args.grpo_steps,
            args.batch,
            args.generations,
            args.grpo_lr,
            args.beta,
            args.rewards,
        )
        results[lam] = {"curve": curve, "blocks": by_tens(curve), "greedy": final, "seconds": round(time.time() - t)}

    print(
        f"\nGRPO after {args.sft_steps} SFT steps (hidden size {args.hidden}), lr {args.grpo_lr:g}, KL beta "
        f"{args.beta:g}, {args.batch} rollouts per step ({args.generations} per prompt), same SFT checkpoint and "
        f"seed 0; chance accuracy 0.5"
    )
    print(f"rewards: {', '.join(args.rewards)}")
    print(
        f"{'lambda':>7}{'steps':>8}{'accuracy':>10}{'zooms/rollout':>15}{'no zoom':>9}{'redundancy':>12}"
        f"{'wrong w/ repeat':>17}"
    )
    for lam, r in results.items():
        for b in r["blocks"]:
            print(
                f"{lam:>7g}{b['steps']:>8}{b['accuracy']:>10.3f}{b['calls']:>15.2f}{b['unzoomed']:>9.2f}"
                f"{b['redundancy']:>12.4f}"
                f"{b['wrong_repeated']:>11.2f} of {b['wrong']:>3}"
            )
    print(f"\ngreedy on {args.n_test} held-out images (at most {MAX_TURNS} zooms):")
    print(f"  after SFT: accuracy {after_sft['accuracy']:.3f}, zooms/rollout {after_sft['calls']:.2f}")
    for lam, r in results.items():
        g = r["greedy"]
        print(
            f"  after GRPO, lambda {lam:g}: accuracy {g['accuracy']:.3f}, zooms/rollout {g['calls']:.2f} "
            f"({r['seconds']} s)"
        )
    print(f"total {time.time() - started:.0f} s")
    if args.json:
        out = {
            "visibility": seen,
            "hidden": args.hidden,
            "sft_steps": args.sft_steps,
            "grpo": {
                "lr": args.grpo_lr,
                "beta": args.beta,
                "batch": args.batch,
                "generations": args.generations,
                "rewards": args.rewards,
            },
            "after_sft": after_sft,
            "lambda": {str(k): v for k, v in results.items()},
        }
        print(json.dumps(out))


if __name__ == "__main__":
    main()
