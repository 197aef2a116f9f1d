"""Mesh graph helpers for part maps: vertex areas, connected pieces of a labelling, label cleanup.

Why numba: scipy is not a dependency, and union-find over 50k-vertex meshes must take milliseconds.
"""

from __future__ import annotations

import numba
import numpy as np


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) float64 triangle areas."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)


def vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,) float64: a third of the incident faces' area, so region sizes do not depend on tessellation."""
    areas = np.zeros(len(vertices))
    np.add.at(areas, np.asarray(faces, np.int64).reshape(-1), np.repeat(face_areas(vertices, faces) / 3.0, 3))
    return areas


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) int64 unique undirected vertex edges, smaller index first."""
    f = np.asarray(faces, np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0)


@numba.njit(cache=True)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@numba.njit(cache=True)
def _union_components(n, a, b):
    parent = np.arange(n)
    for k in range(len(a)):
        ra, rb = _find(parent, a[k]), _find(parent, b[k])
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = _find(parent, i)
    return out


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """(n,) int64 component id (0..C-1, ordered by smallest member) of a graph given as (E, 2) edges."""
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    roots = _union_components(int(n), edges[:, 0].copy(), edges[:, 1].copy())
    _, ids = np.unique(roots, return_inverse=True)
    return ids.astype(np.int64)


def label_pieces(labels: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(V,) id of each connected piece of a vertex labelling (edges joining equal labels only)."""
    same = labels[edges[:, 0]] == labels[edges[:, 1]]
    return components(len(labels), edges[same])


def absorb_small(labels: np.ndarray, edges: np.ndarray, areas: np.ndarray, min_area: float) -> np.ndarray:
    """Split every label into its connected pieces; each piece under `min_area` joins the neighbouring
    piece it shares the most edges with (all at once, repeated until none is left), so every part ends up
    one connected piece of at least `min_area` unless it is a whole separate mesh component.
    Returns labels 0..P-1."""
    pieces = label_pieces(np.asarray(labels), edges)
    while True:
        size = np.bincount(pieces, weights=areas)
        a, b = pieces[edges[:, 0]], pieces[edges[:, 1]]
        cross = a != b
        src, dst = np.concatenate([a[cross], b[cross]]), np.concatenate([b[cross], a[cross]])
        small = size[src] < min_area
        if not small.any():
            break
        pairs, counts = np.unique(np.stack([src[small], dst[small]], 1), axis=0, return_counts=True)
        order = np.lexsort((-counts, pairs[:, 0]))  # per small piece, its most-shared neighbour first
        pairs = pairs[order]
        first = np.ones(len(pairs), bool)
        first[1:] = pairs[1:, 0] != pairs[:-1, 0]
        merged = components(len(size), pairs[first])
        pieces = merged[pieces]
    _, out = np.unique(pieces, return_inverse=True)
    return out.astype(np.int64)
