"""Farthest-point sampling: spread training clicks evenly over the surface.

Why: clicks drawn uniformly at random cluster where vertices are dense; FPS covers small parts too.
"""

from __future__ import annotations

import numpy as np


def farthest_point_sampling(points: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices (k,) int64 of `k` points, each the farthest (Euclidean) from those chosen before it.

    The first index is `start`, so the result is deterministic. `k` larger than the number of points
    is clipped to it.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    k = int(min(max(k, 0), n))
    chosen = np.empty(k, dtype=np.int64)
    if k == 0:
        return chosen
    dist = np.full(n, np.inf)
    current = int(start)
    for i in range(k):
        chosen[i] = current
        d = np.einsum("ij,ij->i", points - points[current], points - points[current])
        np.minimum(dist, d, out=dist)
        current = int(np.argmax(dist))
    return chosen
