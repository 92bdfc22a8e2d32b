"""The zoom-in tool, defined once: the data pipeline writes trajectories with it and the trainer executes it.

Boxes are given on Qwen3-VL's 0..1000 grid over the ORIGINAL image, so a model never needs to know the original
resolution, and every crop is taken from the original pixels (never a crop of a crop).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from PIL import Image

# the box maths live in schemas.geometry; these names stay importable from here, where the tool uses them
from schemas.geometry import GRID, grid_to_pixels, iou, normalise, pixels_to_grid  # noqa: F401

TOOL_NAME = "zoom_in"

GRID_ARG = f"[x1, y1, x2, y2] on a 0-{GRID} grid over the original image"  # Qwen3-VL's grounding convention
# Qwen2.5-VL grounds in absolute pixels of its input, the whole image as its processor resized it
PIXEL_ARG = "[x1, y1, x2, y2] in pixels of the whole image as you see it"
GRID_BOX = f"a box {GRID_ARG}"
PIXEL_BOX = f"a box {PIXEL_ARG}"


def system_prompt(box: str = GRID_BOX) -> str:
    """The instructions a model zooms by; `box` says how it writes a box (a teacher may keep its own convention)."""
    return (
        "You answer questions about high-resolution images. The image you see is downscaled, so small details may "
        f"be unreadable. Call the zoom_in tool with {box} to see that region at full resolution; you may call it "
        "several times. Think inside <think></think>, then either call the tool or give the final answer inside "
        "<answer></answer>."
    )


SYSTEM_PROMPT = system_prompt()


GLOBAL_VIEW_PIXELS = 1280 * 28 * 28  # the model sees the whole image downscaled to this many pixels


def global_view_scale(width: int, height: int, max_pixels: int = GLOBAL_VIEW_PIXELS) -> float:
    return min(1.0, math.sqrt(max_pixels / (width * height)))


def global_view_size(width: int, height: int, max_pixels: int = GLOBAL_VIEW_PIXELS) -> tuple[int, int]:
    """The size the model sees the whole image at: downscaled to its pixel budget, never upscaled."""
    scale = global_view_scale(width, height, max_pixels)
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def min_side_in_global_view(boxes: Sequence[Sequence[float]], width: int, height: int, max_pixels: int) -> float:
    """The smallest target's shorter side, in pixels of the downscaled view the model sees without zooming."""
    scale = global_view_scale(width, height, max_pixels)
    return min(min(b[2] - b[0], b[3] - b[1]) for b in boxes) * scale


def global_view(image: Image.Image, size: Sequence[int] | None = None) -> Image.Image:
    """The downscaled whole image the model starts from, at `size` (a row's `global_view_size`), else at the
    default budget's; drim-data's SFT views and the trainer's RL views are both made here, so they are the same."""
    size = tuple(int(v) for v in size) if size is not None else global_view_size(image.width, image.height)
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


class ZoomError(ValueError):
    """A zoom call the tool refuses; its message is returned to the model as the observation."""


@dataclass(frozen=True)
class ZoomSpec:
    """Limits of the zoom tool; the same values go into the dataset manifest and the trainer's environment."""

    min_side_px: int = 28  # smaller boxes carry too few pixels to be worth a turn
    max_aspect: float = 100.0  # slivers are refused, as in DeepEyes
    min_output_pixels: int = 256 * 28 * 28  # small crops are upsampled to at least this many pixels
    max_output_pixels: int = 1280 * 28 * 28  # large crops are downscaled to fit the model's budget

    def schema(self, box: str = GRID_ARG) -> dict:
        """The tool in OpenAI function-calling form, as chat templates render it; `box` says how a model writes
        `bbox_2d` (GRID_ARG or PIXEL_ARG)."""
        return {
            "type": "function",
            "function": {
                "name": TOOL_NAME,
                "description": "Zoom into a region of the original image and return it at higher resolution.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "bbox_2d": {
                            "type": "array",
                            "items": {"type": "number"},
                            "description": box,
                        },
                        "label": {"type": "string", "description": "what you expect to find in the box"},
                    },
                    "required": ["bbox_2d"],
                },
            },
        }

    def manifest(self) -> dict:
        return {
            "name": TOOL_NAME,
            "grid": GRID,
            "coordinates": "x1,y1,x2,y2 on 0..1000 over the original image",
            "limits": asdict(self),
            "schema": self.schema(),
        }

    def resolve(self, bbox_2d: object, width: int, height: int) -> tuple[int, int, int, int]:
        """Map a grid box to a clamped pixel box of the original image, or raise ZoomError saying why not."""
        if not isinstance(bbox_2d, Sequence) or isinstance(bbox_2d, str) or len(bbox_2d) != 4:
            raise ZoomError("bbox_2d must be a list of four numbers [x1, y1, x2, y2]")
        try:
            values = [float(v) for v in bbox_2d]
        except (TypeError, ValueError):
            raise ZoomError("bbox_2d must be a list of four numbers [x1, y1, x2, y2]") from None
        if not all(math.isfinite(v) for v in values):
            raise ZoomError("bbox_2d must hold finite numbers")
        box = grid_to_pixels(values, width, height)
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            raise ZoomError(f"box {list(bbox_2d)} is empty after clamping to the image")
        side = min(x2 - x1, y2 - y1)
        if side < self.min_side_px:
            raise ZoomError(f"box is {x2 - x1}x{y2 - y1} px; each side must be at least {self.min_side_px} px")
        if max(x2 - x1, y2 - y1) / side > self.max_aspect:
            raise ZoomError(f"box aspect ratio exceeds {self.max_aspect:g}")
        return box

    def crop(self, image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
        """Crop a resolved pixel box and rescale it into the output pixel range, keeping its aspect ratio."""
        region = image.crop(box)
        pixels = region.width * region.height
        scale = 1.0
        if pixels < self.min_output_pixels:
            scale = math.sqrt(self.min_output_pixels / pixels)
        elif pixels > self.max_output_pixels:
            scale = math.sqrt(self.max_output_pixels / pixels)
        if scale != 1.0:
            fit = math.ceil if scale > 1 else math.floor  # stay inside the budget on both sides
            size = (max(1, fit(region.width * scale)), max(1, fit(region.height * scale)))
            region = region.resize(size, Image.Resampling.BICUBIC)
        return region

    def __call__(self, image: Image.Image, bbox_2d: object) -> tuple[Image.Image, tuple[int, int, int, int]]:
        box = self.resolve(bbox_2d, image.width, image.height)
        return self.crop(image, box), box


def observation_text(bbox_2d: Sequence[float], box_px: Sequence[int], digits: int | None = None) -> str:
    """The text that accompanies a crop in the tool's reply (the crop itself precedes it); the box is shown with
    `digits` decimals (None: whole numbers, as on the grid)."""
    shown = [round(v, digits) for v in bbox_2d]
    return f"Zoomed view of {shown}: {box_px[2] - box_px[0]}x{box_px[3] - box_px[1]} px of the original image."


def tool_call(bbox_2d: Sequence[int], label: str | None = None) -> dict:
    """An assistant tool call in TRL's conversational form; arguments are a JSON string (Arrow-friendly)."""
    arguments = {"bbox_2d": list(bbox_2d)}
    if label:
        arguments["label"] = label
    return {"type": "function", "function": {"name": TOOL_NAME, "arguments": json.dumps(arguments)}}


ZOOM = ZoomSpec()
