"""Loading a vision-language model and its processor for training and evaluation, and saving them back.

The stock Qwen2.5-VL and Qwen3-VL processors insist on a video processor, and transformers builds video processors
only with torchvision. drim feeds images only, and torchvision is not declared: the PyPI wheel is a CUDA build that
fails to import next to a CPU torch. So drim loads these processors through image-only subclasses, which drop the
video processor from the signature `ProcessorMixin` derives its sub-processors from, and saves them under the
standard class with a video processor config, so that `AutoProcessor.from_pretrained(checkpoint)` rebuilds the
standard processor wherever torchvision is installed (it refuses, rather than returning a tokenizer, elsewhere).

A Qwen2.5-VL checkpoint gets drim's tool-calling chat template and the `<tool_call>` JSON response parser (see
`families`). Always pass the processor to TRL explicitly: a trainer that receives only a tokenizer silently treats
the model as text-only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen3VLProcessor,
)
from trl.chat_template_utils import qwen3_template

from drim_train.families import Family, family_of

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _ImageOnly:
    """A Qwen processor built without its video processor, saved as the standard class (`standard`) with the video
    processor config (`video_processor`) that class loads."""

    standard: type[ProcessorMixin]
    video_processor: str

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        saved = super().save_pretrained(save_directory, **kwargs)
        out = Path(save_directory)
        # the standard class cannot be built without torchvision, so its name is written where ours was
        for name in ("processor_config.json", "tokenizer_config.json"):
            if (out / name).exists():
                config = json.loads((out / name).read_text())
                config["processor_class"] = self.standard.__name__
                (out / name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        images = self.image_processor
        video = {
            "video_processor_type": self.video_processor,
            "patch_size": images.patch_size,
            "temporal_patch_size": images.temporal_patch_size,
            "merge_size": images.merge_size,
        }
        (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
        return saved


class ImageOnlyQwen3VLProcessor(_ImageOnly, Qwen3VLProcessor):
    standard, video_processor = Qwen3VLProcessor, "Qwen3VLVideoProcessor"


class ImageOnlyQwen2_5_VLProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    standard, video_processor = Qwen2_5_VLProcessor, "Qwen2VLVideoProcessor"


IMAGE_ONLY = {"qwen3_vl": ImageOnlyQwen3VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor}


def model_family(path: str, revision: str | None = None) -> Family:
    """The family named by the checkpoint's config (`model_type`)."""
    return family_of(AutoConfig.from_pretrained(path, revision=revision).model_type)


def for_tools(processor: ProcessorMixin, family: Family) -> ProcessorMixin:
    """The processor with the family's tool-calling template and response parser, where drim ships them."""
    if family.chat_template is not None:
        processor.chat_template = family.chat_template
        processor.tokenizer.chat_template = family.chat_template
        processor.tokenizer.response_template = qwen3_template  # the same <tool_call> JSON convention
    return processor


def load_processor(path: str, revision: str | None = None) -> ProcessorMixin:
    """The model's multimodal processor; refuses a bare tokenizer, which would make TRL drop the images."""
    family = model_family(path, revision)
    if family.model_type in IMAGE_ONLY:
        processor = IMAGE_ONLY[family.model_type].from_pretrained(path, revision=revision)
    else:
        processor = AutoProcessor.from_pretrained(path, revision=revision)
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        raise ValueError(f"{path} has no image processor; drim-train needs a vision-language model")
    return for_tools(processor, family)


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
