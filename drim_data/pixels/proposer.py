"""Classical small-object proposals: blobs in a difference-of-Gaussians scale space, no model weights.

A blob is a patch brighter or darker than its surround, in luminance or in colour saturation (a saturated object
on grey water can have the water's luminance). The scale space is built octave by octave on 8-bit images, so the
cost is a few passes over the view whatever the sizes sought; every local extremum in position and scale becomes a
square box, scored by its contrast, then non-maximum suppression keeps the best top-K.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

SIGMA0 = 1.6  # blur of each octave's base image, in its own pixels
LEVELS = 3  # scales per octave
SURROUND = 2  # a blob's response is G(sigma_j) - G(sigma_j+2): its surround is 2^(2/3) ~ 1.6x wider
BOX_RADIUS = 2.5  # half-side of a proposal box, in sigmas
SCALE_PRIOR = 0.5  # score = contrast * sigma**SCALE_PRIOR: without it, fine texture outranks whole objects
DARK_WEIGHT = 0.5  # dark blobs are more often shadows and gaps than objects
MIN_CONTRAST = 8  # grey levels of blob response; weaker ones are texture and noise
_SIGMAS = [SIGMA0 * 2 ** (j / LEVELS) for j in range(LEVELS + SURROUND + 2)]


def propose(rgb: np.ndarray, top_k: int, min_side: float, max_side: float, nms_iou: float = 0.3) -> np.ndarray:
    """Boxes (x1, y1, x2, y2, score) in `rgb`'s pixels, best first, with sides within [min_side, max_side]."""
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # saturation (max - min channel) at half resolution: photos carry colour at half resolution (JPEG 4:2:0)
    h, w = luma.shape
    half = cv2.resize(rgb[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    r, g, b = cv2.split(half)
    chroma = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    found = [_blobs(luma, min_side, max_side)]
    if min(chroma.shape) >= 8:
        found.append(_blobs(chroma, min_side / 2, max_side / 2) * [2, 2, 2, 2, 1])
    found = np.concatenate(found)
    if len(found) > 10 * top_k:  # only the best can survive suppression; a partial sort finds them
        found = found[np.sort(np.argpartition(-found[:, 4], 10 * top_k)[: 10 * top_k])]
    found = found[np.argsort(-found[:, 4], kind="stable")]
    return found[nms(found, nms_iou, top_k)]


def nms(boxes: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression over boxes sorted best first, stopping at `limit`."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1) * (y2 - y1)
    order, keep = np.arange(len(boxes)), []
    while order.size and len(keep) < limit:
        i, rest = order[0], order[1:]
        keep.append(i)
        inter = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0) * np.maximum(
            np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0
        )
        order = rest[inter <= threshold * (area[i] + area[rest] - inter)]
    return np.array(keep, dtype=int)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    # a separable filter with our own kernel: half the time of cv2.GaussianBlur's bit-exact 8-bit path
    kernel = _kernel(round(sigma, 3))
    return cv2.sepFilter2D(image, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)


@functools.cache
def _kernel(sigma: float) -> np.ndarray:
    k = 2 * round(2.5 * sigma) + 1  # OpenCV's default 8-bit kernel is wider than the tails are worth
    return cv2.getGaussianKernel(k, sigma, cv2.CV_32F)


def _gaussians(gray: np.ndarray, max_sigma: float) -> list[list[np.ndarray]]:
    """Per octave, the base image blurred to SIGMA0 .. 2*SIGMA0; each octave starts from the last one, halved."""
    base = _blur(gray, (SIGMA0**2 - 0.5**2) ** 0.5)  # a camera image is taken to carry a blur of 0.5 px
    octaves: list[list[np.ndarray]] = []
    while min(base.shape) >= 8 and (not octaves or SIGMA0 * 2 ** len(octaves) <= max_sigma):
        blurred = [base]
        for j in range(1, LEVELS + 1):
            blurred.append(_blur(blurred[-1], (_SIGMAS[j] ** 2 - _SIGMAS[j - 1] ** 2) ** 0.5))
        octaves.append(blurred)
        base = np.ascontiguousarray(blurred[LEVELS][::2, ::2])
    return octaves


def _blobs(gray: np.ndarray, min_side: float, max_side: float) -> np.ndarray:
    found = [np.zeros((0, 5))]
    if 2 * BOX_RADIUS * _SIGMAS[1] > max_side:  # even the finest scale is too coarse
        return found[0]
    octaves = _gaussians(gray, max_side / (2 * BOX_RADIUS))
    for o, blurred in enumerate(octaves):
        levels = [j for j in range(1, LEVELS + 1) if min_side <= 2 * BOX_RADIUS * _SIGMAS[j] * 2**o <= max_side]
        if levels:  # blurs up to the surround of the widest level's neighbour, and no more
            stack = blurred + _wider(octaves, o, levels[-1] + SURROUND + 2 - len(blurred))
            found += [_extrema(stack, levels, o, polarity) for polarity in (1, -1)]
    boxes = np.concatenate(found)
    height, width = gray.shape
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)
    return boxes[inside]


def _wider(octaves: list[list[np.ndarray]], o: int, count: int) -> list[np.ndarray]:
    """Octave o's next `count` blurs past 2*SIGMA0: the next octave's brought back up (4x cheaper), else blurred on."""
    h, w = octaves[o][0].shape
    if o + 1 < len(octaves):
        return [cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR) for g in octaves[o + 1][1 : count + 1]]
    wider = [octaves[o][-1]]
    for j in range(LEVELS + 1, LEVELS + 1 + count):
        wider.append(_blur(wider[-1], (_SIGMAS[j] ** 2 - _SIGMAS[j - 1] ** 2) ** 0.5))
    return wider[1:]


def _extrema(stack: list[np.ndarray], levels: list[int], o: int, polarity: int) -> np.ndarray:
    """Boxes at the maxima, in position and scale, of the bright (polarity 1) or dark (-1) blob response."""
    pairs = {j: (stack[j], stack[j + SURROUND]) for j in range(levels[0] - 1, levels[-1] + 2)}
    response = {j: cv2.subtract(a, b) if polarity > 0 else cv2.subtract(b, a) for j, (a, b) in pairs.items()}
    local_max = {j: cv2.dilate(r, None) for j, r in response.items()}  # 8-bit, saturating differences
    flags = np.zeros(stack[0].shape, np.uint8)  # one bit per level, so one scan finds every extremum
    for bit, j in enumerate(levels):
        peak = cv2.max(cv2.max(local_max[j - 1], local_max[j]), local_max[j + 1])
        strong = cv2.compare(response[j], MIN_CONTRAST, cv2.CMP_GT)
        mask = cv2.bitwise_and(cv2.compare(response[j], peak, cv2.CMP_GE), strong)
        cv2.bitwise_or(flags, cv2.bitwise_and(mask, 1 << bit), dst=flags)
    points = cv2.findNonZero(flags)  # (x, y) of every extremum; much faster than numpy on a sparse mask
    if points is None:
        return np.zeros((0, 5))
    x, y = points.reshape(-1, 2).T
    marks = flags[y, x]
    found = []
    for bit, j in enumerate(levels):
        at = (marks & (1 << bit)) > 0
        sigma = _SIGMAS[j] * 2**o
        half = BOX_RADIUS * sigma
        cx, cy = x[at] * 2.0**o + 0.5, y[at] * 2.0**o + 0.5
        score = response[j][y[at], x[at]] * (1.0 if polarity > 0 else DARK_WEIGHT) * sigma**SCALE_PRIOR
        found.append(np.c_[cx - half, cy - half, cx + half, cy + half, score])
    return np.concatenate(found)
