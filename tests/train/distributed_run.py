"""Run by test_scale under `accelerate launch --num_processes 2 --cpu` (gloo): two steps of SFT or of scripted
GRPO on the tiny model, where the ranks make different numbers of tool rounds. Each rank writes what it saw to
OUT/rank<R>.json.

    python tests/train/distributed_run.py sft|grpo DATA MODEL OUT [SYNC_TOOL_ROUNDS]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drim_train import grpo, sft  # noqa: E402
from drim_train.configs import DataModelArguments, DrimGRPOConfig, DrimSFTConfig  # noqa: E402
from tests.train.helpers import parse_recipe  # noqa: E402
from tests.train.scripted import MAX_TURNS, ScriptedTrainer, count_generations  # noqa: E402


def run_sft(data: str, model: str, out: Path) -> dict:
    types = (DataModelArguments, DrimSFTConfig)
    args, config = parse_recipe(
        "sft-tiny.yaml", types, data=data, model=model, output_dir=out, max_steps=2, per_device_train_batch_size=1
    )
    trainer = sft.build_trainer(args, config)
    collate, tool_turns = trainer.data_collator, []

    def counted(examples):
        tool_turns.append(sum(m["role"] == "tool" for e in examples for m in e["messages"]))
        return collate(examples)

    trainer.data_collator = counted
    trainer.train()
    return {"tool_turns": tool_turns, "logs": trainer.state.log_history}


def run_grpo(data: str, model: str, out: Path, sync: str) -> dict:
    ScriptedTrainer.zoomer = staticmethod(lambda rank, i: rank == 0)  # rank 0 zooms every turn, rank 1 never
    grpo.ZoomGRPOTrainer = ScriptedTrainer
    types = (DataModelArguments, DrimGRPOConfig)
    args, config = parse_recipe(
        "grpo-tiny.yaml",
        types,
        data=data,
        model=model,
        output_dir=out,
        max_steps=2,
        per_device_train_batch_size=2,
        num_generations=2,
        max_tool_calling_iterations=MAX_TURNS,
        max_completion_length=4096,
        sync_tool_rounds=sync,
    )
    trainer = grpo.build_trainer(args, config)
    trainer.generation_config.max_new_tokens = 2  # the script writes the tokens; the model only has to run
    generations = count_generations(trainer)
    trainer.train()
    return {"generations": generations[0], "sync": trainer.sync_tool_rounds, "logs": trainer.state.log_history}


def main() -> None:
    stage, data, model, out = sys.argv[1:5]
    out = Path(out)
    result = run_sft(data, model, out) if stage == "sft" else run_grpo(data, model, out, sys.argv[5])
    rank = int(os.environ.get("RANK", "0"))
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
