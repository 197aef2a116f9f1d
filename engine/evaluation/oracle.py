"""Oracle 2D models and planted features: the benchmark without SAM or DINOv2 weights.

What oracle mode measures: the *matching logic* (candidate search, the best-buddy test, IoU ranking,
rejection) given 2D models of known quality, never the 2D models or the distillation themselves.
- `OracleSegmenter` answers SAM prompts from the scene's ground truth: the region under the click (the
  decal is a region of its own), the object mask is the whole shape, and near a region border (another
  region fills at least `merge_share` of the window within `edge_px`) it merges the two regions, the way
  SAM hesitates between neighbouring parts.
- `PlantedSpace` gives DINO-like features with known structure and known defects. Mesh side: one
  direction per part (all sharing a common component, so parts look alike), per-vertex noise, and a
  fraction of outlier vertices carrying another part's direction (distillation errors). Image side: each
  part's direction partly mixed with one other part's (an asymmetric cross-domain confusion), a constant
  modality offset, area pooling onto a patch grid (blurred borders), per-cell noise that is strong on a
  fraction of "hard" cells (texture, shading), and outlier cells carrying another part's feature; a
  decal's feature mixes its part's direction with a direction no part has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import BsbError
from engine.evaluation.data import LabelledMesh
from engine.evaluation.scenes import Scene


@dataclass
class OracleMaskSet:
    masks: np.ndarray  # (N, 3, H, W) bool: the clicked region (merged near a border) twice, then the object
    scores: np.ndarray  # (N, 3) float


class OracleSegmenter:
    """SAM's prompt interface (engine.bsb.interfaces.PromptSegmenter) over a ground-truth region map."""

    def __init__(self, regions: np.ndarray, edge_px: int = 2, merge_share: float = 0.3) -> None:
        self.regions = np.asarray(regions)
        self.edge_px = int(edge_px)
        self.merge_share = float(merge_share)
        self.object = self.regions >= 0
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    @property
    def image_size(self) -> tuple[int, int]:
        return self.regions.shape[1], self.regions.shape[0]

    def region_at(self, xy: np.ndarray) -> tuple[int, int]:
        """(region under the point, region it is merged with or the same one near a border)."""
        h, w = self.regions.shape
        c = int(np.clip(np.floor(xy[0]), 0, w - 1))
        r = int(np.clip(np.floor(xy[1]), 0, h - 1))
        here = int(self.regions[r, c])
        e = self.edge_px
        window = self.regions[max(0, r - e):r + e + 1, max(0, c - e):c + e + 1].ravel()
        others = window[(window != here) & (window >= 0)]
        if here < 0 or len(others) < self.merge_share * len(window):
            return here, here
        values, counts = np.unique(others, return_counts=True)
        return here, int(values[np.argmax(counts)])

    def _mask(self, a: int, b: int) -> np.ndarray:
        key = (min(a, b), max(a, b))
        if key not in self._cache:
            self._cache[key] = (self.regions == a) | (self.regions == b) if a >= 0 else np.zeros_like(self.object)
        return self._cache[key]

    def predict(self, points: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None = None,
                mask_input: object | None = None) -> OracleMaskSet:
        """Masks for the first positive point of each prompt (boxes and later clicks are not modelled)."""
        points, labels = np.asarray(points), np.asarray(labels)
        h, w = self.regions.shape
        masks = np.zeros((len(points), 3, h, w), dtype=bool)
        for n in range(len(points)):
            positive = np.flatnonzero(labels[n] == 1)
            if len(positive) == 0:
                continue
            here, merged = self.region_at(points[n, positive[0]])
            masks[n, 0] = self._mask(here, merged)
            masks[n, 1] = masks[n, 0]
            masks[n, 2] = self.object
        scores = np.tile(np.array([0.9, 0.9, 0.95], dtype=np.float32), (len(points), 1))
        return OracleMaskSet(masks, scores)


@dataclass(frozen=True)
class PlantedConfig:
    """Strength of each planted defect; the defaults make nearest-vertex matching clearly imperfect."""

    dim: int = 32
    shared: float = 0.5  # weight of the component all part directions share (parts look alike)
    vertex_noise: float = 0.2  # norm of the per-vertex noise (directions have norm 1)
    vertex_outliers: float = 0.01  # fraction of vertices carrying another part's direction
    confusion: float = 0.5  # image side: up to this much of one other part's direction is mixed in
    modality_offset: float = 0.3  # norm of the constant image-side offset
    pixel_noise: float = 0.15  # norm of the per-cell noise of ordinary cells
    hard_cells: float = 0.3  # fraction of cells with strong noise (texture, shading, highlights)
    hard_noise: float = 0.9  # norm of their noise
    pixel_outliers: float = 0.02  # fraction of cells carrying another part's image feature
    decal_part_weight: float = 0.4  # the decal feature keeps this much of its part's direction
    cell: int = 8  # image pixels per feature-grid cell (a ViT patch)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], norm: float) -> np.ndarray:
    """Gaussian noise whose rows have expected norm about `norm`."""
    return rng.normal(0.0, norm / np.sqrt(shape[-1]), size=shape)


class PlantedSpace:
    """A planted feature space: part label -> direction, shared by the meshes and images that use it.

    The benchmark gives each mesh its own space, and one to the semantic airplanes (a wing is a wing).
    """

    def __init__(self, n_parts: int, config: PlantedConfig = PlantedConfig(), seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.config = c = config
        self.n_parts = int(n_parts)
        common = _unit(rng.normal(size=c.dim))
        self.directions = _unit(c.shared * common + (1.0 - c.shared) * _unit(rng.normal(size=(n_parts, c.dim))))
        partner = (np.arange(n_parts) + rng.integers(1, max(n_parts, 2), size=n_parts)) % max(n_parts, 1)
        amount = c.confusion * rng.uniform(0.5, 1.0, size=(n_parts, 1))
        self.image_directions = _unit(self.directions + amount * self.directions[partner])
        self.offset = c.modality_offset * _unit(rng.normal(size=c.dim))
        self.novel = _unit(rng.normal(size=c.dim))
        self.background = _unit(rng.normal(size=c.dim))

    def vertex_features(self, lm: LabelledMesh, seed: int) -> np.ndarray:
        """(V, D) float32: the mean direction of each vertex's parts, plus noise and outliers."""
        if lm.n_parts > self.n_parts:
            raise BsbError(f"{lm.name} has {lm.n_parts} parts but this planted space only {self.n_parts}; "
                           "make the space with at least as many parts as the mesh's labels", "bad_request")
        rng = np.random.default_rng(seed)
        member = lm.vertex_parts.astype(np.float64)
        feats = (member / member.sum(axis=1, keepdims=True)) @ self.directions[: lm.n_parts]
        out = rng.random(len(feats)) < self.config.vertex_outliers
        feats[out] = self.directions[rng.integers(0, self.n_parts, size=int(out.sum()))]
        feats += _noise(rng, feats.shape, self.config.vertex_noise)
        return feats.astype(np.float32)

    def image_features(self, scene: Scene, seed: int) -> np.ndarray:
        """(D, h, w) float32 grid covering the whole image, one cell per `cell` x `cell` pixels."""
        c, rng = self.config, np.random.default_rng(seed)
        parts = scene.part_map
        per_pixel = np.where((parts >= 0)[..., None], self.image_directions[np.maximum(parts, 0)],
                             self.background)
        decal_feature = _unit(c.decal_part_weight * self.directions[np.maximum(parts, 0)]
                              + (1.0 - c.decal_part_weight) * self.novel)
        per_pixel[scene.decal] = decal_feature[scene.decal]
        per_pixel += self.offset
        grid = _pool(per_pixel, c.cell)
        cells = grid.shape[0] * grid.shape[1]
        out = rng.random(cells) < c.pixel_outliers
        flat = grid.reshape(cells, -1)
        flat[out] = self.image_directions[rng.integers(0, self.n_parts, size=int(out.sum()))] + self.offset
        hard = rng.random(cells) < c.hard_cells
        flat += _noise(rng, flat.shape, 1.0) * np.where(hard, c.hard_noise, c.pixel_noise)[:, None]
        return np.ascontiguousarray(flat.reshape(grid.shape).transpose(2, 0, 1), dtype=np.float32)


def _pool(per_pixel: np.ndarray, cell: int) -> np.ndarray:
    """Area-average (H, W, D) onto a grid of about `cell`-pixel blocks covering the image exactly."""
    h, w, _ = per_pixel.shape
    rows = np.round(np.linspace(0, h, max(1, round(h / cell)) + 1)).astype(int)
    cols = np.round(np.linspace(0, w, max(1, round(w / cell)) + 1)).astype(int)
    sums = np.add.reduceat(np.add.reduceat(per_pixel, rows[:-1], axis=0), cols[:-1], axis=1)
    counts = np.diff(rows)[:, None, None] * np.diff(cols)[None, :, None]
    return sums / counts
