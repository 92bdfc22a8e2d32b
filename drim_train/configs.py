"""Command-line and recipe arguments. Recipes under `pipelines/train/` are YAML files of these fields, read by TRL's
`TrlParser`, so any field can be overridden on the command line (`drim-train grpo recipe.yaml --learning_rate 1e-6`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from trl import GRPOConfig, SFTConfig

from drim_train.zoom_env import DEFAULT_MAX_TURNS

# format as a light shaping term (DeepEyes); tool, DeepEyes's bonus for a right answer found by zooming, at its
# 1.2 against 0.8 for accuracy; off by default, as in DRIM
REWARD_WEIGHTS = {"accuracy": 1.0, "redundancy": 1.0, "format": 0.2, "tool": 1.5}


@dataclass
class DataModelArguments:
    data: str = field(metadata={"help": "A version folder OUT/<dataset>/v<N> from drim-data, or a Hub dataset id."})
    model: str = field(metadata={"help": "A local model folder or a Hub model id (a Qwen3-VL-style VLM)."})
    data_revision: str | None = field(default=None, metadata={"help": "Hub revision of --data, e.g. the tag v1."})
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata={
            "help": "Dtype the trained (master) weights are held in. float32: bf16 compute comes from --bf16, on by "
            "default on a bf16 GPU, while the optimizer updates full-precision weights (at lr 1e-6 a bf16 weight "
            "mostly cannot move). auto: the checkpoint's own dtype."
        },
    )
    validate: bool = field(default=True, metadata={"help": "Check every row against schemas/ before training."})
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters instead of every weight; the saved model has them merged in."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Modules given adapters: by default the language model's attention projections."},
    )


def lora_config(args: DataModelArguments):
    """The LoRA adapters to train, or None for full fine-tuning."""
    if not args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def resume_point(config) -> str | bool | None:
    """What `--resume_from_checkpoint` names: a checkpoint folder, or `true`/`last` for the newest one in
    `output_dir`; the trainer then continues at its saved step, optimizer and scheduler included."""
    value = config.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    return True if str(value).lower() in ("true", "last") else str(value)


def _bf16_where_supported(config: SFTConfig | GRPOConfig) -> None:
    # TRL turns bf16 on by default and then refuses to start without a bf16 GPU; the same recipe should run on CPU.
    if config.bf16 is None and not config.fp16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        config.bf16 = False


@dataclass
class DrimSFTConfig(SFTConfig):
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate conversations to this many tokens; None keeps every image token."}
    )
    assistant_only_loss: bool = field(default=True, metadata={"help": "Compute the loss on assistant turns only."})

    def __post_init__(self):
        _bf16_where_supported(self)
        super().__post_init__()


@dataclass
class DrimGRPOConfig(GRPOConfig):
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "redundancy", "format"],
        metadata={"help": f"Rewards to add up, among {sorted(REWARD_WEIGHTS)}."},
    )
    redundancy_lambda: float = field(default=1.0, metadata={"help": "λ, the strength of the redundancy penalty."})
    redundancy_epsilon: float = field(
        default=0.5, metadata={"help": "ε, the IoU below which two zooms are not redundant."}
    )
    mask_over_turn: bool = field(
        default=True,
        metadata={
            "help": "Rollouts cut by the turn limit or the completion budget before answering carry no gradient."
        },
    )
    max_tool_calling_iterations: int | None = field(
        default=DEFAULT_MAX_TURNS, metadata={"help": "Turn limit: the most zoom rounds one rollout may make."}
    )
    sync_tool_rounds: bool | None = field(
        default=None,
        metadata={
            "help": "Keep every rank generating until all ranks' rollouts are done zooming, so generations that "
            "gather sharded weights meet. Unset: on under DeepSpeed ZeRO-3 and FSDP without vLLM, off otherwise."
        },
    )

    def __post_init__(self):
        _bf16_where_supported(self)
        if self.mask_truncated_completions:
            raise ValueError(
                "--mask_truncated_completions is TRL's, and fails on rollouts that hold crops; drim masks rollouts "
                "cut by the completion budget or the turn limit itself (--mask_over_turn, on by default)"
            )
        unknown = set(self.reward_funcs) - set(REWARD_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown reward_funcs {sorted(unknown)}; choose among {sorted(REWARD_WEIGHTS)}")
        if self.reward_weights is None:
            self.reward_weights = [REWARD_WEIGHTS[name] for name in self.reward_funcs]
        super().__post_init__()


@dataclass
class EvalArguments:
    data: str = field(
        metadata={
            "help": "A published benchmark (Hub id such as lmms-lab/vstar-bench, or a local copy of its files), a "
            "version folder (its held-out test split is evaluated, see --split) or a V*-style JSONL file."
        }
    )
    model: str = field(metadata={"help": "A local model folder or a Hub model id."})
    report: str = field(default="report.json", metadata={"help": "Where to write the JSON report."})
    benchmark: str | None = field(
        default=None,
        metadata={
            "help": "vstar, hrbench_4k, hrbench_8k, mme_realworld or mme_realworld_lite; read from --data's Hub "
            "id or columns when unset (needed for a local copy of a Hub repository, and for HR-Bench 8K on the Hub)."
        },
    )
    split: Literal["test", "rl"] = field(
        default="test",
        metadata={
            "help": "The split of a version folder to evaluate: test, the images no training split shows, or rl, "
            "prompts GRPO trains on (a check of the loop, not a score)."
        },
    )
    samples: int = field(default=1, metadata={"help": "k passes per question; k > 1 (sampled) reports Avg@k."})
    data_revision: str | None = field(default=None, metadata={"help": "Hub revision of --data."})
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": "Dtype."})
    max_turns: int = field(default=DEFAULT_MAX_TURNS, metadata={"help": "Zoom rounds allowed before answering."})
    max_new_tokens: int = field(default=256, metadata={"help": "Tokens generated per assistant turn."})
    batch_size: int = field(default=8, metadata={"help": "Rollouts generated together."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    temperature: float = field(default=0.0, metadata={"help": "0 decodes greedily (the documented protocol)."})
    redundancy_lambda: float = field(default=1.0, metadata={"help": "λ for the redundancy statistics."})
    redundancy_epsilon: float = field(default=0.5, metadata={"help": "ε for the redundancy statistics."})
    seed: int = field(default=0, metadata={"help": "Seed for sampled decoding."})
