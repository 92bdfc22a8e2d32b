"""`drim-train`: sft, grpo and eval on what drim-data exports, plus the tiny test model.

Training commands pass their arguments to TRL's parser: an optional YAML recipe first, then any field as a flag,
for example `drim-train grpo pipelines/train/grpo-tiny.yaml --data OUT/demo/v1 --model runs/sft --learning_rate 1e-6`.
`drim-train sft --help` lists every field.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

app = typer.Typer(help="Train vision-language models on drim-data's zoom-in VQA data.", no_args_is_help=True)
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _parse(types: tuple, argv: list[str], command: str) -> tuple:
    from trl import TrlParser

    if argv and not argv[0].startswith("-"):  # a recipe file given positionally
        argv = ["--config", argv[0], *argv[1:]]
    return TrlParser(types, prog=f"drim-train {command}").parse_args_and_config(argv)


@contextmanager
def _refusing_bad_data() -> Iterator[None]:
    """A version that cannot be trained on (tampered, another schema, broken rows) ends in one line, exit 2."""
    from drim_train.data import DataError

    try:
        yield
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


@app.command(context_settings=_PASSTHROUGH)
def sft(ctx: typer.Context) -> None:
    """Cold-start SFT on the version's trajectories: [RECIPE.yaml] --data V --model M --output-dir D [TRL flags]."""
    from drim_train import sft as sft_
    from drim_train.configs import DataModelArguments, DrimSFTConfig

    args, config = _parse((DataModelArguments, DrimSFTConfig), ctx.args, "sft")
    with _refusing_bad_data():
        sft_.main(args, config)
    print(f"saved to {config.output_dir}")


@app.command(context_settings=_PASSTHROUGH)
def grpo(ctx: typer.Context) -> None:
    """Redundancy-penalised GRPO with the zoom tool: [RECIPE.yaml] --data V --model M --output-dir D [TRL flags]."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is marked experimental in TRL
    from drim_train import grpo as grpo_
    from drim_train.configs import DataModelArguments, DrimGRPOConfig

    args, config = _parse((DataModelArguments, DrimGRPOConfig), ctx.args, "grpo")
    with _refusing_bad_data():
        grpo_.main(args, config)
    print(f"saved to {config.output_dir}")


@app.command(name="eval", context_settings=_PASSTHROUGH)
def eval_(ctx: typer.Context) -> None:
    """Evaluate with the zoom tool: [RECIPE.yaml] --data V|FILE.jsonl --model M --report report.json."""
    from drim_train.configs import EvalArguments
    from drim_train.evaluate import evaluate, table

    (args,) = _parse((EvalArguments,), ctx.args, "eval")
    with _refusing_bad_data():
        report = evaluate(args)
    print(table(report))
    print(f"report written to {args.report}")


@app.command(name="tiny-model")
def tiny_model(out_dir: Path, seed: int = 0, family: str = "qwen3_vl") -> None:
    """Build a tiny random Qwen3-VL (or --family qwen2_5_vl) with its processor into OUT_DIR, offline (for tests
    and CPU benchmarks)."""
    from drim_train.tiny_model import build_tiny_model

    print(f"tiny model written to {build_tiny_model(out_dir, seed=seed, family=family)}")


if __name__ == "__main__":  # `python -m drim_train.cli`, as `python -m drim_train`
    app(prog_name="drim-train")
