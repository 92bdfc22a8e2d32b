"""The zoom-in tool as an environment: one instance per rollout, used by GRPO (TRL's `environment_factory`) and by
evaluation alike, so training and evaluation execute the very same tool.

Every call is resolved by the shared `ZoomSpec` on the ORIGINAL image (clamping, minimum side, aspect limit, output
pixel budget); boxes are therefore always in original-image coordinates, and a zoom inside an earlier zoom is simply
a smaller box on the same grid. A call the spec refuses, or one past the turn limit, gets an error observation the
model can read and recover from; it is recorded as invalid and has no box. A model that grounds in pixels of its
input (Qwen2.5-VL) gets `PixelZoomEnv`, which reads its boxes in that frame and maps them onto the grid first.
"""

from __future__ import annotations

from functools import partial

from PIL import Image

from drim_train.families import PixelFrame
from schemas.tool import ZOOM, ZoomError, ZoomSpec, normalise, observation_text

DEFAULT_MAX_TURNS = 5  # DRIM trains with at most 5 turns


class ZoomEnv:
    """One episode of zooming into one image.

    TRL exposes every public method except `reset` as a tool, so the only public method is `zoom_in`; what the
    episode recorded is read through properties.
    """

    def __init__(self, spec: ZoomSpec = ZOOM, max_turns: int | None = DEFAULT_MAX_TURNS):
        """`max_turns` bounds the calls one episode executes (None: no bound); a turn normally makes one call, and the
        trainer's loop separately bounds the rounds of calls."""
        self.spec = spec
        self.max_turns = max_turns
        self.reset(original_image=Image.new("RGB", (1, 1)))

    def reset(self, original_image: Image.Image, **row) -> None:
        """Start an episode on the row's full-resolution original (its `images` hold the downscaled view)."""
        self.image = original_image if original_image.mode == "RGB" else original_image.convert("RGB")
        self.calls = 0
        self.boxes_px: list[tuple[int, int, int, int]] = []
        self.errors: list[str] = []

    # No return annotation: the chat template would render it, and the schema must equal `ZOOM.schema()`.
    def zoom_in(self, bbox_2d: list[float], label: str = ""):
        """Zoom into a region of the original image and return it at higher resolution.

        Args:
            bbox_2d: [x1, y1, x2, y2] on a 0-1000 grid over the original image
            label: what you expect to find in the box
        """
        return self._zoom(bbox_2d, bbox_2d)

    def _zoom(self, bbox_2d: object, grid_box: object) -> list[dict]:
        """Execute a call: `grid_box` is resolved on the original, `bbox_2d` (as the model wrote it) is shown."""
        self.calls += 1
        if self.max_turns is not None and self.calls > self.max_turns:
            return self._refuse(f"the limit of {self.max_turns} zoom calls is reached; give the final answer now")
        try:
            crop, box = self.spec(self.image, grid_box)
        except ZoomError as exc:
            return self._refuse(str(exc))
        self.boxes_px.append(box)
        return [{"type": "image", "image": crop}, {"type": "text", "text": observation_text(bbox_2d, box)}]

    def _refuse(self, reason: str) -> list[dict]:
        self.errors.append(reason)
        return [{"type": "text", "text": f"Error: {reason}. No image was returned."}]

    @property
    def boxes_norm(self) -> list[list[float]]:
        """Accepted boxes normalised to the original image (x / W, y / H)."""
        return [normalise(box, self.image.width, self.image.height) for box in self.boxes_px]

    @property
    def invalid_calls(self) -> int:
        return len(self.errors)


class PixelZoomEnv(ZoomEnv):
    """ZoomEnv for a model that writes boxes in pixels of the whole image as its processor resized it: the row's
    global view (`images[0]`) fixes that frame, and each box is mapped from it onto the grid over the original."""

    def __init__(self, frame: PixelFrame, spec: ZoomSpec = ZOOM, max_turns: int | None = DEFAULT_MAX_TURNS):
        self.frame = frame
        super().__init__(spec, max_turns)

    def reset(self, original_image: Image.Image, **row) -> None:
        super().reset(original_image, **row)
        images = row.get("images")
        self.view_size = images[0].size if images else self.image.size

    def zoom_in(self, bbox_2d: list[float], label: str = ""):
        """Zoom into a region of the original image and return it at higher resolution.

        Args:
            bbox_2d: [x1, y1, x2, y2] in pixels of the whole image as you see it
            label: what you expect to find in the box
        """
        return self._zoom(bbox_2d, self.frame.to_grid(bbox_2d, self.view_size))


def env_factory(frame: PixelFrame | None, spec: ZoomSpec = ZOOM, max_turns: int | None = DEFAULT_MAX_TURNS):
    """A callable making one fresh environment per rollout, in the model's box convention (`frame`: None for the
    grid)."""
    if frame is None:
        return partial(ZoomEnv, spec=spec, max_turns=max_turns)
    return partial(PixelZoomEnv, frame, spec=spec, max_turns=max_turns)
