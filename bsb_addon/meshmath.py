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


# Vertex group and attribute names share Blender's 63-byte limit; the attribute adds "bsb_" (4 bytes).
NAME_BYTES = 59


def fit_name(name: str, limit: int = NAME_BYTES) -> str:
    """`name` cut to `limit` UTF-8 bytes on a character boundary (Blender would cut mid-character or refuse)."""
    name = name.strip()
    data = name.encode("utf-8")
    if len(data) <= limit:
        return name
    return data[:limit].decode("utf-8", "ignore").rstrip()


def next_free_name(base: str, taken: set[str]) -> str:
    """`base 1`, `base 2`, ...: the first name not in `taken` (so a new result never replaces an old one)."""
    base = fit_name(base, NAME_BYTES - 4) or "Part"
    k = 1
    while f"{base} {k}" in taken:
        k += 1
    return f"{base} {k}"


def spread_sample(indices: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """At most `k` of `indices`, spread over their positions (farthest-point sampling, deterministic).

    A selection of 100k vertices says "this region"; a few hundred clicks spread over it say the same to
    the engine, and keep the request far below the protocol's 1 MiB line limit.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size <= k:
        return indices
    pts = np.asarray(positions, dtype=np.float64)[indices]
    chosen = [0]
    dist = np.linalg.norm(pts - pts[0], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1), out=dist)
    return indices[np.sort(np.array(chosen))]


def copies_of_base(codes_evaluated: np.ndarray, index_evaluated: np.ndarray, codes_base: np.ndarray) -> np.ndarray:
    """For each evaluated vertex, the base vertex it is an exact copy of, or -1.

    The base mesh carries a random float code and its index as attributes through the modifier stack:
    copied vertices (Mirror, Solidify, Subdivision's corner points, Armature) keep both exactly; vertices a
    modifier makes by interpolation get a blend of codes, which matches no vertex's code.
    """
    n = len(codes_base)
    idx = np.asarray(index_evaluated, dtype=np.int64)
    ok = (idx >= 0) & (idx < n)
    exact = np.zeros(len(idx), bool)
    exact[ok] = np.asarray(codes_evaluated)[ok] == np.asarray(codes_base)[idx[ok]]
    return np.where(exact, idx, -1)


def to_base(values: np.ndarray, copies: np.ndarray, n_base: int) -> np.ndarray:
    """Per-evaluated-vertex values -> per-base-vertex: the largest over the vertex's copies (a mirrored
    vertex is in the part if either side is)."""
    out = np.zeros(n_base, dtype=np.float32 if values.dtype != bool else bool)
    keep = copies >= 0
    if values.dtype == bool:
        out[copies[keep][values[keep]]] = True
    else:
        np.maximum.at(out, copies[keep], values[keep].astype(np.float32))
    return out


def first_copy(copies: np.ndarray, n_base: int) -> np.ndarray:
    """Base vertex -> one evaluated vertex that copies it (-1 if none)."""
    out = np.full(n_base, -1, np.int64)
    keep = np.flatnonzero(copies >= 0)
    out[copies[keep[::-1]]] = keep[::-1]  # reversed so the first copy wins
    return out
