"""Training clicks from the rendered views: where each sampled vertex can be clicked, and second clicks.

Visibility needs no camera: a vertex is clickable in a view where some covered pixel shows a surface
point within one pixel footprint of the vertex (the depth of what the view sees there matches the
vertex). A vertex hidden behind another surface sees only that surface, a full thickness away.
Clicks sit on interior pixels only (all 4 neighbours covered): silhouette clicks are ambiguous for SAM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ClickSites:
    """Where click vertices are visible: one row per (view, vertex) pair."""

    view: np.ndarray    # (K,) int64
    vertex: np.ndarray  # (K,) int64
    xy: np.ndarray      # (K, 2) float32 pixel centre (x = column, y = row from the top)

    def __len__(self) -> int:
        return len(self.view)

    def subset(self, keep: np.ndarray) -> "ClickSites":
        return ClickSites(self.view[keep], self.vertex[keep], self.xy[keep])


def interior_pixels(face_id: np.ndarray) -> np.ndarray:
    """(H, W) bool: covered pixels whose 4 neighbours are covered too."""
    cov = face_id >= 0
    inner = cov.copy()
    inner[1:, :] &= cov[:-1, :]
    inner[:-1, :] &= cov[1:, :]
    inner[:, 1:] &= cov[:, :-1]
    inner[:, :-1] &= cov[:, 1:]
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    return inner


def surface_points(vertices: np.ndarray, faces: np.ndarray, face_id: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(P, 3) points seen at pixels with `face_id (P,) >= 0`, `bary (P, 3)`."""
    corners = vertices[faces[face_id]]  # (P, 3, 3)
    return np.einsum("pk,pkc->pc", bary, corners)


def find_click_sites(vertices: np.ndarray, faces: np.ndarray, raster, click_vertices: np.ndarray,
                     tolerance: float = 1.0, fov_deg: float = 60.0, chunk: int = 256) -> ClickSites:
    """Every (view, vertex) pair where `click_vertices` are visible, with the pixel to click.

    `tolerance` is in pixel footprints (the width of one pixel on the surface at that depth).
    """
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    click_vertices = np.asarray(click_vertices, dtype=np.int64)
    face_id = np.asarray(raster.face_id)
    n_views, height, width = face_id.shape
    pixel_angle = 2.0 * math.tan(math.radians(fov_deg) / 2.0) / max(height, width)
    targets = torch.from_numpy(vertices[click_vertices])
    views, verts, xys = [], [], []
    for b in range(n_views):
        rows, cols = np.nonzero(interior_pixels(face_id[b]))
        if rows.size == 0:
            continue
        fid = face_id[b, rows, cols]
        pts = torch.from_numpy(surface_points(vertices, faces, fid, np.asarray(raster.bary[b, rows, cols])))
        footprint = torch.from_numpy(np.asarray(raster.depth[b, rows, cols], dtype=np.float32)) * pixel_angle
        for s in range(0, len(click_vertices), chunk):
            d = torch.cdist(targets[s:s + chunk], pts)                  # (k, P)
            best, arg = (d / footprint).min(dim=1)
            ok = (best <= tolerance).numpy()
            arg = arg.numpy()[ok]
            views.append(np.full(int(ok.sum()), b, dtype=np.int64))
            verts.append(click_vertices[s:s + chunk][ok])
            xys.append(np.stack([cols[arg] + 0.5, rows[arg] + 0.5], axis=1).astype(np.float32))
    if not views:
        return ClickSites(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    return ClickSites(np.concatenate(views), np.concatenate(verts), np.concatenate(xys))


def cap_views_per_vertex(sites: ClickSites, max_views: int, rng: np.random.Generator) -> ClickSites:
    """At most `max_views` random views per click vertex (keeps the data balanced over vertices)."""
    order = rng.permutation(len(sites))
    order = order[np.argsort(sites.vertex[order], kind="stable")]
    vert = sites.vertex[order]
    first = np.searchsorted(vert, vert, side="left")
    rank = np.arange(len(vert)) - first
    return sites.subset(np.sort(order[rank < max_views]))


def second_click_partners(sites: ClickSites, first: int, region: np.ndarray, vertices: np.ndarray,
                          max_partners: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into `sites` of second clicks for the single-click sample at site `first`.

    As in the reference: other sites of the same view whose pixel lies in `region (H, W)` (outside the
    first mask for a positive click, inside it for a negative one), nearer to the first vertex than
    0.707 x the farthest site of that view (squared distance < half the largest), at most
    `max_partners` drawn at random.
    """
    same = np.nonzero((sites.view == sites.view[first]) & (sites.vertex != sites.vertex[first]))[0]
    if same.size == 0:
        return same
    d2 = ((vertices[sites.vertex[same]] - vertices[sites.vertex[first]]) ** 2).sum(1)
    px = sites.xy[same].astype(np.int64)
    cand = same[region[px[:, 1], px[:, 0]] & (d2 < 0.5 * d2.max())]
    if cand.size > max_partners:
        cand = rng.choice(cand, size=max_partners, replace=False)
    return cand


def _at(masks: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N,) bool: mask n at pixel xy `points[n]`."""
    px = np.floor(points).astype(np.int64)
    return masks[np.arange(len(masks)), px[:, 1], px[:, 0]]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a & b).sum(1) / np.maximum((a | b).sum(1), 1)


def accept_second_clicks(first_masks: np.ndarray, first_scores: np.ndarray, masks: np.ndarray,
                         positive: np.ndarray, points: np.ndarray, min_score: float = 0.4,
                         max_iou: float = 0.9) -> np.ndarray:
    """(N,) bool: keep a two-click mask if the first click was confident (score >= min_score), the second
    click changed it (IoU <= max_iou) and in the right direction (grows for +, shrinks for -), and the
    clicks `points (N, 2, 2)` xy are answered: the first click's pixel still selected (a negative that
    wipes out the first click's own part teaches nothing about sub-parts; the reference lacks this
    check), the second's selected for + and not for -."""
    n = len(masks)
    area_a = first_masks.reshape(n, -1).sum(1)
    area_m = masks.reshape(n, -1).sum(1)
    direction = np.where(positive, area_m >= area_a, area_m <= area_a)
    answered = _at(masks, points[:, 0]) & (_at(masks, points[:, 1]) == positive)
    return (first_scores >= min_score) & (_iou(first_masks, masks) <= max_iou) & direction & answered


def accept_confirming(first_masks: np.ndarray, first_scores: np.ndarray, masks: np.ndarray, points: np.ndarray,
                      min_score: float = 0.4, max_iou: float = 0.9) -> np.ndarray:
    """(N,) bool: keep a second positive click on the first click's own part if the first click was
    confident and the two-click answer is (about) that part (IoU > max_iou) holding both clicks."""
    both = _at(masks, points[:, 0]) & _at(masks, points[:, 1])
    return (first_scores >= min_score) & (_iou(first_masks, masks) > max_iou) & both


def accept_answered(masks: np.ndarray, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the masks answer every click `points (N, K, 2)` xy: selected where `labels (N, K)` is
    positive, not selected where it is negative (a prompt the segmenter ignored teaches nothing)."""
    hit = np.stack([_at(masks, points[:, k]) for k in range(points.shape[1])], axis=1)
    return (hit == np.asarray(labels, bool)).all(1) & masks.reshape(len(masks), -1).any(1)


def near(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool: pixels with a pixel of `mask (H, W)` within `radius` (a (2r+1)^2 box), by an integral image."""
    h, w = mask.shape
    r = max(int(radius), 0)
    table = np.zeros((h + 1, w + 1), np.int32)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1)
    y0, y1 = np.clip(np.arange(h) - r, 0, h), np.clip(np.arange(h) + r + 1, 0, h)
    x0, x1 = np.clip(np.arange(w) - r, 0, w), np.clip(np.arange(w) + r + 1, 0, w)
    box = table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
    return box > 0
