import collections
import types
import warnings

import pytest
import torch
from trl import GRPOTrainer

from drim_train import grpo, sft
from drim_train.configs import DataModelArguments, DrimGRPOConfig, DrimSFTConfig
from drim_train.data import load_split
from drim_train.models import load_model
from schemas.tool import ZoomSpec
from tests.train.helpers import parse_recipe


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before: dict, model) -> list[str]:
    return [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]


def test_sft_trains_on_the_demo_version(tiny_model, demo_version, tmp_path):
    types = (DataModelArguments, DrimSFTConfig)
    args, config = parse_recipe(
        "sft-tiny.yaml", types, data=demo_version, model=tiny_model, output_dir=tmp_path, max_steps=3, logging_steps=1
    )
    trainer = sft.build_trainer(args, config)
    before = _params(trainer.model)
    trainer.train()
    changed = _changed(before, trainer.model)
    assert any("visual" in n for n in changed), "the vision tower got no gradient: images did not reach the loss"
    assert any("language_model" in n for n in changed)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_the_tool_caller_learnt_well_formed_calls(tool_caller, demo_version):
    """The session's SFT fixture, which the GRPO tests build on, calls the tool on prompts it was not drilled on."""
    from drim_train.evaluate import load_rows
    from drim_train.models import load_processor
    from drim_train.rewards import well_formed_call
    from drim_train.rollout import rollout
    from drim_train.zoom_env import ZoomEnv

    rows, spec = load_rows(str(demo_version), split="rl")
    model, processor = load_model(str(tool_caller)).eval(), load_processor(str(tool_caller))
    rollouts = rollout(model, processor, rows, [ZoomEnv(spec) for _ in rows], max_turns=0, max_new_tokens=48)
    assert sum(well_formed_call(r.completion[0]) for r in rollouts) / len(rollouts) >= 0.75


class CountingSpec(ZoomSpec):
    """The shared zoom spec, recording every crop it actually returns."""

    crops: list = []

    def __call__(self, image, bbox_2d):
        crop, box = super().__call__(image, bbox_2d)
        CountingSpec.crops.append((image.size, box, crop.size))
        return crop, box


def test_grpo_executes_the_zoom_tool_and_trains(tool_caller, demo_version, tmp_path, monkeypatch):
    CountingSpec.crops = []
    monkeypatch.setattr(grpo, "zoom_spec", lambda manifest: CountingSpec())
    types = (DataModelArguments, DrimGRPOConfig)
    args, config = parse_recipe(
        "grpo-tiny.yaml", types, data=demo_version, model=tool_caller, output_dir=tmp_path, max_steps=2
    )
    trainer = grpo.build_trainer(args, config)
    images_per_vision_forward = []
    trainer.model.model.visual.register_forward_hook(
        lambda module, args_, kwargs, out: images_per_vision_forward.append(kwargs["grid_thw"].shape[0]),
        with_kwargs=True,
    )
    before = _params(trainer.model)
    trainer.train()

    logs = [h for h in trainer.state.log_history if "tools/call_frequency" in h]
    calls_logged = sum(h["tools/call_frequency"] for h in logs) * config.per_device_train_batch_size
    assert len(CountingSpec.crops) >= 2, "no zoom call was executed"
    assert calls_logged >= len(CountingSpec.crops)  # TRL counted them too (refused calls included)
    # every crop was cut from a full-resolution original, never from the downscaled global view the prompt shows
    rl = load_split(demo_version, "rl")
    assert {size for size, _, _ in CountingSpec.crops} <= set(zip(rl["width"], rl["height"], strict=True))
    # the crops reached the vision tower: some forward passes saw more images than there are rollouts' prompts
    assert max(images_per_vision_forward) > config.per_device_train_batch_size
    assert _changed(before, trainer.model), "GRPO changed no parameter"
    for name in ("accuracy_reward", "redundancy_penalty", "format_reward"):
        assert f"rewards/{name}/mean" in logs[0]
    assert "zoom/over_turn_ratio" in logs[0]


def test_grpo_survives_rounds_where_every_call_is_refused(tool_caller, demo_version, tmp_path, monkeypatch):
    """No crop comes back in such a round, so the loop must go on with the prompts' images alone."""
    monkeypatch.setattr(grpo, "zoom_spec", lambda manifest: ZoomSpec(min_side_px=100_000))
    types = (DataModelArguments, DrimGRPOConfig)
    args, config = parse_recipe("grpo-tiny.yaml", types, data=demo_version, model=tool_caller, output_dir=tmp_path)
    config.max_steps = 1
    trainer = grpo.build_trainer(args, config)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "tools/call_frequency" in h]
    assert logs[0]["tools/call_frequency"] > 0 and logs[0]["rewards/format_reward/mean"] == 0.0


def _fake_trainer(mask_over_turn: bool):
    trainer = object.__new__(grpo.ZoomGRPOTrainer)
    trainer.mask_over_turn = mask_over_turn
    trainer.model = types.SimpleNamespace(training=True)
    trainer.accelerator = types.SimpleNamespace(gather=lambda t: t, device="cpu")  # one process
    trainer._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    trainer.eos_token_ids, trainer._tokenizer = [9], types.SimpleNamespace(pad_token_id=0)
    return trainer


@pytest.mark.parametrize("mask", [True, False])
def test_over_turn_rollouts_carry_no_gradient(monkeypatch, mask):
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "zoom_in"}}]}
    tool = {"role": "tool", "name": "zoom_in", "content": []}
    done = {"role": "assistant", "content": "<answer>A</answer>"}
    rambling = {"role": "assistant", "content": "<think>the ship is still"}  # the completion budget ran out
    completions = [[call, tool, done], [call, tool, call], [done], [call, tool, rambling]]
    tool_mask = [[1, 1, 0, 0, 1], [1, 0, 0, 1, 1], [1, 1], [1, 0, 0, 1, 1]]
    ids = [[2, 2, 2, 2, 9], [2, 2, 2, 2, 9], [2, 9], [2, 2, 2, 2, 2]]  # 9 ends a sequence; the last was clipped
    output = ([[1]] * 4, ids, [list(m) for m in tool_mask], completions, None, {}, None, [])
    monkeypatch.setattr(GRPOTrainer, "_generate", lambda self, prompts: output)
    trainer = _fake_trainer(mask)
    result = trainer._generate([])
    if mask:
        assert result[2] == [tool_mask[0], [0] * 5, tool_mask[2], [0] * 5]
    else:
        assert result[2] == tool_mask
    assert trainer._metrics["train"]["zoom/over_turn_ratio"] == [pytest.approx(1 / 4)]
    assert trainer._metrics["train"]["zoom/truncated_ratio"] == [pytest.approx(1 / 4)]
    assert trainer._metrics["train"]["zoom/calls_per_rollout"] == [pytest.approx(3 / 4)]
    assert trainer._metrics["train"]["zoom/invalid_call_rate"] == [1.0]  # no reply held a crop


def test_trls_truncation_mask_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="mask_over_turn"):
        DrimGRPOConfig(output_dir=str(tmp_path), mask_truncated_completions=True)


def test_reward_weights_follow_the_reward_names(tmp_path):
    config = DrimGRPOConfig(output_dir=str(tmp_path), reward_funcs=["format", "accuracy"])
    assert config.reward_weights == [0.2, 1.0] and config.beta == 0.0 and config.max_tool_calling_iterations == 5
    assert [f.__name__ for f in grpo.reward_funcs(config)] == ["format_reward", "accuracy_reward"]
    config = DrimGRPOConfig(output_dir=str(tmp_path), reward_funcs=["accuracy", "tool"])
    assert config.reward_weights == [1.0, 1.5] and grpo.reward_funcs(config)[1].__name__ == "tool_reward"
    with pytest.raises(ValueError, match="unknown reward_funcs"):
        DrimGRPOConfig(output_dir=str(tmp_path), reward_funcs=["judge"])


def test_a_completion_budget_too_small_for_the_zooms_is_warned_of(tiny_model, demo_version, tmp_path):
    from drim_train.data import read_manifest, zoom_spec
    from drim_train.models import load_processor

    types_ = (DataModelArguments, DrimGRPOConfig)
    args, config = parse_recipe("grpo-tiny.yaml", types_, data=demo_version, model=tiny_model, output_dir=tmp_path)
    spec, processor = zoom_spec(read_manifest(demo_version)), load_processor(str(tiny_model))
    crop = grpo.crop_tokens(spec, processor)
    ip = processor.image_processor
    assert crop == -(-min(spec.max_output_pixels, ip.size["longest_edge"]) // (ip.patch_size * ip.merge_size) ** 2)
    needed = grpo.completion_budget(spec, processor, config.max_tool_calling_iterations)
    assert needed == config.max_tool_calling_iterations * (crop + grpo.TURN_TEXT_TOKENS) + grpo.TURN_TEXT_TOKENS
    with pytest.warns(UserWarning, match=f"cannot hold 2 zooms of up to {crop} image tokens each"):
        grpo.build_trainer(args, config)  # the tiny recipe's 256 tokens
    config.max_completion_length = needed
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        grpo.build_trainer(args, config)
