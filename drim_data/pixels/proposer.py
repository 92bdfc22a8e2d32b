"""Classical small-object proposals: segments of a difference-of-Gaussians scale space, no model weights.

A blob is a patch brighter or darker than its surround, in luminance or in colour saturation (a saturated object
on grey water can have the water's luminance). The scale space is an image pyramid, every level blurred the same
way in its own pixels, so the cost is about one pass over the view whatever the sizes sought; an octave between
levels is enough, as every box is a segment's own extent rather than its level's scale.
A candidate is a connected area where a level's response exceeds one of a few contrast levels, boxed by its
bounding box: a ship gets a ship's aspect and its own length, a boat next to it a box of its own at the level
where they part. Segments are found at every contrast, not only around a response's local maxima, whose boxes
cut an object at a share of its peak and missed objects with a flat or double-peaked response. The score is how
far the box's mean stands from the ring around it in units of that ring's spread, as a CFAR ship detector does
(an isolated boat on water outranks one more bump in a city's texture), times the square root of the box's side
(a larger box's mean is steadier). Boxes on or next to constant no-data areas are dropped; non-maximum
suppression across scales, contrasts and channels then keeps the best top-K, at most a fair share per tile of
the image."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

SIGMA0 = 1.6  # blur of every pyramid level, in its own pixels
# a blob's response is G(sigma) - G(3.2 sigma): a wide surround keeps a whole object above its background, where
# the usual 1.6 (a Laplacian's approximation) lowers the response inside an object's edge and splits it
SURROUND = 3.2
SIDE_PER_SIGMA = 2 * math.sqrt(2)  # a disc of this diameter / sigma gives the strongest scale-normalised response
# grey levels of response a segment exceeds: weaker is noise; at the higher one touching blobs part and a strong
# blob's box sheds its blur's spill. Tracing the segments is most of proposing's time: a third mask (segments at
# half each blob's local peak) cost a third more and ranked no better, its boxes mostly these ones, nested
LEVELS = (6, 24)
LIMIT = 5  # x top_k: the best boxes of all levels and channels that go on to suppression
CONTAINED = 0.7  # a box with this share of its area inside a better one (or holding it) is the same object
RING = 2.0  # the surround a box is compared with: the box grown this many times each side, less the box
NOISE = 4.0  # grey levels added to the surround's spread, so a flat surround does not make any step infinite
DARK_WEIGHT = 0.5  # dark blobs are more often shadows and gaps than objects
TILES = 4  # the image is cut into TILES x TILES tiles, and ...
TILE_SHARE = 2  # ... none takes more than this many times its even share of top-K while others have candidates


def propose(
    rgb: np.ndarray, top_k: int, min_side: float, max_side: float, nms_iou: float = 0.3, max_size: float | None = None
) -> np.ndarray:
    """Boxes (x1, y1, x2, y2, score) in `rgb`'s pixels, best first, whose shorter side is within [min_side,
    max_side] and whose size (square root of the area) is at most `max_size` (default: `max_side`)."""
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # saturation (max - min channel) at half resolution: photos carry colour at half resolution (JPEG 4:2:0)
    h, w = luma.shape
    r, g, b = cv2.split(_halve(rgb))
    chroma = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    limit = int(LIMIT * top_k)  # only the best can survive suppression
    largest = max_side if max_size is None else max_size
    found = [_blobs(luma, min_side, max_side, largest)]
    if min(chroma.shape) >= 8:  # only more saturated than the surround: a grey object on colour shows in luma
        found.append(_blobs(chroma, min_side / 2, max_side / 2, largest / 2, (1,)) * [2, 2, 2, 2, 1])
    found = np.concatenate(found)
    found = found[~_touches(found, _no_data(luma))]
    if len(found) > limit:
        found = found[np.sort(np.argpartition(-found[:, 4], limit)[:limit])]
    found = found[np.argsort(-found[:, 4], kind="stable")]
    kept = found[nms(found, nms_iou, 3 * top_k)]
    return kept[spread(kept, w, h, top_k)]


def nms(boxes: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression over boxes sorted best first, stopping at `limit`.

    A box is suppressed by a better one it overlaps at IoU over `threshold`, or that holds CONTAINED of it or of
    which it holds as much: segments at several contrasts nest, and a box inside or around an object's better box
    would take a proposal's place and, next to it, make both fail the uniqueness rule.
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1) * (y2 - y1)
    order, keep = np.arange(len(boxes)), []
    while order.size and len(keep) < limit:
        i, rest = order[0], order[1:]
        keep.append(i)
        inter = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0) * np.maximum(
            np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0
        )
        apart = (inter <= threshold * (area[i] + area[rest] - inter)) & (
            inter <= CONTAINED * np.minimum(area[i], area[rest])
        )
        order = rest[apart]
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
    size = max(3, min(luma.shape) // 64)
    # such an area has a constant run along the edge: an image with none (almost every photo) is checked no further
    edges = (luma[:2], luma[-2:], luma[:, :2].T, luma[:, -2:].T)
    if not any(_constant_run(edge, size) for edge in edges):
        return np.zeros((0, 0), np.uint8)
    grad = cv2.morphologyEx(luma, cv2.MORPH_GRADIENT, None)
    flat = cv2.compare(grad, 0, cv2.CMP_EQ)
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


def _constant_run(edge: np.ndarray, size: int) -> bool:
    """Whether two rows of pixels (the edge and the one inside it) hold `size` equal pixels in a row, all four."""
    same = (edge[0, 1:] == edge[0, :-1]) & (edge[1, 1:] == edge[1, :-1]) & (edge[0, 1:] == edge[1, 1:])
    if not same.any():
        return False
    run = np.diff(np.flatnonzero(np.diff(np.r_[False, same, False].astype(np.int8))))[::2]
    return bool(run.max() >= size - 1)


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


def _wide_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A blur at half resolution, upsampled: a quarter of the pixels and half the taps, and a blur this wide has
    no detail finer than two pixels to lose."""
    h, w = image.shape
    return cv2.resize(_blur(_halve(image), sigma / 2), (w, h), interpolation=cv2.INTER_LINEAR)


def _halve(image: np.ndarray) -> np.ndarray:
    """Each 2x2 block averaged; an odd last row or column is left out, which keeps OpenCV on its exact-halving
    path (fifty times faster than its fractional one) and every level's pixel exactly 2^n of the view's."""
    h, w = image.shape[:2]
    return cv2.resize(image[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)


@functools.cache
def _kernel(sigma: float) -> np.ndarray:
    k = 2 * round(2.5 * sigma) + 1  # OpenCV's default 8-bit kernel is wider than the tails are worth
    return cv2.getGaussianKernel(k, sigma, cv2.CV_32F)


def _blobs(
    gray: np.ndarray, min_side: float, max_side: float, max_size: float, polarities: tuple[int, ...] = (1, -1)
) -> np.ndarray:
    """Boxes of bright (polarity 1) and dark (-1) segments at every scale whose nominal side comes within 2x of the
    window.

    The scales are the levels of an image pyramid, each level blurred to SIGMA0 and SURROUND x SIGMA0 in its own
    pixels: every level costs a quarter of the one before it, so the whole scale space costs about one pass over
    the view. A segment's box is checked against the size window exactly, whatever its level.
    """
    found = [np.zeros((0, 5))]
    level, factor = gray, 1  # view pixels per level pixel
    while min(level.shape) >= 8:
        scale = factor, factor
        nominal = SIDE_PER_SIGMA * SIGMA0 * factor
        if nominal > 2 * max_side:
            break
        if nominal >= min_side / 2:
            near = _blur(level, SIGMA0)
            far = _wide_blur(near, SIGMA0 * (SURROUND**2 - 1) ** 0.5)
            found += [_segments(near, far, polarity, scale) for polarity in polarities]
        level, factor = _halve(level), 2 * factor
    boxes = np.concatenate(found)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    size = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    keep = (sides >= min_side) & (sides <= max_side) & (size <= max_size)
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


def _segments(near: np.ndarray, far: np.ndarray, polarity: int, scale: tuple[float, float]) -> np.ndarray:
    """Boxes, in view pixels, of the connected areas where one level's bright (polarity 1) or dark (-1) response
    exceeds each of LEVELS; the fifth column is the weight of the polarity."""
    response = cv2.subtract(near, far) if polarity > 0 else cv2.subtract(far, near)
    masks = [cv2.compare(response, least, cv2.CMP_GT) for least in LEVELS]
    boxes = np.concatenate([_outlines(mask) for mask in masks]).astype(float) * [*scale, *scale]
    return np.c_[boxes, np.full(len(boxes), 1.0 if polarity > 0 else DARK_WEIGHT)]


def _outlines(mask: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) of each connected area of `mask`, from its outer contour.

    Tracing contours costs a quarter of labelling with statistics; an area inside another's hole is left out, as
    it lies within the other's box.
    """
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 4), int)
    points = np.concatenate(contours).reshape(-1, 2)
    lengths = np.fromiter(map(len, contours), int, len(contours))
    starts = np.cumsum(lengths) - lengths
    return np.c_[np.minimum.reduceat(points, starts), np.maximum.reduceat(points, starts) + 1]
