"""From a soft per-vertex probability to a selection: threshold, then (optionally) the clicked region.

Why: the decoder output is soft; Blender needs a vertex set. Otsu adapts to each answer's own
contrast (the reference offers it too); the connected-region step drops far-away islands that happen
to look similar to the clicked part (the reference has no such step).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from engine.errors import BsbError


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of a 1-D sample's histogram."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise BsbError("cannot threshold an empty set of values", "bad_array")
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)          # count at or below each bin
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    i = int(np.argmax(between[:-1]))                 # the split after bin i
    return float(edges[i + 1])


def threshold_probability(prob: np.ndarray, method: str = "otsu", threshold: float = 0.5) -> np.ndarray:
    """Boolean (V,) mask: `prob >= t` with t from Otsu or the given fixed value."""
    prob = np.asarray(prob, dtype=np.float32)
    if method == "otsu":
        t = otsu_threshold(prob)
    elif method == "fixed":
        t = float(threshold)
    else:
        raise BsbError(f"unknown threshold method {method!r}; use 'otsu' or 'fixed'", "bad_request")
    return prob >= t


def vertex_adjacency(faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency (offsets (V+1,), neighbours) over the mesh edges."""
    faces = np.asarray(faces, dtype=np.int64)
    a = faces[:, [0, 1, 2, 1, 2, 0]].reshape(-1)
    b = faces[:, [1, 2, 0, 0, 1, 2]].reshape(-1)
    order = np.argsort(a, kind="stable")
    offsets = np.zeros(n_vertices + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=n_vertices), out=offsets[1:])
    return offsets, b[order]


def connected_region(faces: np.ndarray, mask: np.ndarray, seeds: Iterable[int]) -> np.ndarray:
    """The part of `mask` reachable from `seeds` along mesh edges that stay inside the mask.

    Seeds outside the mask are ignored; with no seed inside it, the result is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    offsets, neighbours = vertex_adjacency(faces, len(mask))
    seeds = np.asarray([s for s in seeds if mask[s]], dtype=np.int64)
    reached = np.zeros_like(mask)
    reached[seeds] = True
    frontier = np.unique(seeds)
    while frontier.size:
        starts, ends = offsets[frontier], offsets[frontier + 1]
        counts = ends - starts
        idx = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts) + np.arange(counts.sum())
        nxt = np.unique(neighbours[idx])
        nxt = nxt[mask[nxt] & ~reached[nxt]]
        reached[nxt] = True
        frontier = nxt
    return reached


# The region choice `select_vertices` makes when not told: measured by bench/iseg.py on the oracle.
CONNECTED_DEFAULT = True


def select_vertices(prob: np.ndarray, faces: np.ndarray, clicks: list[tuple[int, bool]],
                    method: str = "otsu", threshold: float = 0.5, connected: bool | None = None) -> np.ndarray:
    """Threshold `prob`, then keep only the piece(s) holding the positive clicks if `connected`, or every
    piece the decoder selects if not (a part made of several pieces: two wings, four legs).
    None means CONNECTED_DEFAULT."""
    if connected is None:
        connected = CONNECTED_DEFAULT
    mask = threshold_probability(prob, method, threshold)
    if not connected:
        return mask
    return connected_region(faces, mask, [v for v, positive in clicks if positive])
