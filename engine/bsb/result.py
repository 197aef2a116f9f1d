"""MatchResult: everything the UI shows about one image <-> shape correspondence."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Candidate:
    """One of the k vertices most similar to the query feature (engine.bsb.matching.query_feature)."""

    vertex: int
    similarity: float  # cosine(query feature, vertex feature)
    pixel: tuple[float, float]  # its most similar pixel inside the object mask, original image (x, y)
    valid: bool  # that pixel lies in the part mask (a "best segmentation buddy")
    iou: float | None = None  # IoU of SAM's part mask at `pixel` with the query part mask (valid ones only)


@dataclass
class MatchResult:
    """The answer to one query.

    Masks are 2D bool arrays at the *working* resolution of the segmenter (`part_mask.shape == (H, W)`);
    `mask_scale` is working / original, so a mask pixel (x, y) covers original pixels (x, y) / mask_scale.
    Every pixel coordinate (`winner_pixel`, candidates' pixels) is in the original image frame.
    `found=False` means "no corresponding part"; `reason` then says why, and the per-vertex fields are None.
    """

    found: bool
    reason: str | None
    confidence: float  # best IoU among valid candidates (0 when none)
    n_candidates: int
    n_valid: int
    winner_vertex: int | None
    winner_pixel: tuple[float, float] | None
    part_mask: np.ndarray | None
    object_mask: np.ndarray | None
    mask_scale: float = 1.0
    candidates: list[Candidate] = field(default_factory=list)
    weights: np.ndarray | None = None  # (V,) float32 probability from seeding
    vertex_mask: np.ndarray | None = None  # (V,) bool, weights >= 0.5
    timings: dict[str, float] = field(default_factory=dict)
    name: str | None = None  # "region 3" in match_all

    @property
    def n_selected(self) -> int:
        return 0 if self.vertex_mask is None else int(self.vertex_mask.sum())

    def summary(self) -> dict:
        """The JSON-safe scalar part of the result (arrays travel separately as .npy files)."""
        return {
            "name": self.name,
            "found": self.found,
            "reason": self.reason,
            "confidence": round(float(self.confidence), 6),
            "n_candidates": self.n_candidates,
            "n_valid": self.n_valid,
            "winner_vertex": self.winner_vertex,
            "winner_pixel": None if self.winner_pixel is None else [float(v) for v in self.winner_pixel],
            "n_selected": self.n_selected,
            "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
        }
