"""The zoom-in tool as an environment: one instance per rollout, used by GRPO (TRL's `environment_factory`) and by
evaluation alike, so training and evaluation execute the very same tool.

Every call is resolved by the shared `ZoomSpec` on the ORIGINAL image (clamping, minimum side, aspect limit, output
pixel budget); boxes are therefore always in original-image coordinates, and a zoom inside an earlier zoom is simply
a smaller box on the same grid. A call the spec refuses, or one past the turn limit, gets an error observation the
model can read and recover from; it is recorded as invalid and has no box.
"""

from __future__ import annotations

from PIL import Image

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
        self.calls += 1
        if self.max_turns is not None and self.calls > self.max_turns:
            return self._refuse(f"the limit of {self.max_turns} zoom calls is reached; give the final answer now")
        try:
            crop, box = self.spec(self.image, bbox_2d)
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
