"""Redundancy-penalised GRPO with a real multi-turn zoom tool, on TRL's GRPOTrainer.

TRL runs the tool loop: it parses each `<tool_call>`, calls `ZoomEnv.zoom_in` of the rollout's own environment,
appends the crop as a tool turn, feeds it to the next generation and to the training forward pass, and masks the
tool's tokens out of the loss. drim adds the environment, the rewards, over-turn masking, the zoom statistics
and, where generation is a collective (ZeRO-3, FSDP), tool rounds kept in lockstep across ranks.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from trl import GRPOTrainer

from drim_train.configs import DataModelArguments, DrimGRPOConfig, lora_config, resume_point
from drim_train.data import load_split, read_manifest, resolve, rl_for_training, zoom_spec
from drim_train.families import in_pixels
from drim_train.models import load_model, load_processor, model_family, save_trained
from drim_train.rewards import (
    RedundancyPenalty,
    accuracy_reward,
    cut_by_turn_limit,
    format_reward,
    has_image,
    tool_reward,
)
from drim_train.zoom_env import env_factory


def reward_funcs(config: DrimGRPOConfig) -> list:
    """The recipe's reward names mapped to reward functions, in the order of `reward_weights`."""
    rewards = {
        "accuracy": accuracy_reward,
        "redundancy": RedundancyPenalty(config.redundancy_lambda, config.redundancy_epsilon),
        "format": format_reward,
        "tool": tool_reward,
    }
    return [rewards[name] for name in config.reward_funcs]


class ZoomGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with over-turn masking (Mini-o3): a rollout cut by the turn limit, or by the completion budget
    before it could answer, is not a wrong answer, so it carries no gradient instead of being pushed down. Its
    reward still enters its group's statistics.

    Each rank runs TRL's tool loop on its own rollouts, so ranks make different numbers of generation rounds. Under
    DDP that is harmless (generation runs on the unwrapped model, without collectives); under ZeRO-3 and FSDP every
    generation gathers sharded weights, so a rank whose rollouts are done keeps replaying its last generation until
    every rank is (`sync_tool_rounds`)."""

    def __init__(self, *args, mask_over_turn: bool = True, sync_tool_rounds: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_over_turn = mask_over_turn
        self.sync_tool_rounds = self.accelerator.num_processes > 1 and (
            sync_tool_rounds if sync_tool_rounds is not None else not self.use_vllm and self._sharded()
        )
        self._in_tool_loop = False
        self._last_turn: tuple = ()
        if self.use_vllm and self.accelerator.num_processes > 1:
            _refuse_uneven_vllm(self.args)

    def _sharded(self) -> bool:
        return self._dist.is_zero3 or self._dist.is_fsdp

    def _tokenize_prompts(self, prompts: list):
        # With environments, TRL tokenises prompt by prompt and merges the image fields as Python lists; its tool loop
        # then fails (`list` has no `prod`) in a round where every call was refused and no crop came back. Tensors.
        prompt_ids, images, fields = super()._tokenize_prompts(prompts)
        for key in ("pixel_values", "image_grid_thw"):
            if key in fields and not isinstance(fields[key], torch.Tensor):
                fields[key] = torch.tensor(np.array(fields[key]))
        return prompt_ids, images, fields

    def _anyone_generating(self, generating: bool) -> bool:
        flag = torch.tensor([int(generating)], device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).sum().item())

    def _generate_single_turn(self, *args, **kwargs):
        if self.sync_tool_rounds and self._in_tool_loop:
            self._anyone_generating(True)  # every round of the loop starts with one vote from every rank
        self._last_turn = (args, kwargs)
        return super()._generate_single_turn(*args, **kwargs)

    def _tool_call_loop(self, *args):
        if not self.sync_tool_rounds:
            return super()._tool_call_loop(*args)
        self._in_tool_loop = True
        try:
            output = super()._tool_call_loop(*args)
        finally:
            self._in_tool_loop = False
        while self._anyone_generating(False):  # another rank's rollouts still zoom: join its gathers, discard
            args_, kwargs = self._last_turn
            super()._generate_single_turn(*args_, **kwargs)
        return output

    def _generate(self, prompts: list):
        # TRL has no public hook between the tool loop and the loss; the tool mask is the loss mask for completions.
        output = super()._generate(prompts)
        completion_ids, tool_mask, completions = output[1], output[2], output[3]
        over_turn = [cut_by_turn_limit(c) for c in completions]
        stops = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        truncated = [bool(ids) and ids[-1] not in stops for ids in completion_ids]  # TRL's own test of a clip
        if self.mask_over_turn and tool_mask is not None:
            for i, cut in enumerate(a or b for a, b in zip(over_turn, truncated, strict=True)):
                if cut:
                    tool_mask[i] = [0] * len(tool_mask[i])
        self._log_zoom_statistics(completions, over_turn, truncated)
        return output

    def _log_zoom_statistics(self, completions: list, over_turn: list[bool], truncated: list[bool]) -> None:
        """Global shares over every rank's rollouts, so rank 0 logs the batch's, not its own."""
        replies = [[m for m in c if m.get("role") == "tool"] for c in completions]
        local = [
            len(completions),
            sum(over_turn),
            sum(truncated),
            sum(map(len, replies)),
            sum(not has_image(m) for r in replies for m in r),  # refused by the spec or failed in the call
        ]
        rollouts, over, cut, calls, invalid = (
            self.accelerator.gather(torch.tensor([local], dtype=torch.float64, device=self.accelerator.device))
            .sum(0)
            .tolist()
        )
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["zoom/over_turn_ratio"].append(over / max(1, rollouts))
        metrics["zoom/truncated_ratio"].append(cut / max(1, rollouts))
        metrics["zoom/calls_per_rollout"].append(calls / max(1, rollouts))
        metrics["zoom/invalid_call_rate"].append(invalid / calls if calls else 0.0)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered
        metrics = self._metrics["train" if self.model.training else "eval"]
        for i, func in enumerate(self.reward_funcs):
            if isinstance(func, RedundancyPenalty):  # its mean is TRL's rewards/redundancy_penalty/mean
                metrics["zoom/penalised_ratio"].append((rewards[:, i] < 0).float().mean().item())
        return rewards


def _refuse_uneven_vllm(config: DrimGRPOConfig) -> None:
    """TRL's vLLM server, and colocated vLLM split by tensor parallelism, gather every rank's prompts and hand each
    rank the slice its prompt count would take if all counts were equal; the tool loop makes them differ."""
    if config.vllm_mode == "server":
        raise ValueError(
            "--vllm_mode server cannot serve the zoom tool loop on more than one training process: TRL hands each "
            "rank a slice of the gathered batch as if all ranks had as many rollouts still zooming. Use "
            "--vllm_mode colocate, or train on one process against the server."
        )
    if config.vllm_tensor_parallel_size > 1:
        raise ValueError(
            "--vllm_tensor_parallel_size > 1 cannot serve the zoom tool loop on more than one training process: "
            "ranks in a tensor-parallel group would exchange rollouts of different counts. Use 1."
        )


TURN_TEXT_TOKENS = 128  # a turn's reasoning and its call, or the final reasoning and answer


def crop_tokens(spec, processor) -> int:
    """Image tokens the largest crop the tool returns takes: its pixels, as far as the processor keeps them, over
    the pixels one token stands for (a patch, merged with its neighbours)."""
    ip = processor.image_processor
    kept = ip.size.get("longest_edge") or ip.size.get("max_pixels") or spec.max_output_pixels
    return math.ceil(min(spec.max_output_pixels, kept) / (ip.patch_size * ip.merge_size) ** 2)


def completion_budget(spec, processor, max_turns: int) -> int:
    """Tokens a rollout needs to make every zoom the turn limit allows and still answer."""
    return max_turns * (crop_tokens(spec, processor) + TURN_TEXT_TOKENS) + TURN_TEXT_TOKENS


def build_trainer(args: DataModelArguments, config: DrimGRPOConfig) -> ZoomGRPOTrainer:
    version = resolve(args.data, args.data_revision)
    spec = zoom_spec(read_manifest(version))
    dataset = load_split(version, "rl", validate=args.validate)
    processor = load_processor(args.model, args.model_revision)
    frame = model_family(args.model, args.model_revision).frame(processor)
    if frame is not None:  # the prompt tells the model its box convention
        dataset = dataset.map(lambda prompt: {"prompt": in_pixels(prompt, frame, None)}, input_columns="prompt")
    dataset = rl_for_training(dataset)
    needed = completion_budget(spec, processor, config.max_tool_calling_iterations)
    if config.max_completion_length < needed:
        warnings.warn(
            f"max_completion_length {config.max_completion_length} cannot hold "
            f"{config.max_tool_calling_iterations} zooms of up to {crop_tokens(spec, processor)} image tokens each "
            f"and an answer; {needed} can. Rollouts it cuts short carry no gradient, so fewer rollouts train.",
            stacklevel=2,
        )
    model = load_model(args.model, args.model_revision, args.dtype)
    return ZoomGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs(config),
        args=config,
        train_dataset=dataset,
        processing_class=processor,
        environment_factory=env_factory(frame, spec, config.max_tool_calling_iterations),
        mask_over_turn=config.mask_over_turn,
        sync_tool_rounds=config.sync_tool_rounds,
        peft_config=lora_config(args),
    )


def main(args: DataModelArguments, config: DrimGRPOConfig) -> ZoomGRPOTrainer:
    trainer = build_trainer(args, config)
    trainer.train(resume_from_checkpoint=resume_point(config))
    save_trained(trainer, config.output_dir)
    return trainer
