"""Classical small-object proposals: blobs in a difference-of-Gaussians scale space, no model weights.

A blob is a patch brighter or darker than its surround, in luminance or in colour saturation (a saturated object
on grey water can have the water's luminance). The scale space is an image pyramid, every level blurred the same
way in its own pixels, so the cost is about one pass over the view whatever the sizes sought; an octave between
levels is enough, as every box is fitted to its blob's extent rather than taken from its level's scale.
Every local maximum of a level's response is a candidate; its box is the extent where the response stays above a
share of its peak, so a ship gets a ship's aspect, not a square. No box is dropped for its size against its
level's: a coarser level's blob still gets its object's extent, and suppression keeps the better scored of the
boxes the levels find for one object. The score is how far the box's mean stands from the ring around it in units
of that ring's spread, as a CFAR ship detector does (an isolated boat on water outranks one more bump in a city's
texture), times the square root of the box's side (a larger box's mean is steadier). Boxes on or next to constant
no-data areas are dropped; non-maximum suppression across scales and channels then keeps the best top-K, at most a
fair share per tile of the image."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

SIGMA0 = 1.6  # blur of every pyramid level, in its own pixels
SURROUND = 1.6  # a blob's response is G(sigma) - G(1.6 sigma), the usual approximation of a Laplacian
SIDE_PER_SIGMA = 2 * math.sqrt(2)  # a disc of this diameter / sigma gives the strongest scale-normalised response
REACH = 5  # the window a box is fitted in, in sigmas each way: room for an object 3-4x longer than wide
# a blob extends where its response is at least this share of its peak: the DoG's own surround lowers the
# response inside an object's edge, so the half maximum cuts boxes short
HALF = 0.3
EACH = 10  # x top_k: the strongest maxima per level and polarity that get a box (texture has thousands)
LIMIT = 10  # x top_k: the best boxes of all levels and channels that go on to suppression
RING = 2.0  # the surround a box is compared with: the box grown this many times each side, less the box
NOISE = 4.0  # grey levels added to the surround's spread, so a flat surround does not make any step infinite
DARK_WEIGHT = 0.5  # dark blobs are more often shadows and gaps than objects
MIN_CONTRAST = 8  # grey levels of blob response; weaker ones are texture and noise
TILES = 4  # the image is cut into TILES x TILES tiles, and ...
TILE_SHARE = 2  # ... none takes more than this many times its even share of top-K while others have candidates


def propose(rgb: np.ndarray, top_k: int, min_side: float, max_side: float, nms_iou: float = 0.3) -> np.ndarray:
    """Boxes (x1, y1, x2, y2, score) in `rgb`'s pixels, best first, with sides within [min_side, max_side]."""
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # saturation (max - min channel) at half resolution: photos carry colour at half resolution (JPEG 4:2:0)
    h, w = luma.shape
    half = cv2.resize(rgb[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    r, g, b = cv2.split(half)
    chroma = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    limit = int(LIMIT * top_k)  # only the best can survive suppression
    each = int(EACH * top_k)  # boxes fitted per scale, channel and polarity: there are a dozen or more of them
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
    size = max(3, min(luma.shape) // 64)
    flat = cv2.morphologyEx(flat, cv2.MORPH_OPEN, np.ones((size, size), np.uint8))  # thin lines are not areas
    if not (flat[0].any() or flat[-1].any() or flat[:, 0].any() or flat[:, -1].any()):
        return np.zeros((0, 0), np.uint8)
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


def _blobs(gray: np.ndarray, min_side: float, max_side: float, limit: int) -> np.ndarray:
    """Fitted boxes of bright and dark blobs at every scale whose nominal side comes within 2x of the window.

    The scales are the levels of an image pyramid, each level blurred to SIGMA0 and SURROUND x SIGMA0 in its own
    pixels: every level costs a quarter of the one before it, so the whole scale space costs about one pass over
    the view. A fitted box keeps within its window of REACH sigmas each way;
    the fitted boxes are checked against the size window exactly at the end.
    """
    found = [np.zeros((0, 5))]
    level = gray
    while min(level.shape) >= 8:
        scale = (gray.shape[1] / level.shape[1], gray.shape[0] / level.shape[0])  # view pixels per level pixel
        nominal = SIDE_PER_SIGMA * SIGMA0 * scale[0]
        if nominal > 2 * max_side:
            break
        if nominal >= min_side / 2:
            near = _blur(level, SIGMA0)
            far = _blur(near, SIGMA0 * (SURROUND**2 - 1) ** 0.5)
            found += [_extrema(near, far, polarity, limit, scale) for polarity in (1, -1)]
        level = cv2.resize(level, (level.shape[1] // 2, level.shape[0] // 2), interpolation=cv2.INTER_AREA)
    boxes = np.concatenate(found)
    height, width = gray.shape
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    size = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)
    keep = inside & (sides >= min_side) & (size <= max_side)
    boxes = boxes[keep]
    if len(boxes):  # a larger box's mean is steadier than a small one's, so its step counts a little more
        boxes[:, 4] *= _surround(gray, boxes) * np.sqrt(size[keep])
    return boxes


def _surround(gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """How far each box's mean stands from the ring around it, in units of the ring's spread (a CFAR test).

    An object on open ground differs from an even surround; a patch of texture differs little from a busy one.
    """
    depth = cv2.CV_32S if gray.size < 2**31 // 255 else cv2.CV_64F  # OpenCV sums 8-bit to int32 ten times faster
    total, squares = cv2.integral2(gray, sdepth=depth, sqdepth=cv2.CV_64F)
    h, w = gray.shape
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]

    def sums(half_w, half_h):
        x1 = np.clip(np.round(cx - half_w), 0, w).astype(int)
        x2 = np.clip(np.round(cx + half_w), 0, w).astype(int)
        y1 = np.clip(np.round(cy - half_h), 0, h).astype(int)
        y2 = np.clip(np.round(cy + half_h), 0, h).astype(int)
        area = np.maximum((x2 - x1) * (y2 - y1), 1)
        s = total[y2, x2] - total[y1, x2] - total[y2, x1] + total[y1, x1]
        q = squares[y2, x2] - squares[y1, x2] - squares[y2, x1] + squares[y1, x1]
        return s, q, area

    s_in, q_in, a_in = sums(bw / 2, bh / 2)
    s_out, q_out, a_out = sums(bw * RING / 2 + 1, bh * RING / 2 + 1)
    ring = np.maximum(a_out - a_in, 1)
    mean_ring = (s_out - s_in) / ring
    var_ring = np.maximum((q_out - q_in) / ring - mean_ring**2, 0)
    return np.abs(s_in / a_in - mean_ring) / (np.sqrt(var_ring) + NOISE)


def _extrema(near: np.ndarray, far: np.ndarray, polarity: int, limit: int, scale: tuple[float, float]) -> np.ndarray:
    """Fitted boxes, in view pixels, at the local maxima of one level's bright (polarity 1) or dark (-1) response;
    the fifth column is the weight of the polarity."""
    response = cv2.subtract(near, far) if polarity > 0 else cv2.subtract(far, near)
    peak = cv2.dilate(response, None)
    mask = cv2.bitwise_and(cv2.compare(response, peak, cv2.CMP_GE), cv2.compare(response, MIN_CONTRAST, cv2.CMP_GT))
    points = cv2.findNonZero(mask)  # (x, y) of every maximum; much faster than numpy on a sparse mask
    if points is None:
        return np.zeros((0, 5))
    x, y = points.reshape(-1, 2).T
    if len(x) > limit:  # the strongest are the only ones that can make the top-K
        best = np.argpartition(-response[y, x], limit)[:limit]
        x, y = x[best], y[best]
    x1, y1, x2, y2 = _fit(response, x, y, response[y, x], math.ceil(REACH * SIGMA0))
    weight = np.full(len(x), 1.0 if polarity > 0 else DARK_WEIGHT)
    return np.c_[np.c_[x1, y1, x2, y2] * [*scale, *scale], weight]


def _fit(response: np.ndarray, x: np.ndarray, y: np.ndarray, peak: np.ndarray, reach: int) -> tuple[np.ndarray, ...]:
    """Each blob's box: the run of rows and of columns, through its peak, where the response is at least HALF of it.

    Rows and columns are taken from the window's projections, so a blob's box is the bounding box of the part of
    its half-maximum region that its peak's row and column can reach; cheap, and vectorised over all blobs.
    """
    padded = cv2.copyMakeBorder(response, reach, reach, reach, reach, cv2.BORDER_CONSTANT, value=0)
    offsets = np.arange(-reach, reach + 1)
    windows = padded[(y + reach)[:, None, None] + offsets[None, :, None], (x + reach)[:, None, None] + offsets]
    least = np.ceil(HALF * peak).astype(windows.dtype)[:, None]  # on whole grey levels: the same test, faster
    left, right = _run(windows.max(axis=1) >= least, reach)
    top, bottom = _run(windows.max(axis=2) >= least, reach)
    return x - left, y - top, x + right + 1.0, y + bottom + 1.0


def _run(profile: np.ndarray, centre: int) -> tuple[np.ndarray, np.ndarray]:
    """How far each row of `profile` stays True before and after `centre` (not counting it)."""
    edge = np.zeros((len(profile), 1), bool)
    after = np.concatenate([profile[:, centre + 1 :], edge], axis=1).argmin(axis=1)
    before = np.concatenate([profile[:, :centre][:, ::-1], edge], axis=1).argmin(axis=1)
    return before, after
