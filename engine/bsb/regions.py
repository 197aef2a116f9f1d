"""2D region helpers: point-sampled small masks, the most interior pixel, automatic regions (match all)."""

from __future__ import annotations

import numpy as np

from engine.bsb.interfaces import Cancel, MaskChooser, PromptSegmenter
from engine.bsb.prompting import click_masks, iou
from engine.errors import BsbError

SMALL_SIDE = 256  # longest side of the point-sampled copies used for interior search and dedup


def sample_points(shape: tuple[int, int], side: int = SMALL_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a <= side x side set of pixel centres evenly spread over (H, W)."""
    H, W = shape
    f = min(1.0, side / max(H, W))
    sh, sw = max(1, round(H * f)), max(1, round(W * f))
    return ((np.arange(sh) + 0.5) * H / sh).astype(np.int64), ((np.arange(sw) + 0.5) * W / sw).astype(np.int64)


def small(mask: np.ndarray, side: int = SMALL_SIDE) -> np.ndarray:
    rows, cols = sample_points(mask.shape, side)
    return mask[np.ix_(rows, cols)]


def _erode(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] &= m[:-1]
    out[:-1] &= m[1:]
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    out[0, :] = out[-1, :] = False
    out[:, 0] = out[:, -1] = False
    return out


def interior_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(column, row) of a pixel of `mask` deepest inside it, nearest its centroid among the deepest.

    A click there is unambiguous for SAM, unlike the centroid of a non-convex region (which may be outside).
    """
    rows, cols = sample_points(mask.shape)
    m = mask[np.ix_(rows, cols)]
    if not m.any():  # thinner than the sampling step: use the full-resolution pixels
        rows, cols = np.arange(mask.shape[0]), np.arange(mask.shape[1])
        m = mask
    if not m.any():
        raise BsbError("internal: interior_pixel of an empty mask", "internal")
    while True:
        e = _erode(m)
        if not e.any():
            break
        m = e
    ys, xs = np.nonzero(m)
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(cols[xs[i]]), int(rows[ys[i]])


def automatic_regions(segmenter: PromptSegmenter, choose: MaskChooser, image_size: tuple[int, int],
                      points_per_side: int = 8,
                      min_score: float = 0.5, min_area: float = 0.001, iou_threshold: float = 0.7,
                      max_regions: int | None = None, cancel: Cancel | None = None) -> list[np.ndarray]:
    """Distinct part regions of the image, as point-sampled small masks, best-scored first.

    A grid of single positive clicks goes through the batched prompt decoder; each click's *part* mask is a
    region. Regions scored below `min_score` or smaller than `min_area` of the image are dropped, and a
    region overlapping an already kept (better) one with IoU above `iou_threshold` is a duplicate (greedy
    non-maximum suppression on the small copies, so memory does not grow with the image).
    """
    W, H = image_size
    g = (np.arange(points_per_side) + 0.5) / points_per_side
    pixels = np.stack(np.meshgrid(g * W, g * H), axis=-1).reshape(-1, 2)
    found: list[tuple[float, int, np.ndarray]] = []
    for _, _, parts, scores in click_masks(segmenter, choose, pixels, None, image_size, cancel):
        for p, sc in zip(parts, scores):
            m = small(p)
            if sc >= min_score and m.mean() >= min_area:
                found.append((float(sc), int(m.sum()), m))
    found.sort(key=lambda f: (-f[0], -f[1]))
    kept: list[np.ndarray] = []
    for _, _, m in found:
        if all(iou(m, k) <= iou_threshold for k in kept):
            kept.append(m)
    return kept[:max_regions] if max_regions else kept


def small_to_pixel(mask_small: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    """The full-resolution pixel behind the most interior sample of a small mask (it lies in the region)."""
    rows, cols = sample_points(shape)
    x, y = interior_pixel(mask_small)
    return int(cols[x]), int(rows[y])

