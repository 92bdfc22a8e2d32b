"""What is measured on a region's full-resolution pixels; the built-in teacher asks only about these facts."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Hue bins in degrees (OpenCV hue is 0..180, doubled here), checked in order.
_HUES = [
    (15, "red"),
    (40, "orange"),
    (70, "yellow"),
    (165, "green"),
    (200, "cyan"),
    (255, "blue"),
    (290, "purple"),
    (340, "pink"),
    (360, "red"),
]
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "brown", "white", "gray", "black")


@dataclass(frozen=True)
class Measurement:
    colour: str
    colour_share: float  # share of the region's central pixels that carry `colour`
    brightness: float  # mean luma of the central pixels, 0..255


_NAMES = np.array(sorted(COLOURS))  # colour ids in name order, so ties between counts break as np.unique would
_ID = {name: i for i, name in enumerate(_NAMES)}
_HUE_BOUNDS = np.array([b for b, _ in _HUES])
_HUE_IDS = np.array([_ID[n] for _, n in _HUES], dtype=np.uint8)


def _colour_ids(rgb: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    hue, sat, val = hsv[:, 0] * 2.0, hsv[:, 1] / 255.0, hsv[:, 2] / 255.0
    ids = _HUE_IDS[np.searchsorted(_HUE_BOUNDS, hue, side="right").clip(0, 8)]
    ids[(ids == _ID["orange"]) & (val < 0.6)] = _ID["brown"]
    grey = sat < 0.18
    ids[grey] = _ID["gray"]
    ids[grey & (val > 0.85)] = _ID["white"]
    ids[val < 0.18] = _ID["black"]
    return ids


def measure(rgb: np.ndarray) -> Measurement:
    """Dominant colour and brightness of the central half of a region (edges are mostly background)."""
    h, w = rgb.shape[:2]
    centre = np.ascontiguousarray(rgb[h // 4 : h - h // 4 or h, w // 4 : w - w // 4 or w])
    counts = np.bincount(_colour_ids(centre), minlength=len(_NAMES))
    best = int(np.argmax(counts))
    luma = cv2.cvtColor(centre, cv2.COLOR_RGB2GRAY)
    return Measurement(str(_NAMES[best]), float(counts[best] / counts.sum()), float(luma.mean()))
