"""Boxes in a teacher's own convention (the endpoint's `boxes`), read and written in this one place.

A teacher writes a box over the image it was sent: downscaled to the endpoint's `image_max_pixels`, and showing
one region of the original (a tile for `ground`, the whole image for a trajectory). A `Frame` maps such a box to
that region's coordinates and back, and says in words how the teacher is to write one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drim_data.recipe import BoxConvention
from drim_data.teacher.replies import UNPARSEABLE, ReplyError

Region = Sequence[float]  # x0, y0, x1, y1 of what the sent image shows, in the coordinates a box is wanted in


@dataclass(frozen=True)
class Frame:
    """How one teacher's boxes over one sent image read."""

    convention: BoxConvention
    sent: tuple[int, int]  # the image's width and height as the endpoint received it

    @property
    def span(self) -> tuple[float, float]:
        """The whole sent image's width and height in the convention's units."""
        if self.convention == "pixels":
            return float(self.sent[0]), float(self.sent[1])
        full = 1.0 if self.convention == "unit" else 1000.0
        return full, full

    @property
    def order(self) -> str:
        return "[y1, x1, y2, x2]" if self.convention == "yx1000" else "[x1, y1, x2, y2]"

    @property
    def digits(self) -> int | None:
        """Decimals a box is written with: three on 0..1, else whole numbers."""
        return 3 if self.convention == "unit" else None

    def describe(self, what: str) -> str:
        """How to write a box over `what` (e.g. "this tile"), in a prompt's words."""
        if self.convention == "pixels":
            return f"{self.order} in pixels of {what} as you see it ({self.sent[0]}x{self.sent[1]} pixels)"
        if self.convention == "unit":
            return f"{self.order} as fractions from 0 to 1 of the width and height of {what}"
        return f"{self.order} on a 0-1000 grid over {what}"

    def to_region(self, box: Sequence[float], region: Region) -> tuple[float, float, float, float]:
        """The teacher's box in `region`'s coordinates, clamped to it; one empty once clamped is a ReplyError."""
        a, b, c, d = (float(v) for v in box)
        x1, y1, x2, y2 = (b, a, d, c) if self.convention == "yx1000" else (a, b, c, d)
        sw, sh = self.span
        x1, x2 = (min(max(v, 0.0), sw) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), sh) for v in (y1, y2))
        if x2 <= x1 or y2 <= y1:
            raise ReplyError(UNPARSEABLE, f"empty box {list(box)}"[:200])
        rx, ry, rx2, ry2 = region
        w, h = rx2 - rx, ry2 - ry
        return rx + x1 * w / sw, ry + y1 * h / sh, rx + x2 * w / sw, ry + y2 * h / sh

    def from_region(self, box: Sequence[float], region: Region) -> list[float]:
        """A box in `region`'s coordinates as the teacher writes it: `to_region` undone."""
        rx, ry, rx2, ry2 = region
        sw, sh = self.span
        w, h = rx2 - rx, ry2 - ry
        x1, x2 = ((v - rx) * sw / w for v in (box[0], box[2]))
        y1, y2 = ((v - ry) * sh / h for v in (box[1], box[3]))
        return [y1, x1, y2, x2] if self.convention == "yx1000" else [x1, y1, x2, y2]
