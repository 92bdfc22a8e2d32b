"""Redundancy-penalised GRPO with a real multi-turn zoom tool, on TRL's GRPOTrainer.

TRL runs the tool loop: it parses each `<tool_call>`, calls `ZoomEnv.zoom_in` of the rollout's own environment,
appends the crop as a tool turn, feeds it to the next generation and to the training forward pass, and masks the
tool's tokens out of the loss. drim adds the environment, the rewards and over-turn masking.
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
from drim_train.rewards import RedundancyPenalty, accuracy_reward, cut_by_turn_limit, format_reward
from drim_train.zoom_env import env_factory


def reward_funcs(config: DrimGRPOConfig) -> list:
    """The recipe's reward names mapped to reward functions, in the order of `reward_weights`."""
    rewards = {
        "accuracy": accuracy_reward,
        "redundancy": RedundancyPenalty(config.redundancy_lambda, config.redundancy_epsilon),
        "format": format_reward,
    }
    return [rewards[name] for name in config.reward_funcs]


class ZoomGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with over-turn masking (Mini-o3): a rollout cut by the turn limit, or by the completion budget
    before it could answer, is not a wrong answer, so it carries no gradient instead of being pushed down. Its
    reward still enters its group's statistics."""

    def __init__(self, *args, mask_over_turn: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_over_turn = mask_over_turn

    def _tokenize_prompts(self, prompts: list):
        # With environments, TRL tokenises prompt by prompt and merges the image fields as Python lists; its tool loop
        # then fails (`list` has no `prod`) in a round where every call was refused and no crop came back. Tensors.
        prompt_ids, images, fields = super()._tokenize_prompts(prompts)
        for key in ("pixel_values", "image_grid_thw"):
            if key in fields and not isinstance(fields[key], torch.Tensor):
                fields[key] = torch.tensor(np.array(fields[key]))
        return prompt_ids, images, fields

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
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["zoom/over_turn_ratio"].append(sum(over_turn) / max(1, len(over_turn)))
        self._metrics[mode]["zoom/truncated_ratio"].append(sum(truncated) / max(1, len(truncated)))
        return output


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
        peft_config=lora_config(args),
    )


def main(args: DataModelArguments, config: DrimGRPOConfig) -> ZoomGRPOTrainer:
    trainer = build_trainer(args, config)
    trainer.train(resume_from_checkpoint=resume_point(config))
    save_trained(trainer, config.output_dir)
    return trainer
