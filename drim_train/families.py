"""The model families drim trains, told apart by the checkpoint's `model_type`, and how each writes a zoom box.

Both families call the tool in the same `<tool_call>{"name": ..., "arguments": ...}</tool_call>` JSON convention and
get the crop back in the next user turn. They differ in how a box is written. Qwen3-VL grounds on a 0..1000 grid
over the image, which is how rows store every call, so its calls are rendered as stored. Qwen2.5-VL grounds in
absolute pixels of its input, the whole image after its processor's `smart_resize`, so its calls are rendered in
that frame from the stored grid boxes, and its zoom environment maps them back onto the grid before the shared
spec resolves them on the original image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from schemas.tool import GRID, GRID_ARG, GRID_BOX, PIXEL_ARG, PIXEL_BOX

TEMPLATES = Path(__file__).parent / "chat_templates"


@dataclass(frozen=True)
class PixelFrame:
    """Pixels of the whole image as the processor resizes it: sides multiples of `factor`, area within
    [min_pixels, max_pixels]. A box in this frame is what a model grounding in input pixels writes."""

    factor: int
    min_pixels: int
    max_pixels: int

    @classmethod
    def of(cls, image_processor) -> PixelFrame:
        size = image_processor.size
        return cls(
            image_processor.patch_size * image_processor.merge_size,
            size.get("shortest_edge") or size["min_pixels"],
            size.get("longest_edge") or size["max_pixels"],
        )

    def size(self, view_size: Sequence[int]) -> tuple[int, int]:
        """(width, height) the model sees an image of `view_size` (width, height) at."""
        height, width = smart_resize(view_size[1], view_size[0], self.factor, self.min_pixels, self.max_pixels)
        return width, height

    def from_grid(self, grid_box: Sequence[float], view_size: Sequence[int]) -> list[int]:
        w, h = self.size(view_size)
        return [round(v / GRID * s) for v, s in zip(grid_box, (w, h, w, h), strict=True)]

    def to_grid(self, box: object, view_size: Sequence[int]) -> object:
        """The box on the grid; anything that is not four numbers is returned as is, for the spec to refuse."""
        if isinstance(box, str) or not isinstance(box, Sequence) or len(box) != 4:
            return box
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            return box
        if not all(math.isfinite(v) for v in values):
            return box
        w, h = self.size(view_size)
        return [v / s * GRID for v, s in zip(values, (w, h, w, h), strict=True)]


@dataclass(frozen=True)
class Family:
    model_type: str
    box_arg: str  # how the tool schema says `bbox_2d` is written
    box: str  # how the system prompt says it
    pixel_boxes: bool = False
    chat_template: str | None = None  # drim's tool-calling template; None: the checkpoint's own renders tools

    def frame(self, processor) -> PixelFrame | None:
        return PixelFrame.of(processor.image_processor) if self.pixel_boxes else None


QWEN3_VL = Family("qwen3_vl", GRID_ARG, GRID_BOX)
QWEN2_5_VL = Family(
    "qwen2_5_vl", PIXEL_ARG, PIXEL_BOX, True, (TEMPLATES / "qwen2_5_vl_tools.jinja").read_text(encoding="utf-8")
)
FAMILIES = {f.model_type: f for f in (QWEN3_VL, QWEN2_5_VL)}


def family_of(model_type: str) -> Family:
    """The checkpoint's family; other VLMs are treated like Qwen3-VL (their own template, grid boxes)."""
    return FAMILIES.get(model_type, QWEN3_VL)


def _shown(box: Sequence[float]) -> str:
    return str([round(v) for v in box])  # as `observation_text` shows a box


def in_pixels(messages: list[dict], frame: PixelFrame, view_size: Sequence[int] | None) -> list[dict]:
    """Stored messages as a pixel-grounding model writes and reads them: the system prompt's box convention, every
    call's `bbox_2d` in the frame of the global view (of `view_size`), and the box each tool reply repeats."""
    out, shown = [], []  # shown: (grid, pixels) of each call, for the tool reply that follows it
    for message in messages:
        message = dict(message)
        if message["role"] == "system":
            message["content"] = [_replace(b, GRID_BOX, PIXEL_BOX) for b in message["content"]]
        if message.get("tool_calls"):
            converted = [_call_in_pixels(call, frame, view_size) for call in message["tool_calls"]]
            message["tool_calls"] = [call for call, _ in converted]
            shown += [boxes for _, boxes in converted]
        if message["role"] == "tool" and shown:
            grid, pixels = shown.pop(0)
            message["content"] = [_replace(b, grid, pixels) for b in message["content"]]
        out.append(message)
    return out


def _call_in_pixels(call: dict, frame: PixelFrame, view_size: Sequence[int]) -> tuple[dict, tuple[str, str]]:
    arguments = json.loads(call["function"]["arguments"])
    grid = arguments["bbox_2d"]
    arguments["bbox_2d"] = frame.from_grid(grid, view_size)
    converted = {**call, "function": {**call["function"], "arguments": json.dumps(arguments)}}
    return converted, (_shown(grid), _shown(arguments["bbox_2d"]))


def _replace(block: dict, old: str, new: str) -> dict:
    if block.get("type") != "text" or not block.get("text"):
        return block
    return {**block, "text": block["text"].replace(old, new, 1)}
