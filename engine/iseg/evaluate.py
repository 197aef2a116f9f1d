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
                      method: str = "otsu", connected: bool = True) -> np.ndarray:
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
