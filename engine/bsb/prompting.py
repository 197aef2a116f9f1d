"""Prompting the segmenter: query masks, and batched re-segmentation with bounded memory."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from engine.bsb.interfaces import Cancel, MaskChooser, PromptSegmenter
from engine.errors import BsbError, Cancelled

MASK_BUDGET_BYTES = 256 * 2**20  # masks of one re-segmentation chunk (bool bytes, all 3 + chosen 2)


def as_numpy(x: object) -> np.ndarray:
    """numpy view of an array or (CPU/GPU) tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def default_chooser() -> MaskChooser:
    """engine.models.masks.choose_object_part, adapted to (object, part, part score)."""
    try:
        from engine.models.masks import choose_object_part
    except ImportError as exc:
        raise BsbError("no mask chooser: engine.models.masks is not installed; pass choose=... "
                       "(masks, scores) -> (object masks, part masks, part scores)", "internal") from exc

    def choose(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obj, part, _, part_idx = choose_object_part(masks, scores)
        part_idx = as_numpy(part_idx).astype(np.int64).reshape(-1)
        return as_numpy(obj), as_numpy(part), as_numpy(scores)[np.arange(len(part_idx)), part_idx]

    return choose


def chosen_masks(segmenter: PromptSegmenter, choose: MaskChooser, points: np.ndarray | None,
                 labels: np.ndarray | None, boxes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(object (N,H,W), part (N,H,W)) bool masks and part scores (N,) for N prompts, segmenter's frame."""
    out = segmenter.predict(None if points is None else points.astype(np.float32),
                            None if labels is None else labels.astype(np.int64),
                            None if boxes is None else boxes.astype(np.float32))
    obj, part, score = choose(as_numpy(out.masks).astype(bool, copy=False), as_numpy(out.scores))
    return (as_numpy(obj).astype(bool, copy=False), as_numpy(part).astype(bool, copy=False),
            as_numpy(score).astype(np.float64).reshape(-1))


def query_masks(segmenter: PromptSegmenter, choose: MaskChooser, points: np.ndarray, labels: np.ndarray,
                box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Object mask (the points alone: a box would clip the object) and part mask (the whole prompt)."""
    if len(points) == 0:
        obj, part, _ = chosen_masks(segmenter, choose, None, None, box[None])
        return obj[0], part[0]
    obj, part, _ = chosen_masks(segmenter, choose, points[None], labels[None], None)
    if box is not None:
        part = chosen_masks(segmenter, choose, points[None], labels[None], box[None])[1]
    return obj[0], part[0]


def click_masks(segmenter: PromptSegmenter, choose: MaskChooser, pixels: np.ndarray, box: np.ndarray | None,
                image_size: tuple[int, int], cancel: Cancel | None = None
                ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(start, objects, parts, part scores) chunks for one positive click per pixel (plus `box`), memory-bounded."""
    W, H = image_size
    chunk = max(1, MASK_BUDGET_BYTES // (5 * W * H))
    for s in range(0, len(pixels), chunk):
        if cancel is not None and cancel():
            raise Cancelled()
        pts = pixels[s:s + chunk, None, :].astype(np.float32)
        boxes = None if box is None else np.repeat(box[None], len(pts), axis=0)
        yield (s, *chosen_masks(segmenter, choose, pts, np.ones(pts.shape[:2], np.int64), boxes))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 0.0 if union == 0 else np.count_nonzero(a & b) / union
