"""Array rules for turning per-vertex results into Blender data (no bpy, so plain pytest covers them)."""

from __future__ import annotations

import numpy as np


def faces_in_part(mask: np.ndarray, loop_vertices: np.ndarray, loop_starts: np.ndarray) -> np.ndarray:
    """Polygons in the part: strictly more than half of their corners are in `mask`.

    Majority (rather than all/any) keeps a material boundary on the part's edge instead of growing or
    shrinking it by a ring of faces.
    """
    mask = np.asarray(mask, dtype=bool)
    corners = mask[np.asarray(loop_vertices, dtype=np.int64)].astype(np.int64)
    starts = np.asarray(loop_starts, dtype=np.int64)
    if starts.size == 0:
        return np.zeros(0, dtype=bool)
    inside = np.add.reduceat(corners, starts)
    totals = np.diff(np.append(starts, corners.size))
    return 2 * inside > totals


def weight_levels(weights: np.ndarray, mask: np.ndarray, soft: bool, levels: int = 256) -> dict[float, np.ndarray]:
    """Group vertex indices by the weight to write, so `VertexGroup.add` is called once per level.

    Binary groups get weight 1 on the mask; soft groups get the engine's weights (clipped to [0, 1],
    quantised to `levels` steps) on the mask only.
    """
    mask = np.asarray(mask, dtype=bool)
    if not soft:
        idx = np.flatnonzero(mask)
        return {1.0: idx} if idx.size else {}
    w = np.clip(np.asarray(weights, dtype=np.float32), 0.0, 1.0)
    q = np.round(w * (levels - 1)).astype(np.int64)
    q[~mask] = 0
    out: dict[float, np.ndarray] = {}
    for level in np.unique(q[q > 0]):
        out[float(level) / (levels - 1)] = np.flatnonzero(q == level)
    return out


def srgb_to_linear(c: np.ndarray | float) -> np.ndarray:
    """Image colours are sRGB-encoded; material colours are scene-linear."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
