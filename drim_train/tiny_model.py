"""Build a tiny, randomly initialised Qwen3-VL or Qwen2.5-VL with its processor, fully offline, for tests and CPU
benchmarks.

Each family gets the chat template a real checkpoint gets in drim: Qwen3-VL its own (TRL's byte-identical copy,
whose tool calling TRL knows), Qwen2.5-VL drim's tool-calling template (its stock one renders no tools). The
configs have the real configs' shape with small dims. The tokenizer is a byte-level BPE trained in a fraction of a
second on text shaped like our prompts, so sequences stay short; the image processor gets a small pixel budget so
every image costs at most 32 tokens.

    python -m drim_train.tiny_model OUT_DIR [qwen2_5_vl]    (or: drim-train tiny-model OUT_DIR --family qwen2_5_vl)
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from trl.chat_template_utils import qwen3_vl_chat_template

from drim_train.families import family_of
from drim_train.models import IMAGE_ONLY
from schemas.rows import QUESTION_TYPES
from schemas.tool import GRID, SYSTEM_PROMPT, ZOOM

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Non-special in Qwen too, so decoding with skip_special_tokens keeps them for the response parser.
PLAIN_ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
MAX_IMAGE_TOKENS = 32  # per image, after the 2x2 merge

_WORDS = (
    "the a of to in on at is are what which how many colour color count brighter darker left right top bottom "
    "region object sign car boat tree roof red green blue yellow white black grey orange brown purple pink "
    "option answer look closer zoom box small detail see region first then again it I will the image shows "
    "more than one two three four five six seven eight nine ten"
).split()


def _corpus(n: int = 3000, seed: int = 0) -> Iterator[str]:
    rng = random.Random(seed)
    schema = json.dumps(ZOOM.schema())
    for _ in range(n):
        yield " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 16))) + rng.choice([".", "?", ""])
        box = sorted(rng.sample(range(0, 1001), 2)) + sorted(rng.sample(range(0, 1001), 2))
        call = {"name": "zoom_in", "arguments": {"bbox_2d": [box[0], box[2], box[1], box[3]]}}
        yield f"<think>{rng.choice(_WORDS)}</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"
        yield f"<answer>{rng.choice('ABCD')}</answer> Zoomed view of {box}: {rng.randint(28, 999)}x{box[1]} px"
    for _ in range(n // 5):  # frequent enough that BPE merges whole phrases: prompts cost few tokens
        yield SYSTEM_PROMPT
        yield schema
        yield " ".join(QUESTION_TYPES) + " Answer with the option's letter. of the original image."


def build_tokenizer(vocab_size: int = 2048, chat_template: str = qwen3_vl_chat_template) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    # No word splitting, so merges span whole recurring phrases (the prompts cost few tokens); single digits, so
    # coordinates are spelled the same way wherever they occur.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # Every grid coordinate is one token, so a box is always four tokens a tiny model can count.
    numbers = [str(v) for v in range(GRID + 1)]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED + numbers])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=8192,
        padding_side="left",  # generation pads left; the SFT collator asks for right padding itself
        clean_up_tokenization_spaces=False,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_processor(family: str = "qwen3_vl"):
    """The family's image-only processor (as drim loads it) with a small pixel budget."""
    template = family_of(family).chat_template or qwen3_vl_chat_template
    pixels = MAX_IMAGE_TOKENS * 28 * 28
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": pixels})
    return IMAGE_ONLY[family](image_processor, build_tokenizer(chat_template=template), chat_template=template)


def build_model(processor, hidden: int = 128, seed: int = 0, family: str = "qwen3_vl"):
    tok, images = processor.tokenizer, processor.image_processor
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = 16
    text_config = {
        "vocab_size": len(tok),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": hidden // head_dim,
        "num_key_value_heads": max(1, hidden // head_dim // 2),
        "head_dim": head_dim,
        "max_position_embeddings": 8192,
        # the (t, h, w) sections of multimodal RoPE must add up to head_dim / 2; Qwen3-VL interleaves them
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "bos_token_id": None,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": images.patch_size,
        "spatial_merge_size": images.merge_size,
        "temporal_patch_size": images.temporal_patch_size,
        "out_hidden_size": hidden,  # must equal the text hidden size
    }
    common = {
        "tie_word_embeddings": True,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if family == "qwen2_5_vl":
        text_config["rope_parameters"]["mrope_section"] = [2, 3, 3]  # Qwen2.5-VL's [16, 24, 24] over head_dim 16
        # window attention in 112 px windows, full attention in the last block (the 7B's [7, 15, 23, 31] of 32)
        vision_config |= {"window_size": 112, "fullatt_block_indexes": [1], "hidden_act": "silu"}
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        text_config["rope_parameters"]["mrope_interleaved"] = True
        vision_config |= {
            "num_position_embeddings": 256,  # a square grid, interpolated to each image
            "deepstack_visual_indexes": [1],
        }
        config_class, model_class = Qwen3VLConfig, Qwen3VLForConditionalGeneration
    config = config_class(text_config=text_config, vision_config=vision_config, **common)
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    return model


def build_tiny_model(out_dir: str | Path, seed: int = 0, hidden: int = 128, family: str = "qwen3_vl") -> Path:
    """Write a tiny model of the family (`qwen3_vl` or `qwen2_5_vl`: weights, tokenizer, processor) to out_dir."""
    out_dir = Path(out_dir)
    processor = build_processor(family)
    model = build_model(processor, hidden=hidden, seed=seed, family=family)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    import sys

    build_tiny_model(sys.argv[1], family=sys.argv[2] if len(sys.argv) > 2 else "qwen3_vl")
