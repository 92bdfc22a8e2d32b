"""The one colour list: names a person would use, placed in CIELAB so that "nearest" means "looks closest".

Colours are named by the nearest palette entry in Lab, and the plausible confusions of a colour (the distractors a
multiple-choice question offers, the neighbours a solver may mistake it for) are its nearest other entries.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "silver": (190, 190, 195),
    "gray": (125, 125, 128),
    "black": (25, 25, 28),
    "red": (200, 35, 35),
    "maroon": (120, 25, 35),
    "orange": (240, 130, 35),
    "yellow": (235, 215, 50),
    "beige": (225, 205, 165),
    "tan": (195, 160, 115),
    "brown": (115, 75, 45),
    "olive": (120, 120, 40),
    "green": (50, 145, 60),
    "teal": (25, 125, 125),
    "cyan": (70, 200, 215),
    "blue": (45, 85, 200),
    "navy": (25, 35, 95),
    "purple": (120, 55, 150),
    "pink": (235, 150, 185),
}
NAMES = tuple(PALETTE)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """N x 3 uint8 sRGB -> N x 3 float32 CIELAB (L in 0..100)."""
    pixels = np.asarray(rgb, np.uint8).reshape(-1, 1, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB).reshape(-1, 3)


@cache
def _palette_lab() -> np.ndarray:
    return to_lab(np.array(list(PALETTE.values()), np.uint8))


def nearest_names(pixels: np.ndarray) -> np.ndarray:
    """The palette index of each pixel (N x 3 uint8 RGB)."""
    lab = to_lab(pixels)
    distances = ((lab[:, None, :] - _palette_lab()[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def colour_name(pixels: np.ndarray) -> tuple[str, float]:
    """The dominant palette colour of some pixels and the share of them it names."""
    flat = np.asarray(pixels, np.uint8).reshape(-1, 3)
    if not len(flat):
        raise ValueError("no pixels to name")
    counts = np.bincount(nearest_names(flat), minlength=len(NAMES))
    best = int(counts.argmax())
    return NAMES[best], float(counts[best] / len(flat))


@cache
def confusions(name: str) -> list[str]:
    """The other palette names, perceptually nearest first: what this colour is most easily mistaken for."""
    lab = _palette_lab()
    i = NAMES.index(name)
    order = np.argsort(((lab - lab[i]) ** 2).sum(-1))
    return [NAMES[j] for j in order if j != i]


def object_pixels(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The object's own pixels inside its box: those unlike the colours along the box's edge (its surround).

    Falls back to the central half of the box when too few pixels stand out, e.g. an object that fills its box.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    patch = np.asarray(image)[y1:y2, x1:x2, :3]
    h, w = patch.shape[:2]
    if h < 3 or w < 3:
        return patch.reshape(-1, 3)
    lab = to_lab(patch).reshape(h, w, 3)
    edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    surround = np.median(edge, axis=0)
    spread = np.median(np.linalg.norm(edge - surround, axis=1))
    distance = np.linalg.norm(lab - surround, axis=2)
    mask = distance > max(12.0, 2.5 * spread)
    if mask.sum() < 0.1 * h * w:
        return patch[h // 4 : h - h // 4, w // 4 : w - w // 4].reshape(-1, 3)
    return patch[mask]
