"""The one colour list: names a person would use, placed in CIELAB so that "nearest" means "looks closest".

A pixel is named by the nearest palette entry in CIELAB, hue first: real objects in daylight (a red hull seen from
orbit, a patinated bronze) are far less saturated than the named ideal and should still be named by their hue, not
collapse into grey, tan or beige; a pixel with almost no chroma gets a grey by its lightness. An object is named by
its hued pixels when enough of it has a hue (a red hull with a white stern is red), and its pixels are first seen
under neutral light (the scene's white made grey), as a person adapted to the scene sees them. The plausible
confusions of a colour (the distractors a multiple-choice question avoids or offers, the neighbours a solver may
mistake it for) are its nearest other entries under the same distance, taken both ways.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (235, 235, 230),
    "silver": (160, 160, 165),
    "gray": (125, 125, 125),
    "black": (30, 30, 32),
    "red": (200, 40, 40),
    "maroon": (125, 20, 25),
    "orange": (240, 130, 35),
    "yellow": (235, 215, 50),
    "beige": (225, 210, 175),
    "tan": (200, 165, 120),
    "brown": (115, 75, 45),
    "olive": (120, 120, 40),
    "green": (50, 145, 60),
    "teal": (25, 125, 125),
    "cyan": (70, 200, 215),
    "blue": (45, 85, 200),
    "navy": (20, 30, 110),
    "purple": (120, 55, 150),
    "pink": (235, 150, 185),
}
NAMES = tuple(PALETTE)
ACHROMATIC = ("white", "silver", "gray", "black")
CHROMA_MIN = 8.0  # Lab chroma below which a pixel has no hue a person would name
CHROMATIC_SHARE = 0.3  # an object with at least this share of hued pixels is named by its hue
HUE_WEIGHT = 0.8  # naming distance per degree of hue
WHITE_SAMPLE = 20_000  # pixels sampled to estimate a scene's white


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """N x 3 uint8 sRGB -> N x 3 float32 CIELAB (L in 0..100)."""
    pixels = np.asarray(rgb, np.uint8).reshape(-1, 1, 3).astype(np.float32) / 255.0
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB).reshape(-1, 3)


@cache
def _palette_lab() -> np.ndarray:
    return to_lab(np.array(list(PALETTE.values()), np.uint8))


def _lch(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return lab[..., 0], np.hypot(lab[..., 1], lab[..., 2]), np.degrees(np.arctan2(lab[..., 2], lab[..., 1]))


def naming_distance(lab: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """How unlike each of N Lab colours is to each of M palette entries (N x M), for naming: hue counts most,
    chroma is compressed as in CIE94 (a muted hull is still red) and lightness counts half (a pale patina is still
    green), as textile CIE94 weighs it. Between a hued and a hueless colour, chroma counts one and a half times: a
    hue against none is a difference of kind."""
    l1, c1, h1 = (v[None, :] for v in _lch(reference))
    l2, c2, h2 = (v[:, None] for v in _lch(lab))
    hued = (c1 >= CHROMA_MIN) & (c2 >= CHROMA_MIN)
    d_hue = np.where(hued, HUE_WEIGHT * np.abs((h2 - h1 + 180.0) % 360.0 - 180.0), 0.0)
    d_chroma = np.where(hued, (c2 - c1) / (1 + 0.045 * c1), 1.5 * (c2 - c1))
    return np.sqrt((0.5 * (l2 - l1)) ** 2 + d_chroma**2 + d_hue**2)


def nearest_names(pixels: np.ndarray) -> np.ndarray:
    """The palette index of each pixel (N x 3 uint8 RGB): the nearest achromatic entry when the pixel has no hue
    to speak of, else the nearest chromatic one."""
    lab = to_lab(pixels)
    d = naming_distance(lab, _palette_lab())
    achromatic = np.array([n in ACHROMATIC for n in NAMES])
    hued = _lch(lab)[1] >= CHROMA_MIN
    d[np.ix_(hued, achromatic)] = np.inf
    d[np.ix_(~hued, ~achromatic)] = np.inf
    return d.argmin(1)


def colour_name(pixels: np.ndarray) -> tuple[str, float]:
    """The dominant palette colour of some pixels and the share of them it names.

    When at least `CHROMATIC_SHARE` of the pixels have a hue, the name is the commonest hue: shadows and highlights
    on a coloured object are grey, not its colour."""
    flat = np.asarray(pixels, np.uint8).reshape(-1, 3)
    if not len(flat):
        raise ValueError("no pixels to name")
    ids = nearest_names(flat)
    counts = np.bincount(ids, minlength=len(NAMES))
    hued = np.array([n not in ACHROMATIC for n in NAMES])
    if counts[hued].sum() >= CHROMATIC_SHARE * len(flat):
        counts = np.where(hued, counts, 0)
    best = int(counts.argmax())
    return NAMES[best], float(counts[best] / len(flat))


@cache
def confusions(name: str) -> list[str]:
    """The other palette names, perceptually nearest first: what this colour is most easily mistaken for."""
    lab = _palette_lab()
    i = NAMES.index(name)
    distance = (naming_distance(lab[i][None], lab)[0] + naming_distance(lab, lab[i][None])[:, 0]) / 2
    order = np.argsort(distance, kind="stable")
    return [NAMES[j] for j in order if NAMES[j] != name]


def scene_white(image: np.ndarray) -> np.ndarray:
    """The scene's white (float RGB): the mean of its brightest pixels, sampled on a sparse grid so that an
    8-megapixel photo costs a few thousand pixels."""
    rgb = np.asarray(image)[..., :3]
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / WHITE_SAMPLE)))
    sample = rgb[::step, ::step].reshape(-1, 3).astype(np.float32)
    luma = sample @ np.array([0.299, 0.587, 0.114], np.float32)
    return sample[luma >= np.percentile(luma, 99)].mean(0)


def adapt(pixels: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Pixels as seen under neutral light (von Kries): each channel scaled so that the scene's white is grey,
    within +-25%, and only when that white is bright and nearly neutral already (a crop of a red object is not
    turned grey)."""
    white = np.asarray(white, np.float32)
    white_lab = to_lab(np.clip(white, 0, 255).astype(np.uint8)[None])[0]
    if white_lab[0] < 60 or np.hypot(white_lab[1], white_lab[2]) > 15:
        return pixels
    gains = np.clip(white.mean() / np.maximum(white, 1.0), 0.8, 1.25)
    return np.clip(pixels.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def object_pixels(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The object's own pixels inside its box (N x 3 RGB), told apart from its surround by their Lab distance from
    the colours along the box's edge: those at least halfway to the most distinct ones, so that pixels blended with
    the surround at the object's outline (most of a small object's pixels) do not dilute its colour.

    Falls back to the central half of the box when too few pixels stand out, e.g. an object that fills its box.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    patch = np.asarray(image)[max(0, y1) : y2, max(0, x1) : x2, :3]
    h, w = patch.shape[:2]
    if h < 3 or w < 3:
        return patch.reshape(-1, 3)
    lab = to_lab(patch).reshape(h, w, 3)
    edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    surround = np.median(edge, axis=0)
    spread = np.median(np.linalg.norm(edge - surround, axis=1))
    distance = np.linalg.norm(lab - surround, axis=2)
    distinct = np.percentile(distance, 95)
    mask = distance > max(12.0, 2.5 * spread, 0.5 * distinct)
    if mask.sum() < 0.05 * h * w or mask.sum() < 4:
        own = patch[h // 4 : h - h // 4, w // 4 : w - w // 4].reshape(-1, 3)
    else:
        own = patch[mask]
    return adapt(own, scene_white(image))
