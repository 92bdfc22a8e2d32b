"""Classical small-object proposals: blobs in a difference-of-Gaussians scale space, no model weights.

A blob is a patch brighter or darker than its surround, in luminance or in colour saturation (a saturated object
on grey water can have the water's luminance). The scale space is built octave by octave on 8-bit images, so the
cost is a few passes over the view whatever the sizes sought. Every local extremum in position and scale is a
candidate; its box is the extent where the response stays above half its peak (so a ship gets a ship's aspect,
not a square), and its score is its contrast against the clutter around it, as a CFAR ship detector does (an
isolated boat on water outranks one more bump in a city's texture). Extrema on or next to constant no-data areas
are dropped; non-maximum suppression then keeps the best top-K, at most a fair share per tile of the image.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

SIGMA0 = 1.6  # blur of each octave's base image, in its own pixels
LEVELS = 3  # scales per octave
SURROUND = 2  # a blob's response is G(sigma_j) - G(sigma_j+2): its surround is 2^(2/3) ~ 1.6x wider
SIDE_PER_SIGMA = 2 * math.sqrt(2)  # a disc of this diameter / sigma gives the strongest scale-normalised response
REACH = 5  # the window a box is fitted in, in sigmas each way: room for an object 3-4x longer than wide
# a blob extends where its response is at least this share of its peak: the DoG's own surround lowers the
# response inside an object's edge, so the half maximum cuts boxes short; 0.3 measured better on the bench
HALF = 0.3
CLUTTER = 8  # the surround clutter is measured over this many blob sides: wide enough to see texture as texture
SCALE_PRIOR = 0.5  # score *= sigma**SCALE_PRIOR: without it, fine texture and noise outrank whole objects
DARK_WEIGHT = 0.5  # dark blobs are more often shadows and gaps than objects
MIN_CONTRAST = 8  # grey levels of blob response; weaker ones are texture and noise
TILES = 4  # the image is cut into TILES x TILES tiles, and ...
TILE_SHARE = 2  # ... none takes more than this many times its even share of top-K while others have candidates
_SIGMAS = [SIGMA0 * 2 ** (j / LEVELS) for j in range(LEVELS + SURROUND + 2)]


def propose(rgb: np.ndarray, top_k: int, min_side: float, max_side: float, nms_iou: float = 0.3) -> np.ndarray:
    """Boxes (x1, y1, x2, y2, score) in `rgb`'s pixels, best first, with sides within [min_side, max_side]."""
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # saturation (max - min channel) at half resolution: photos carry colour at half resolution (JPEG 4:2:0)
    h, w = luma.shape
    half = cv2.resize(rgb[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    r, g, b = cv2.split(half)
    chroma = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    limit = 10 * top_k  # only the best can survive suppression
    each = 2 * top_k  # boxes fitted per scale, channel and polarity: there are a dozen or more of them
    found = [_blobs(luma, min_side, max_side, each)]
    if min(chroma.shape) >= 8:
        found.append(_blobs(chroma, min_side / 2, max_side / 2, each) * [2, 2, 2, 2, 1])
    found = np.concatenate(found)
    found = found[~_touches(found, _no_data(luma))]
    if len(found) > limit:
        found = found[np.sort(np.argpartition(-found[:, 4], limit)[:limit])]
    found = found[np.argsort(-found[:, 4], kind="stable")]
    kept = found[nms(found, nms_iou, 3 * top_k)]
    return kept[spread(kept, w, h, top_k)]


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


def spread(boxes: np.ndarray, width: int, height: int, top_k: int) -> np.ndarray:
    """Indices of the best `top_k` boxes (sorted best first) with no tile over its cap, then the best of the rest.

    One textured area (a city, a forest edge) would otherwise take every proposal; the cap keeps the others in.
    """
    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2 * TILES / max(width, 1)).astype(int), 0, TILES - 1)
    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2 * TILES / max(height, 1)).astype(int), 0, TILES - 1)
    cap = math.ceil(TILE_SHARE * top_k / TILES**2)
    counts, first, rest = np.zeros(TILES**2, int), [], []
    for i, tile in enumerate(cy * TILES + cx):
        if counts[tile] < cap:
            counts[tile] += 1
            first.append(i)
        else:
            rest.append(i)
    return np.array(sorted((first + rest[: max(top_k - len(first), 0)])[:top_k], key=lambda i: -boxes[i, 4]), int)


def _no_data(luma: np.ndarray) -> np.ndarray:
    """A mask of constant areas that reach the image's edge: no-data, padding and letterbox borders.

    Their edge with the image is a strong, long response that is no object. Only constant runs of at least
    1/64 of the shorter side count, so a dark shadow or a saturated highlight inside the picture is kept.
    """
    grad = cv2.morphologyEx(luma, cv2.MORPH_GRADIENT, None)
    flat = cv2.compare(grad, 0, cv2.CMP_EQ)
    border = np.concatenate([flat[0], flat[-1], flat[:, 0], flat[:, -1]])
    if not border.any():
        return np.zeros((0, 0), np.uint8)
    size = max(3, min(luma.shape) // 64)
    flat = cv2.morphologyEx(flat, cv2.MORPH_OPEN, np.ones((size, size), np.uint8))  # thin lines are not areas
    count, labels = cv2.connectedComponents(flat, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    if not edge.size:
        return np.zeros((0, 0), np.uint8)
    mask = np.isin(labels, edge).astype(np.uint8)
    return cv2.dilate(mask, np.ones((2 * size + 1, 2 * size + 1), np.uint8))  # the edge's blur spills over


def _touches(boxes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Whether each box contains a pixel of `mask` (an empty mask: none do), by an integral image."""
    if not mask.size or not len(boxes):
        return np.zeros(len(boxes), bool)
    integral = cv2.integral(mask)
    h, w = mask.shape
    x1 = np.clip(boxes[:, 0].astype(int), 0, w)
    y1 = np.clip(boxes[:, 1].astype(int), 0, h)
    x2 = np.clip(np.ceil(boxes[:, 2]).astype(int), 0, w)
    y2 = np.clip(np.ceil(boxes[:, 3]).astype(int), 0, h)
    return (integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]) > 0


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


def _levels(o: int, min_side: float, max_side: float) -> list[int]:
    """The levels of octave o whose blobs could be fitted to a box within the sides sought.

    A fitted box can be up to about twice the nominal side (elongated objects) or half of it, so a level is kept
    when its nominal side comes within a factor of two of the window; the fitted boxes are checked exactly later.
    Level 0 of the first octave is kept too: its blobs are the smallest the view can show.
    """
    first = 0 if o == 0 else 1
    return [j for j in range(first, LEVELS + 1) if min_side / 2 <= SIDE_PER_SIGMA * _SIGMAS[j] * 2**o <= 2 * max_side]


def _blobs(gray: np.ndarray, min_side: float, max_side: float, limit: int) -> np.ndarray:
    found = [np.zeros((0, 5))]
    octaves = _gaussians(gray, 2 * max_side / SIDE_PER_SIGMA)
    for o, blurred in enumerate(octaves):
        levels = _levels(o, min_side, max_side)
        if levels:  # blurs up to the surround of the widest level's neighbour, and no more
            stack = blurred + _wider(octaves, o, levels[-1] + SURROUND + 2 - len(blurred))
            found += [_extrema(stack, levels, o, polarity, limit) for polarity in (1, -1)]
    boxes = np.concatenate(found)
    height, width = gray.shape
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    size = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)
    return boxes[inside & (sides >= min_side) & (size <= max_side)]


def _wider(octaves: list[list[np.ndarray]], o: int, count: int) -> list[np.ndarray]:
    """Octave o's next `count` blurs past 2*SIGMA0: the next octave's brought back up (4x cheaper), else blurred on."""
    h, w = octaves[o][0].shape
    if o + 1 < len(octaves):
        return [cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR) for g in octaves[o + 1][1 : count + 1]]
    wider = [octaves[o][-1]]
    for j in range(LEVELS + 1, LEVELS + 1 + count):
        wider.append(_blur(wider[-1], (_SIGMAS[j] ** 2 - _SIGMAS[j - 1] ** 2) ** 0.5))
    return wider[1:]


def _extrema(stack: list[np.ndarray], levels: list[int], o: int, polarity: int, limit: int) -> np.ndarray:
    """Fitted boxes at the maxima, in position and scale, of the bright (polarity 1) or dark (-1) blob response."""
    pairs = {j: (stack[j], stack[j + SURROUND]) for j in range(max(levels[0] - 1, 0), levels[-1] + 2)}
    response = {j: cv2.subtract(a, b) if polarity > 0 else cv2.subtract(b, a) for j, (a, b) in pairs.items()}
    local_max = {j: cv2.dilate(r, None) for j, r in response.items()}  # 8-bit, saturating differences
    flags = np.zeros(stack[0].shape, np.uint8)  # one bit per level, so one scan finds every extremum
    for bit, j in enumerate(levels):
        peak = cv2.max(local_max[j], local_max[j + 1])
        if j - 1 in local_max:
            peak = cv2.max(peak, local_max[j - 1])
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
        if not at.any():
            continue
        px, py = x[at], y[at]
        peak = response[j][py, px].astype(np.float32)
        if len(px) > limit:  # the strongest are the only ones that can make the top-K
            best = np.argpartition(-peak, limit)[:limit]
            px, py, peak = px[best], py[best], peak[best]
        sigma = _SIGMAS[j]
        clutter = _clutter(stack[j], stack[j + SURROUND], sigma)[py, px]
        score = peak / (clutter + MIN_CONTRAST) * (sigma * 2**o) ** SCALE_PRIOR
        score *= 1.0 if polarity > 0 else DARK_WEIGHT
        x1, y1, x2, y2 = _fit(response[j], px, py, peak, math.ceil(REACH * sigma))
        found.append(np.c_[np.c_[x1, y1, x2, y2] * 2.0**o, score])
    return np.concatenate(found) if found else np.zeros((0, 5))


def _clutter(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    """The mean absolute blob response, either polarity, over CLUTTER blob sides around each pixel.

    Texture is many strong responses side by side; water, fields and roads around an object have few.
    """
    side = 2 * round(CLUTTER * SIDE_PER_SIGMA * sigma / 2) + 1
    both = cv2.absdiff(a, b)
    return cv2.blur(both, (side, side)).astype(np.float32)


def _fit(response: np.ndarray, x: np.ndarray, y: np.ndarray, peak: np.ndarray, reach: int) -> tuple[np.ndarray, ...]:
    """Each blob's box: the run of rows and of columns, through its peak, where the response is at least half it.

    Rows and columns are taken from the window's projections, so a blob's box is the bounding box of the part of
    its half-maximum region that its peak's row and column can reach; cheap, and vectorised over all blobs.
    """
    padded = cv2.copyMakeBorder(response, reach, reach, reach, reach, cv2.BORDER_CONSTANT, value=0)
    offsets = np.arange(-reach, reach + 1)
    windows = padded[(y + reach)[:, None, None] + offsets[None, :, None], (x + reach)[:, None, None] + offsets]
    above = windows >= (HALF * peak)[:, None, None]
    left, right = _run(above.any(axis=1), reach)
    top, bottom = _run(above.any(axis=2), reach)
    return x - left, y - top, x + right + 1.0, y + bottom + 1.0


def _run(profile: np.ndarray, centre: int) -> tuple[np.ndarray, np.ndarray]:
    """How far each row of `profile` stays True before and after `centre` (not counting it)."""
    edge = np.zeros((len(profile), 1), bool)
    after = np.concatenate([profile[:, centre + 1 :], edge], axis=1).argmin(axis=1)
    before = np.concatenate([profile[:, :centre][:, ::-1], edge], axis=1).argmin(axis=1)
    return before, after
