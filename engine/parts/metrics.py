"""Class-agnostic scores of a part map against a human segmentation, on faces weighted by their area.

Why area weights: PSB meshes are tessellated unevenly (dense where curved); a score per face would let
a few dense patches dominate. Predictions are per vertex; a face takes the label most of its three
vertices carry (its first vertex's on a three-way tie).
"""

from __future__ import annotations

import numpy as np


def vertex_to_face_labels(faces: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(F,) the majority label of each face's vertices."""
    l = np.asarray(labels)[np.asarray(faces, np.int64)]
    return np.where(l[:, 1] == l[:, 2], l[:, 1], l[:, 0])


def _table(pred: np.ndarray, gt: np.ndarray, weights: np.ndarray) -> np.ndarray:
    _, p = np.unique(pred, return_inverse=True)
    _, g = np.unique(gt, return_inverse=True)
    table = np.zeros((g.max() + 1, p.max() + 1))
    np.add.at(table, (g, p), weights)
    return table


def best_match_miou(pred: np.ndarray, gt: np.ndarray, weights: np.ndarray) -> float:
    """Mean over ground-truth parts of the best IoU any predicted part reaches with it."""
    t = _table(pred, gt, weights)
    union = t.sum(1, keepdims=True) + t.sum(0, keepdims=True) - t
    return float((t / np.maximum(union, 1e-30)).max(1).mean())


def rand_index(pred: np.ndarray, gt: np.ndarray, weights: np.ndarray) -> float:
    """Probability that two area-sampled surface points are grouped alike (together in both or apart in both)."""
    t = _table(pred, gt, weights)
    t = t / t.sum()
    together_both = (t ** 2).sum()
    together_gt, together_pred = (t.sum(1) ** 2).sum(), (t.sum(0) ** 2).sum()
    return float(1.0 - together_gt - together_pred + 2.0 * together_both)
