"""Oracle stand-ins built from human labels, for bench/parts.py and the tests (never shipped answers).

- `oracle_prepared`: a `PreparedMesh` whose iSeg decoder was trained against rendered human parts
  (OracleViewSegmenter) on planted features that never see the labels: what segment-all runs on.
- `OracleDetector`: boxes of a named part's pieces in each view (from semantic labels), with misses and
  false boxes at given rates, in place of Grounding DINO.
- `OracleBoxSegmenter`: in place of SAM's box prompt, the human segments that lie mostly inside the box.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from engine.parts.geometric import face_adjacency
from engine.parts.graph import components


def oracle_prepared(mesh, face_labels: np.ndarray, views: int = 12, size: int = 96, config=None,
                    distilled: bool = True, negative_labels: np.ndarray | None = None, seed: int = 0):
    """A real `PreparedMesh` (no DINO field) with an oracle-trained iSeg decoder, as bench/iseg.py builds it."""
    from engine.cameras import sphere_views
    from engine.iseg import ISegConfig, OracleViewSegmenter, train_iseg
    from engine.iseg.evaluate import distilled_planted_features, planted_features
    from engine.pipeline import PreparedMesh, PrepareSettings
    from engine.raster import rasterize

    start = time.perf_counter()
    raster = rasterize(mesh.vertices, mesh.faces, sphere_views(views), size)
    if distilled:
        features = distilled_planted_features(mesh.vertices, mesh.faces, raster, dim=64, sigma=2.0, steps=300)
    else:
        features = torch.from_numpy(planted_features(mesh.vertices, dim=64, sigma=2.0))
    oracle = OracleViewSegmenter(face_labels, raster, negative_labels=negative_labels)
    model = train_iseg(mesh.vertices, mesh.faces, raster, features, oracle, config or ISegConfig(), seed=seed)
    return PreparedMesh(mesh, torch.zeros((mesh.num_vertices, 0)), features, model, PrepareSettings(),
                        f"oracle-{mesh.content_hash()[:12]}", False, time.perf_counter() - start)


class OracleDetector:
    """Boxes around each connected piece of the named part visible in view i (the i-th image is taken to
    be the i-th view of `face_id`). Each true box is dropped with probability `miss_rate`; each view gets
    a false box with probability `false_rate`. Scores are random, so they cannot tell true from false."""

    def __init__(self, face_id: np.ndarray, faces: np.ndarray, semantic_labels: np.ndarray, names: tuple[str, ...],
                 miss_rate: float = 0.2, false_rate: float = 0.2, min_pixels: int = 16, seed: int = 0) -> None:
        self.face_id = np.asarray(face_id)
        self.names = tuple(n.lower() for n in names)
        self.miss_rate, self.false_rate, self.min_pixels = miss_rate, false_rate, min_pixels
        self.rng = np.random.default_rng(seed)
        labels = np.asarray(semantic_labels, np.int64)
        pairs = face_adjacency(faces)
        same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
        self.piece = components(len(labels), pairs[same])  # connected pieces of each label
        self.piece_label = np.zeros(self.piece.max() + 1, np.int64)
        self.piece_label[self.piece] = labels

    def detect(self, images: np.ndarray, phrase: str) -> list[tuple[np.ndarray, np.ndarray]]:
        name = " ".join(str(phrase).lower().split())
        label = self.names.index(name) if name in self.names else -1
        out = []
        for b in range(len(images)):
            fid = self.face_id[b]
            covered = fid >= 0
            piece = np.where(covered, self.piece[np.maximum(fid, 0)], -1)
            boxes = []
            for p in np.nonzero(self.piece_label == label)[0]:
                rows, cols = np.nonzero(piece == p)
                if len(rows) >= self.min_pixels and self.rng.random() >= self.miss_rate:
                    boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
            if covered.any() and self.rng.random() < self.false_rate:
                rows, cols = np.nonzero(covered)
                k = self.rng.integers(len(rows))
                h = (rows.max() - rows.min() + 1) * self.rng.uniform(0.1, 0.4)
                w = (cols.max() - cols.min() + 1) * self.rng.uniform(0.1, 0.4)
                boxes.append([cols[k] - w / 2, rows[k] - h / 2, cols[k] + w / 2, rows[k] + h / 2])
            H, W = fid.shape
            arr = np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0, [W, H, W, H])
            out.append((arr, self.rng.uniform(0.3, 0.9, len(arr)).astype(np.float32)))
        return out


class OracleBoxSegmenter:
    """A box -> the union of the human segments with at least half of their view's pixels inside it; if
    none, the segment with the most pixels in the box, cut to the box (a box on part of a big segment)."""

    def __init__(self, face_id: np.ndarray, face_labels: np.ndarray) -> None:
        face_id = np.asarray(face_id)
        labels = np.asarray(face_labels, np.int64)
        self.labels = np.where(face_id >= 0, labels[np.maximum(face_id, 0)], -1)

    def segment_boxes(self, images: np.ndarray, view: int, boxes: np.ndarray) -> np.ndarray:
        lab = self.labels[view]
        H, W = lab.shape
        n_seg = int(lab.max()) + 1
        total = np.bincount(lab[lab >= 0], minlength=n_seg)
        out = np.zeros((len(boxes), H, W), bool)
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64)):
            inbox = np.zeros((H, W), bool)
            inbox[int(max(0, np.floor(y0))):int(np.ceil(y1)), int(max(0, np.floor(x0))):int(np.ceil(x1))] = True
            sel = lab[inbox & (lab >= 0)]
            if sel.size == 0:
                continue
            count = np.bincount(sel, minlength=n_seg)
            whole = np.nonzero(count >= 0.5 * np.maximum(total, 1))[0]
            whole = whole[count[whole] > 0]
            out[i] = np.isin(lab, whole) if whole.size else (lab == count.argmax()) & inbox
        return out
