"""What is measured on a region's full-resolution pixels; the built-in teacher asks only about these facts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drim_data.pixels.palette import colour_name, object_pixels


@dataclass(frozen=True)
class Measurement:
    colour: str  # a palette name
    colour_share: float  # share of the object's own pixels that carry `colour`
    brightness: float  # mean luma of the object's own pixels, 0..255


def measure(rgb: np.ndarray) -> Measurement:
    """Dominant palette colour and brightness of the object in a region (H x W x 3), measured on its own pixels as
    told apart from the region's border; N x 3 pixels are taken as the object's already."""
    rgb = np.asarray(rgb)
    own = object_pixels(rgb, (0, 0, rgb.shape[1], rgb.shape[0])) if rgb.ndim == 3 else rgb.reshape(-1, 3)
    colour, share = colour_name(own)
    luma = own.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return Measurement(colour, share, float(luma.mean()))
