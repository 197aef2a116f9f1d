"""Choosing the object and the part among SAM's three multimask outputs.

SAM's three outputs are not ordered by size (index 0 is *usually* the smallest, not always), so the choice
is by area among the masks SAM itself is confident about: the largest is the object, the smallest the part.
"""

from __future__ import annotations

import numpy as np


def choose_object_part(masks: np.ndarray, scores: np.ndarray, min_score: float = 0.5
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N,K,H,W) masks and (N,K) scores -> object (N,H,W), part (N,H,W), object_idx (N,), part_idx (N,).

    Confident = score >= min(min_score, best score of that prompt), so the best mask always qualifies.
    Empty masks never win unless all of a prompt's masks are empty. Equal areas go to the higher score.
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if masks.ndim != 4 or scores.shape != masks.shape[:2]:
        raise ValueError(f"masks (N,K,H,W) and scores (N,K) expected, got {masks.shape} and {scores.shape}")
    area = masks.reshape(*masks.shape[:2], -1).sum(-1).astype(np.float64)
    threshold = np.minimum(min_score, scores.max(axis=1, keepdims=True))
    ok = scores >= threshold
    ok &= (area > 0) | ~(ok & (area > 0)).any(axis=1, keepdims=True)
    tie = scores / (np.abs(scores).max() + 1.0) * 0.5  # < 1 pixel: breaks ties only
    object_idx = np.where(ok, area + tie, -np.inf).argmax(axis=1)
    part_idx = np.where(ok, area - tie, np.inf).argmin(axis=1)
    rows = np.arange(len(masks))
    return masks[rows, object_idx], masks[rows, part_idx], object_idx, part_idx
