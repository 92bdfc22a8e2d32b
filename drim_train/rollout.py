"""Multi-turn zoom rollouts outside the trainer, for evaluation and benchmarks.

It follows GRPOTrainer's tool loop step for step, so an evaluated model meets exactly what it was trained on: the
prompt is rendered with the tool schema, each turn's tokens are parsed with the template's response parser, tool
calls run in the rollout's `ZoomEnv`, and the tool reply is appended as the template renders it (its crop included)
without re-tokenising what came before. At most `max_turns` rounds of calls are executed; a rollout that still
calls after that is cut by the turn limit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import ProcessorMixin
from transformers.utils import get_json_schema
from trl.chat_template_utils import add_response_schema, parse_response

from drim_train.collator import fill_images
from drim_train.families import in_pixels
from drim_train.rewards import cut_by_turn_limit
from drim_train.zoom_env import ZoomEnv
from schemas.tool import TOOL_NAME


@dataclass
class Rollout:
    completion: list[dict]  # assistant and tool messages, as TRL hands them to reward functions
    env: ZoomEnv
    generated_tokens: int

    @property
    def cut(self) -> bool:
        """Still calling when the turn limit stopped it."""
        return cut_by_turn_limit(self.completion)


_CALL = {"type": "function", "function": {"name": TOOL_NAME, "arguments": {}}}
_DUMMY = [
    {"role": "user", "content": [{"type": "text", "text": "x"}]},
    {"role": "assistant", "content": [{"type": "text", "text": ""}], "tool_calls": [_CALL]},
]


@functools.cache
def _dummy_prefix(processor: ProcessorMixin) -> tuple[int, ...]:
    prefix = processor.apply_chat_template(_DUMMY, tokenize=True, return_dict=False)[0]
    eos = processor.tokenizer.eos_token_id
    return tuple(prefix[: max(i for i, t in enumerate(prefix) if t == eos) + 1])  # the template adds "\n" after EOS


def tool_suffix_ids(processor: ProcessorMixin, tool_messages: list[dict]) -> list[int]:
    """Tokens that close an assistant turn's tool calls with their replies and open the next assistant turn."""
    prefix = list(_dummy_prefix(processor))
    full = processor.apply_chat_template(
        _DUMMY + tool_messages, tokenize=True, return_dict=False, add_generation_prompt=True
    )[0]
    if full[: len(prefix)] != prefix:
        raise ValueError("the chat template is not prefix-preserving; tool replies cannot be appended")
    return full[len(prefix) :]


def _execute(env: ZoomEnv, call: dict) -> dict:
    function = call.get("function", {})
    try:
        if function.get("name") != TOOL_NAME:
            raise ValueError(f"Tool {function.get('name')} not found.")
        result = env.zoom_in(**function.get("arguments", {}))
    except (TypeError, ValueError) as exc:  # wrong argument names or unknown tool: what TRL returns too
        result = {"error": str(exc)}
    return {
        "role": "tool",
        "name": function.get("name") or TOOL_NAME,
        "content": result if isinstance(result, list) else str(result),
    }


def _vision(processor: ProcessorMixin, images: list, seen: dict[int, dict]) -> dict:
    """The image processor's tensors for these images; each image is processed once per rollout, not every turn
    (the processor treats images independently, so per-image results concatenate to the batch's)."""
    for image in images:
        if id(image) not in seen:
            seen[id(image)] = processor.image_processor(images=[image], return_tensors="pt")
    parts = [seen[id(image)] for image in images]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]} if parts else {}


@torch.no_grad()
def _generate(
    model,
    processor: ProcessorMixin,
    ids: list[list[int]],
    images: list[list],
    max_new_tokens: int,
    temperature: float,
    seen: dict[int, dict],
) -> list[list[int]]:
    tokenizer = processor.tokenizer
    pad, image_pad = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids(processor.image_token)
    flipped = [torch.tensor(x[::-1]) for x in ids]  # left padding through flip-pad-flip
    input_ids = pad_sequence(flipped, batch_first=True, padding_value=pad).flip(1)
    mask = pad_sequence([torch.ones(len(x), dtype=torch.long) for x in ids], batch_first=True).flip(1)
    vision = _vision(processor, [img for row in images for img in row], seen)
    device = model.device
    inputs = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "mm_token_type_ids": (input_ids == image_pad).long(),
        **vision,
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)[:, input_ids.shape[1] :].cpu()
    eos = set(model.generation_config.eos_token_id or []) | {tokenizer.eos_token_id}
    new = []
    for row in out.tolist():
        end = next((i for i, t in enumerate(row) if t in eos), len(row) - 1)
        new.append(row[: end + 1])
    return new


def rollout(
    model,
    processor: ProcessorMixin,
    rows: list[dict],
    envs: list[ZoomEnv],
    max_turns: int = 5,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> list[Rollout]:
    """Roll out each row (`prompt`, `images` = [global view], `original_image`) with its own environment; the
    environments set the box convention (a `PixelZoomEnv` for a model grounding in input pixels)."""
    if getattr(processor.tokenizer, "response_template", None) is None:
        add_response_schema(processor)
    tools = [get_json_schema(type(envs[0]).zoom_in)] if envs else []  # as GRPOTrainer renders the environment's
    frame = getattr(envs[0], "frame", None) if envs else None
    ids, images, completions, generated = [], [], [], [0] * len(rows)
    for row, env in zip(rows, envs, strict=True):
        env.reset(**row)
        prompt = fill_images(in_pixels(row["prompt"], frame, None) if frame else row["prompt"], row["images"])
        ids.append(
            processor.apply_chat_template(
                [prompt], tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"][0]
        )
        images.append(list(row["images"]))
        completions.append([])
    seen: dict[int, dict] = {}  # processed images by id; `images` keeps every one alive, so ids stay unique
    active = list(range(len(rows)))
    for turn in range(max_turns + 1):
        if not active:
            break
        new = _generate(
            model, processor, [ids[i] for i in active], [images[i] for i in active], max_new_tokens, temperature, seen
        )
        still = []
        for i, new_ids in zip(active, new, strict=True):
            message = parse_response(processor.tokenizer, new_ids, prefix=ids[i], tools=tools)
            completions[i].append(message)
            ids[i] = ids[i] + new_ids
            generated[i] += len(new_ids)
            if not message.get("tool_calls"):
                continue
            if turn == max_turns:
                continue
            replies = [_execute(envs[i], call) for call in message["tool_calls"]]
            completions[i].extend(replies)
            images[i] += [
                b["image"]
                for r in replies
                if isinstance(r["content"], list)
                for b in r["content"]
                if b["type"] == "image"
            ]
            ids[i] = ids[i] + tool_suffix_ids(processor, replies)
            still.append(i)
        active = still
    return [Rollout(c, e, g) for c, e, g in zip(completions, envs, generated, strict=True)]
