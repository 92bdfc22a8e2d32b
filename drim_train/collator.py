"""The SFT collator: multi-turn zoom conversations whose crops really reach the model.

TRL's vision collator fills image placeholders only in system, user and assistant turns, and renders no tool
schema. Ours fills every placeholder, tool turns included, from the row's `images` in order (global view, then one
crop per tool reply), and renders the same tool schema GRPO puts in its prompts, so the prompt the model is taught
on is token for token the prompt it is later rolled out from. Labels cover the assistant turns only. For a model
that grounds in pixels of its input (`frame` set: Qwen2.5-VL), the stored calls are rendered in that frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import ProcessorMixin
from trl.chat_template_utils import get_training_chat_template

from drim_train.families import PixelFrame, in_pixels
from schemas.tool import ZOOM


def fill_images(messages: list[dict], images: list) -> list[dict]:
    """Messages as chat templates take them: image placeholders carry their image, unset keys are dropped."""
    pending = iter(images)
    filled = []
    for message in messages:
        content = []
        for block in message["content"]:
            if block["type"] == "image":
                try:
                    content.append({"type": "image", "image": next(pending)})
                except StopIteration:
                    raise ValueError("more image placeholders than images in the row") from None
            else:
                content.append({"type": block["type"], "text": block["text"]})
        filled.append({k: v for k, v in {**message, "content": content}.items() if v is not None})
    if next(pending, None) is not None:
        raise ValueError("more images than image placeholders in the row")
    return filled


@dataclass
class ZoomSFTCollator:
    """Tokenises a batch of `messages` + `images` rows into model inputs and assistant-only labels."""

    processor: ProcessorMixin
    tools: list[dict] = field(default_factory=lambda: [ZOOM.schema()])
    assistant_only_loss: bool = True
    max_length: int | None = None
    frame: PixelFrame | None = None  # None: boxes on the grid, as stored

    def __post_init__(self):
        # The training variant of the template wraps assistant turns in {% generation %} markers for the mask.
        self.chat_template = get_training_chat_template(self.processor) if self.assistant_only_loss else None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        conversations = [fill_images(self._boxed(ex), ex["images"]) for ex in examples]
        batch = self.processor.apply_chat_template(
            conversations,
            tools=self.tools,
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=self.assistant_only_loss,
            processor_kwargs={
                "padding": True,
                "padding_side": "right",
                "truncation": self.max_length is not None,
                "max_length": self.max_length,
                "add_special_tokens": False,
            },
        )
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        if self.assistant_only_loss:
            labels[batch.pop("assistant_masks") == 0] = -100
        batch["labels"] = labels
        return dict(batch)

    def _boxed(self, example: dict) -> list[dict]:
        if self.frame is None:
            return example["messages"]
        return in_pixels(example["messages"], self.frame, example["images"][0].size)  # the global view's size
