"""View segmenters: what the decoder is trained against, `segment_views(view_ids, points, labels)`.

Both take a batch of prompts `points (N, P, 2)` (pixel xy in the rendered views), `labels (N, P)`
(1 positive, 0 negative; the first point is the positive seed) on views `view_ids (N,)` and return
`(masks (N, H, W) bool, scores (N,) float)`. For single clicks `points (N, 2)` both also answer
`segment_levels(view_ids, points) -> (part, scores, wider)`: the part mask plus the larger mask the same
click offers (SAM's three masks run from sub-part to whole), the first answer that a negative click on
a wrongly included neighbour corrects. One call gives both, so SAM runs once per click.
- `SamViewSegmenter`: SAM's prompt decoder on image embeddings computed once per view (the same ones
  the SAM feature distillation used), so a click costs only the light prompt decoder.
- `OracleViewSegmenter`: rendered human part labels, for tests and the benchmark.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.errors import BsbError


def _pixel(points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels holding xy `points`, clipped to the image."""
    cols = np.clip(np.floor(points[..., 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.floor(points[..., 1]).astype(np.int64), 0, height - 1)
    return rows, cols


class OracleViewSegmenter:
    """Returns the rendered human segment under the clicked pixel.

    A second positive click adds the segment under it (union); a negative click removes the segment
    under it, taken from `negative_labels` when given (a finer annotation of the same mesh, so that a
    negative click inside a part cuts out a sub-part, as SAM does) and from `face_labels` otherwise.
    The wider answer to a click is its segment plus every segment that touches it in some view (the
    label structure's next level up, as SAM's larger masks add the neighbours of a part).
    Scores are 1 for a non-empty mask and 0 for a click on the background.
    """

    def __init__(self, face_labels: np.ndarray, raster, negative_labels: np.ndarray | None = None) -> None:
        face_id = np.asarray(raster.face_id)
        face_labels = np.asarray(face_labels, dtype=np.int64)
        if face_id.max(initial=-1) >= len(face_labels):
            raise BsbError(f"{len(face_labels)} face labels for a raster showing face {face_id.max()}; "
                           "give one label per face of the rendered mesh", "bad_array")
        neg = face_labels if negative_labels is None else np.asarray(negative_labels, dtype=np.int64)
        self.labels = np.where(face_id >= 0, face_labels[np.maximum(face_id, 0)], -1)
        self.neg_labels = np.where(face_id >= 0, neg[np.maximum(face_id, 0)], -1)
        self.neighbours = _touching(self.labels)

    def segment_levels(self, view_ids: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Single clicks: the segment under each, its score and the segment with those touching it."""
        view_ids = np.asarray(view_ids, dtype=np.int64)
        _, height, width = self.labels.shape
        rows, cols = _pixel(np.asarray(points, dtype=np.float32), height, width)
        part = np.zeros((len(view_ids), height, width), dtype=bool)
        wider = np.zeros_like(part)
        for n, v in enumerate(view_ids):
            seg = self.labels[v, rows[n], cols[n]]
            if seg >= 0:
                part[n] = self.labels[v] == seg
                wider[n] = self.neighbours[seg][np.maximum(self.labels[v], 0)] & (self.labels[v] >= 0)
        return part, part.reshape(len(part), -1).any(1).astype(np.float32), wider

    def segment_views(self, view_ids: np.ndarray, points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        view_ids = np.asarray(view_ids, dtype=np.int64)
        points = np.asarray(points, dtype=np.float32)
        labels = np.asarray(labels)
        _, height, width = self.labels.shape
        rows, cols = _pixel(points, height, width)
        masks = np.zeros((len(view_ids), height, width), dtype=bool)
        for n, v in enumerate(view_ids):
            for p in range(points.shape[1]):
                if labels[n, p]:
                    seg = self.labels[v, rows[n, p], cols[n, p]]
                    if seg >= 0:
                        masks[n] |= self.labels[v] == seg
                else:
                    seg = self.neg_labels[v, rows[n, p], cols[n, p]]
                    if seg >= 0:
                        masks[n] &= self.neg_labels[v] != seg
        scores = masks.reshape(len(masks), -1).any(1).astype(np.float32)
        return masks, scores


def _touching(labels: np.ndarray) -> np.ndarray:
    """(L, L) bool: segments that share a pixel edge in some view (each touches itself)."""
    n = int(labels.max(initial=-1)) + 1
    out = np.eye(max(n, 1), dtype=bool)
    for a, b in ((labels[:, 1:, :], labels[:, :-1, :]), (labels[:, :, 1:], labels[:, :, :-1])):
        pair = (a >= 0) & (b >= 0) & (a != b)
        out[a[pair], b[pair]] = True
        out[b[pair], a[pair]] = True
    return out


class SamViewSegmenter:
    """SAM's prompt decoder on cached per-view image embeddings.

    `embeddings (B, 256, g, g)` are `SamSegmenter.encode` of the rendered views (computed once, e.g. for
    the SAM feature distillation) and `image_size (H, W)` is the size of those renders. A single click
    keeps SAM's *part* mask (`choose_object_part`, by area and score, not a fixed index: SAM's three
    outputs are unsorted); a multi-click prompt uses SAM's single-mask output.
    """

    def __init__(self, sam, embeddings: torch.Tensor, image_size: tuple[int, int]) -> None:
        self.sam = sam
        self.embeddings = embeddings
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def segment_levels(self, view_ids: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Single clicks: SAM's part mask, its score and SAM's object mask (`choose_object_part`)."""
        from engine.models.masks import choose_object_part

        view_ids = np.asarray(view_ids, dtype=np.int64)
        points = np.asarray(points, dtype=np.float32).reshape(len(view_ids), 1, 2)
        height, width = self.image_size
        part = np.zeros((len(view_ids), height, width), dtype=bool)
        wider = np.zeros_like(part)
        scores = np.zeros(len(view_ids), dtype=np.float32)
        for v in np.unique(view_ids):
            sel = np.nonzero(view_ids == v)[0]
            self.sam.set_embedding(self.embeddings[v], self.image_size)
            out = self.sam.predict(points[sel], np.ones((len(sel), 1), np.int64), multimask=True)
            wider[sel], part[sel], _, idx = choose_object_part(out.masks, out.scores)
            scores[sel] = out.scores[np.arange(len(sel)), idx]
        return part, scores, wider

    def segment_views(self, view_ids: np.ndarray, points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = np.asarray(points, dtype=np.float32)
        if points.shape[1] == 1:
            part, scores, _ = self.segment_levels(view_ids, points[:, 0])
            return part, scores
        # several clicks are unambiguous enough for SAM's single-mask output
        view_ids = np.asarray(view_ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        height, width = self.image_size
        masks = np.zeros((len(view_ids), height, width), dtype=bool)
        scores = np.zeros(len(view_ids), dtype=np.float32)
        for v in np.unique(view_ids):
            sel = np.nonzero(view_ids == v)[0]
            self.sam.set_embedding(self.embeddings[v], self.image_size)
            out = self.sam.predict(points[sel], labels[sel], multimask=False)
            masks[sel] = out.masks[:, 0]
            scores[sel] = out.scores[:, 0]
        return masks, scores
