"""Measuring iSeg against human part labels (tests and bench/iseg.py).

Why here and not in a test: the benchmark and the tests must score the same way. Features for these
checks must never come from the labels: `planted_features` are smooth random functions of position
(optionally distilled through engine.distill), honest stand-ins for a distilled field.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.iseg.model import ISegModel
from engine.iseg.postprocess import select_vertices


def vertex_labels(faces: np.ndarray, face_labels: np.ndarray, n_vertices: int) -> np.ndarray:
    """(V,) label of each vertex: the most frequent label among its incident faces (-1 if none)."""
    faces = np.asarray(faces, dtype=np.int64)
    face_labels = np.asarray(face_labels, dtype=np.int64)
    n_labels = int(face_labels.max()) + 1
    votes = np.zeros((n_vertices, n_labels), dtype=np.int64)
    np.add.at(votes, (faces.reshape(-1), np.repeat(face_labels, 3)), 1)
    return np.where(votes.sum(1) > 0, votes.argmax(1), -1)


def interior_vertices(faces: np.ndarray, face_labels: np.ndarray, n_vertices: int) -> np.ndarray:
    """(V,) bool: vertices whose incident faces all carry one label (unambiguous places to click)."""
    faces = np.asarray(faces, dtype=np.int64)
    lab = np.repeat(np.asarray(face_labels, dtype=np.int64), 3)
    lo = np.full(n_vertices, np.iinfo(np.int64).max)
    hi = np.full(n_vertices, -1)
    np.minimum.at(lo, faces.reshape(-1), lab)
    np.maximum.at(hi, faces.reshape(-1), lab)
    return (hi >= 0) & (lo == hi)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def single_click_ious(model: ISegModel, faces: np.ndarray, labels: np.ndarray, clicks: np.ndarray,
                      method: str = "otsu", connected: bool | None = None) -> np.ndarray:
    """IoU of the selection from one positive click at each vertex of `clicks` vs. that vertex's part."""
    out = []
    for v in clicks:
        mask = select_vertices(model.predict([(int(v), True)]), faces, [(int(v), True)], method, connected=connected)
        out.append(iou(mask, labels == labels[v]))
    return np.asarray(out)


def planted_features(vertices: np.ndarray, dim: int = 32, sigma: float = 1.5, seed: int = 0) -> np.ndarray:
    """(V, dim) float32 smooth random functions of position: sin(2 pi x.B + phase), B ~ N(0, sigma^2)."""
    rng = np.random.default_rng(seed)
    freqs = rng.normal(0.0, sigma, size=(3, dim))
    phase = rng.uniform(0.0, 2.0 * math.pi, size=dim)
    return np.sin(2.0 * math.pi * np.asarray(vertices, np.float64) @ freqs + phase).astype(np.float32)


def distilled_planted_features(vertices: np.ndarray, faces: np.ndarray, raster, dim: int = 32, sigma: float = 1.5,
                               grid: int = 16, steps: int = 300, seed: int = 0) -> torch.Tensor:
    """Planted features rendered into the views, pooled to a `grid` x `grid` teacher map and distilled
    back onto the vertices with engine.distill: the same path a real teacher's features take."""
    from engine.distill import DistillConfig, distill
    from engine.field import FieldConfig
    from engine.interp import interpolate, pool_images, pool_views

    planted = torch.from_numpy(planted_features(vertices, dim, sigma, seed))
    images = interpolate(planted, faces, raster.face_id, raster.bary)
    targets = pool_images(pool_views(raster.face_id, (grid, grid)), images)
    _, features = distill(vertices, faces, raster, targets, FieldConfig.small(dim), DistillConfig(steps=steps, seed=seed))
    return features


def _bfs_hops(offsets: np.ndarray, neighbours: np.ndarray, allowed: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """(V,) hop count from `sources` along edges that stay inside `allowed` (-1 where unreached)."""
    hops = np.full(len(allowed), -1, dtype=np.int64)
    frontier = np.unique(np.asarray(sources, dtype=np.int64))
    hops[frontier] = 0
    d = 0
    while frontier.size:
        d += 1
        counts = offsets[frontier + 1] - offsets[frontier]
        idx = np.repeat(offsets[frontier] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts) + np.arange(counts.sum())
        nxt = np.unique(neighbours[idx])
        nxt = nxt[allowed[nxt] & (hops[nxt] < 0)]
        hops[nxt] = d
        frontier = nxt
    return hops


def _pieces(offsets: np.ndarray, neighbours: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """The connected pieces (along mesh edges) of `mask`, as bool masks."""
    left, out = mask.copy(), []
    while left.any():
        piece = _bfs_hops(offsets, neighbours, left, np.flatnonzero(left)[:1]) >= 0
        left &= ~piece
        out.append(piece)
    return out


def corrective_click(vertices: np.ndarray, faces: np.ndarray, selected: np.ndarray, target: np.ndarray,
                     clickable: np.ndarray | None = None) -> tuple[int, bool] | None:
    """Where an interactive user clicks next: the middle of the largest wrong region.

    Wrong regions are the connected pieces (along mesh edges) of the false positives (selected, not in
    the part: a negative click) and of the false negatives (a positive click), over the `clickable`
    vertices only (all when None). The click goes to the vertex of the largest piece farthest (in 3D)
    from the piece's border, as in the click simulation of interactive segmentation benchmarks (the
    error pixel farthest from the error region's boundary). None when no clickable vertex is wrong.

    Why `clickable`: a vertex on the seam between two labelled parts belongs to both; its label is a
    vote of its faces. Errors confined to seams are where the labels themselves are uncertain, and a user
    clicks on a part's surface, not on its outline, so the evaluation passes the vertices inside one part.
    """
    from engine.iseg.postprocess import vertex_adjacency

    selected, target = np.asarray(selected, bool), np.asarray(target, bool)
    allowed = np.ones(len(selected), bool) if clickable is None else np.asarray(clickable, bool)
    offsets, neighbours = vertex_adjacency(faces, len(selected))
    pieces = [(piece, positive) for positive, wrong in ((False, selected & ~target), (True, target & ~selected))
              for piece in _pieces(offsets, neighbours, wrong & allowed)]
    if not pieces:
        return None
    piece, positive = max(pieces, key=lambda p: int(p[0].sum()))
    # border: piece vertices with a neighbour outside the piece (the piece's own outline)
    has_out = np.zeros(len(piece), bool)
    np.logical_or.at(has_out, np.repeat(np.arange(len(piece)), np.diff(offsets)), ~piece[neighbours])
    inside, border = np.flatnonzero(piece), np.flatnonzero(piece & has_out)
    if border.size == 0 or border.size == inside.size:
        return int(inside[0]), positive
    pts = torch.from_numpy(np.asarray(vertices, np.float32))
    far = torch.cdist(pts[inside], pts[border]).min(1).values
    return int(inside[int(far.argmax())]), positive


STOP_IOU = 0.9  # the simulated user is satisfied at this IoU (as in the NoC@90 protocol of interactive segmentation)


def correction_run(model: ISegModel, vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray, first: int,
                   corrections: int = 3, method: str = "otsu", connected: bool | None = None,
                   clickable: np.ndarray | None = None,
                   stop_iou: float | None = STOP_IOU) -> list[tuple[list[tuple[int, bool]], np.ndarray]]:
    """A simulated user on the part of vertex `first` (vertex labels `labels`): (clicks, selection) after its
    click and after each of up to `corrections` corrective clicks; fewer when nothing is left to correct or
    the selection reached `stop_iou` (None: the user keeps correcting whatever is wrong)."""
    target = labels == labels[first]
    clicks = [(int(first), True)]
    out = []
    for k in range(corrections + 1):
        selected = select_vertices(model.predict(clicks), faces, clicks, method, connected=connected)
        out.append((list(clicks), selected))
        done = k == corrections or (stop_iou is not None and iou(selected, target) >= stop_iou)
        nxt = None if done else corrective_click(vertices, faces, selected, target, clickable)
        if nxt is None:
            break
        clicks.append(nxt)
    return out


def corrected_ious(model: ISegModel, vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray, first: int,
                   corrections: int = 3, method: str = "otsu", connected: bool | None = None,
                   clickable: np.ndarray | None = None, stop_iou: float | None = STOP_IOU) -> np.ndarray:
    """(corrections + 1,) IoU with the part of vertex `first` after its click and each corrective click
    (a selection the user stopped at keeps its IoU for the clicks it no longer needs)."""
    target = labels == labels[first]
    ious = [iou(sel, target) for _, sel in correction_run(model, vertices, faces, labels, first, corrections, method,
                                                           connected, clickable, stop_iou)]
    return np.asarray(ious + [ious[-1]] * (corrections + 1 - len(ious)))
