"""Multi-GPU launch configs, vLLM refusals, the zoom statistics a run logs, and two ranks on CPU (gloo)."""

import importlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import transformers
from accelerate.commands.config.config_args import load_config_from_file

from drim_train import grpo
from drim_train.configs import DataModelArguments, DrimGRPOConfig, DrimSFTConfig
from tests.train.helpers import RECIPES, direct_row, parse_recipe, sft_row, write_version
from tests.train.scripted import MAX_TURNS, PENALTY, ScriptedTrainer

ACCELERATE = RECIPES / "accelerate"
FAMILIES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}


def test_accelerate_configs_launch_ddp_zero3_and_fsdp2():
    assert load_config_from_file(str(ACCELERATE / "ddp.yaml")).distributed_type == "MULTI_GPU"
    zero3 = load_config_from_file(str(ACCELERATE / "zero3.yaml"))
    assert zero3.distributed_type == "DEEPSPEED" and zero3.deepspeed_config["zero_stage"] == 3
    for family, model in FAMILIES.items():
        fsdp = load_config_from_file(str(ACCELERATE / f"fsdp2-{family}.yaml"))
        assert fsdp.distributed_type == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
        wrapped = fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
        # the classes accelerate looks up by name are the model's own unsplittable blocks
        assert sorted(wrapped) == sorted(getattr(transformers, model)._no_split_modules)
        modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        assert all(isinstance(getattr(modeling, name), type) for name in wrapped)


@pytest.mark.parametrize(
    ("recipe", "types"), [("sft-8gpu.yaml", (DataModelArguments, DrimSFTConfig)), ("grpo-8gpu.yaml", None)]
)
def test_the_8_gpu_recipes_parse(recipe, types, tmp_path):
    types = types or (DataModelArguments, DrimGRPOConfig)
    _, config = parse_recipe(recipe, types, data="d", model="m", output_dir=tmp_path, bf16="false")
    assert config.report_to == ["tensorboard"] and config.gradient_checkpointing


@pytest.mark.parametrize(
    ("flags", "match"), [({"vllm_mode": "server"}, "vllm_mode server"), ({"vllm_tensor_parallel_size": 2}, "> 1")]
)
def test_vllm_modes_that_would_mix_ranks_rollouts_are_refused(flags, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        grpo._refuse_uneven_vllm(DrimGRPOConfig(output_dir=str(tmp_path), **flags))
    grpo._refuse_uneven_vllm(DrimGRPOConfig(output_dir=str(tmp_path)))  # colocated, one GPU per rank


def _scalars(logdir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in logdir.rglob("events.out.tfevents*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_zoom_statistics_are_logged_to_tensorboard(tiny_model, synthetic, tmp_path, monkeypatch):
    """Four rollouts, two scripted to zoom: each of those makes 4 calls (a redundant pair of boxes, a refused box,
    a call that fails) and is cut by the turn limit; the other two answer at once."""
    monkeypatch.setattr(grpo, "ZoomGRPOTrainer", ScriptedTrainer)
    args, config = parse_recipe(
        "grpo-tiny.yaml",
        (DataModelArguments, DrimGRPOConfig),
        data=synthetic,
        model=tiny_model,
        output_dir=tmp_path,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_tool_calling_iterations=MAX_TURNS,
        max_completion_length=4096,
        report_to="tensorboard",
    )
    trainer = grpo.build_trainer(args, config)
    trainer.generation_config.max_new_tokens = 2  # the script writes the tokens
    trainer.train()
    scalars = _scalars(tmp_path)
    assert scalars["train/zoom/calls_per_rollout"] == [2 * 4 / 4]
    assert scalars["train/zoom/invalid_call_rate"] == [4 / 8]  # refused and failed calls alike
    assert scalars["train/tools/failure_frequency"] == [2 / 8]  # TRL counts only the calls that raised
    assert scalars["train/zoom/penalised_ratio"] == [2 / 4]
    assert scalars["train/rewards/redundancy_penalty/mean"] == [pytest.approx(PENALTY / 2)]
    assert scalars["train/zoom/over_turn_ratio"] == [2 / 4]
    assert scalars["train/zoom/truncated_ratio"] == [0.0]


def _two_ranks(stage: str, data: Path, model: Path, out: Path, *extra: str) -> list[dict]:
    """The stage on two CPU processes (gloo); a hang fails on the timeout instead of blocking."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__).with_name("distributed_run.py")),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, stage, str(data), str(model), str(out), *extra],
        env=env,
        timeout=240,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow  # about 20 s of launching and 2 steps on 2 processes
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sync", ["false", "true"])
def test_two_ranks_zooming_unevenly_run_grpo_without_hanging(tiny_model, synthetic, tmp_path, sync):
    """Rank 0's rollouts zoom every turn until the limit, rank 1's answer at once. Under DDP each rank generates as
    often as its rollouts need; with `sync_tool_rounds` (the default under ZeRO-3 and FSDP) rank 1 replays its
    generation until rank 0 is done. Either way rank 0 logs the statistics of both ranks' rollouts."""
    ranks = _two_ranks("grpo", synthetic, tiny_model, tmp_path, sync)
    per_step = 1 + MAX_TURNS  # the first turn and one generation per round of calls
    assert [r["generations"] for r in ranks] == ([2 * per_step] * 2 if sync == "true" else [2 * per_step, 2])
    for rank in ranks:
        logs = [h for h in rank["logs"] if "zoom/calls_per_rollout" in h]
        assert len(logs) == 2
        for log in logs:  # two rollouts of four zoom, as in the single-process test
            assert log["zoom/calls_per_rollout"] == 2.0 and log["zoom/invalid_call_rate"] == 0.5
            assert log["zoom/penalised_ratio"] == 0.5 and log["zoom/over_turn_ratio"] == 0.5
            assert log["rewards/redundancy_penalty/mean"] == pytest.approx(PENALTY / 2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_with_different_tool_turns_run_sft_without_hanging(tiny_model, tmp_path):
    mixed = write_version(tmp_path, n_sft=8, n_rl=2, make_sft=lambda i: sft_row(i) if i % 2 else direct_row(i))
    ranks = _two_ranks("sft", mixed, tiny_model, tmp_path / "run")
    assert any(a != b for a, b in zip(*(r["tool_turns"] for r in ranks), strict=True))  # one rank zoomed, one not
    assert all(any("train_loss" in h for h in r["logs"]) for r in ranks)
