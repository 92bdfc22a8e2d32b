"""Learnability on CPU, in minutes: does the training stack teach a tiny random Qwen3-VL anything?

A tiny model (hidden size 384) is trained on drim-data's demo trajectories; every `--every` steps it is
rolled out on the held-out RL prompts and we count first turns that are a well-formed zoom_in call. Expected:
about 0 -> >= 0.9. (The 128-wide model of the other tests learns the format as fast but keeps miscounting a box's
four numbers on some prompts: 0.7 to 0.94 from step 100 on.)

What GRPO learns through the tool loop, and what the redundancy penalty changes, is `zoom_learnability.py`'s task.

    python benchmarks/learnability.py [--work runs/learnability] [--sft-steps 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the synthetic task lives in tests/train
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import TrainerCallback

from drim_train import sft
from drim_train.configs import DataModelArguments, DrimSFTConfig
from drim_train.data import load_split
from drim_train.evaluate import load_rows
from drim_train.models import load_processor
from drim_train.rewards import well_formed_call
from drim_train.rollout import rollout
from drim_train.tiny_model import build_tiny_model
from drim_train.zoom_env import ZoomEnv

REPO = Path(__file__).resolve().parents[1]
SFT_HIDDEN = 384  # the width of the tiny model the SFT check trains: at 256 it miscounts a box's four numbers on
# half the demo's held-out prompts once the demo holds 11 SFT rows (0.5 at step 200)


def demo_version(work: Path) -> Path:
    """drim-data's demo recipe (four real photos, the built-in offline teacher), written under `work`."""
    from drim_data.pipeline import run_pipeline
    from drim_data.recipe import load_recipe

    recipe = load_recipe(REPO / "pipelines" / "demo.yaml")
    recipe = dataclasses.replace(recipe, db=work / "demo.duckdb", output_dir=work / "out")
    run_pipeline(recipe)
    return max((work / "out" / recipe.dataset).glob("v*"), key=lambda p: int(p.name[1:]))


def first_turn_budget(version: Path, processor) -> int:
    """Tokens a first turn may take: the longest first assistant turn of the SFT rows (its reasoning and its call),
    plus room for the template's markup, so a rollout is never cut short of the call it is learning to make."""
    longest = 0
    for row in load_split(version, "sft").select_columns(["messages"]):  # the images need no decoding here
        turn = next(m for m in row["messages"] if m["role"] == "assistant")
        text = " ".join(b["text"] for b in turn["content"] or [] if b.get("text"))
        calls = json.dumps([c["function"] for c in turn.get("tool_calls") or []])
        longest = max(longest, len(processor.tokenizer(text + calls)["input_ids"]))
    return longest + 32


class CallShare(TrainerCallback):
    """Every `every` steps, the share of held-out prompts whose first turn is a well-formed zoom_in call."""

    def __init__(self, processor, rows: list[dict], spec, every: int, budget: int):
        self.processor, self.rows, self.spec, self.every, self.budget = processor, rows, spec, every, budget
        self.curve: list[tuple[int, float]] = []

    def measure(self, model, step: int) -> None:
        was_training = model.training
        model.eval()
        envs = [ZoomEnv(self.spec) for _ in self.rows]
        rollouts = rollout(model, self.processor, self.rows, envs, max_turns=0, max_new_tokens=self.budget)
        model.train(was_training)
        self.curve.append((step, sum(well_formed_call(r.completion[0]) for r in rollouts) / len(rollouts)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.measure(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.measure(model, state.global_step)


def sft_config(out: Path, steps: int, lr: float) -> DrimSFTConfig:
    return DrimSFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        lr_scheduler_type="cosine",  # at a constant rate the last steps swing between 0.5 and 0.9
        warmup_steps=10,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
        seed=0,
    )


def sft_curve(version: Path, tiny: Path, work: Path, steps: int, every: int, lr: float) -> list[tuple[int, float]]:
    rows, spec = load_rows(str(version), split="rl")  # the held-out prompts: the demo holds no test images
    args = DataModelArguments(data=str(version), model=str(tiny))
    trainer = sft.build_trainer(args, sft_config(work / "sft-demo", steps, lr))
    processor = load_processor(str(tiny))
    budget = first_turn_budget(version, processor)
    print(f"first-turn budget: {budget} tokens (the longest first turn of the SFT rows, plus 32)")
    callback = CallShare(processor, rows, spec, every, budget)
    trainer.add_callback(callback)
    trainer.train()
    return callback.curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "learnability")
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    version = demo_version(args.work)
    wider = build_tiny_model(args.work / f"tiny-{SFT_HIDDEN}", hidden=SFT_HIDDEN)
    curve = sft_curve(version, wider, args.work, args.sft_steps, args.every, args.sft_lr)
    print(f"SFT on {version}: share of held-out prompts whose first turn is a well-formed zoom_in call")
    print(f"{'step':>6}{'well-formed':>14}")
    for step, share in curve:
        print(f"{step:>6}{share:>14.2f}")


if __name__ == "__main__":
    main()
