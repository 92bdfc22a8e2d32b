"""Loading a vision-language model and its processor for training and evaluation.

Qwen3-VL's stock processor insists on a video processor, which needs torchvision; we only ever feed images, so
Qwen3-VL checkpoints are loaded through `ImageOnlyQwen3VLProcessor`, which drops the video processor from the
signature that `ProcessorMixin` derives its sub-processors from. Always pass the processor to TRL explicitly: a
trainer that receives only a tokenizer silently treats the model as text-only.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, ProcessorMixin, Qwen3VLProcessor

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without a video processor, so it can be built without torchvision."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def load_processor(path: str, revision: str | None = None) -> ProcessorMixin:
    """The model's multimodal processor; refuses a bare tokenizer, which would make TRL drop the images."""
    config = AutoConfig.from_pretrained(path, revision=revision)
    if config.model_type == "qwen3_vl":
        processor = ImageOnlyQwen3VLProcessor.from_pretrained(path, revision=revision)
    else:
        processor = AutoProcessor.from_pretrained(path, revision=revision)
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        raise ValueError(f"{path} has no image processor; drim-train needs a vision-language model")
    return processor


def load_model(path: str, revision: str | None = None, dtype: str = "auto") -> torch.nn.Module:
    return AutoModelForImageTextToText.from_pretrained(path, revision=revision, dtype=DTYPES[dtype])


def save_trained(trainer, out: str) -> None:
    """The trained model and its processor, as a plain checkpoint the next stage loads: LoRA adapters are merged
    into the weights first."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # a peft model
        model.merge_and_unload().save_pretrained(out)
    else:
        trainer.save_model(out)
    trainer.processing_class.save_pretrained(out)
