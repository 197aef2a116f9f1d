"""A planted scene with known answers, for tests and the benchmark (never a real result).

The image is an object of rectangular parts on a background, laid out on a coarse cell grid; the DINO-like
features are a direction per part plus a shared *modality offset* (image features differ from vertex
features) plus noise. The mesh is a set of vertices labelled by part, with features = part direction +
noise, and planted traps reproducing the paper's situations:
- arm vertices that look more like the body *click* than body vertices do (the nearest vertex is wrong),
  yet resemble arm pixels even more (so BSB's segment test rejects them);
- shin vertices carrying the image modality, more similar to a thigh click than thigh vertices, valid
  (the shin lies in the leg) but with a lower IoU (SAM gives the whole leg at the thigh, the shin at the shin);
- a decal painted on the body with a feature no vertex has (texture-only: no corresponding part);
- a tail on the mesh that the image does not show (its features are somewhat body-like).
The fake segmenter answers from the label map: object = every part, part = the part under the click
(a thigh click gives the whole leg, a decal click the decal), three masks in an order that is not by size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND, BODY, ARM, THIGH, SHIN, HEAD, DECAL, TAIL = -1, 0, 1, 2, 3, 4, 5, 6
GRID_HW = (24, 32)  # feature grid (rows, cols); the layout below is in these cells
LAYOUT = [  # (label, row0, row1, col0, col1) in grid cells, later entries paint over earlier ones
    (HEAD, 1, 5, 14, 18), (BODY, 5, 15, 12, 20), (DECAL, 8, 12, 14, 18), (ARM, 6, 9, 4, 10),
    (THIGH, 15, 19, 13, 16), (SHIN, 19, 23, 13, 16),
]
CLICK_CELLS = {BODY: (13, 13), ARM: (7, 6), THIGH: (16, 14), SHIN: (21, 14), HEAD: (2, 16), DECAL: (9, 15)}


@dataclass
class MaskSet:
    masks: np.ndarray  # (N, 3, H, W) bool
    scores: np.ndarray  # (N, 3)


class FakeSegmenter:
    """SAM stand-in that segments the planted label map exactly."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.prompts = 0

    def part_and_object(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray, float]:
        H, W = self.labels.shape
        lab = int(self.labels[min(H - 1, max(0, int(y))), min(W - 1, max(0, int(x)))])
        if lab == BACKGROUND:
            bg = self.labels == BACKGROUND
            return bg, bg, 0.3
        obj = self.labels != BACKGROUND
        part = (self.labels == THIGH) | (self.labels == SHIN) if lab == THIGH else self.labels == lab
        return part, obj, 0.95

    def predict(self, points, labels, boxes=None, mask_input=None) -> MaskSet:
        n = len(points) if points is not None else len(boxes)
        self.prompts += n
        H, W = self.labels.shape
        masks = np.zeros((n, 3, H, W), bool)
        scores = np.zeros((n, 3), np.float32)
        for i in range(n):
            pos = [] if points is None else [p for p, l in zip(points[i], labels[i]) if l == 1]
            if pos:
                x, y = pos[0]
            else:
                x, y = (boxes[i][0] + boxes[i][2]) / 2, (boxes[i][1] + boxes[i][3]) / 2
            part, obj, score = self.part_and_object(x, y)
            masks[i, 0], masks[i, 1], masks[i, 2] = obj, part, obj  # not sorted by size, like SAM
            scores[i] = score
        return MaskSet(masks, scores)


@dataclass
class Scene:
    labels: np.ndarray  # (H, W) int8 part label per pixel (working image)
    grid: np.ndarray  # (D, h, w) float32 image features
    vertex_features: np.ndarray  # (V, D) float32
    vertex_part: np.ndarray  # (V,) int part label per vertex
    segmenter: FakeSegmenter
    traps: dict[str, np.ndarray]  # planted vertex sets: "outliers" (arm), "shin_offset"

    @property
    def image_size(self) -> tuple[int, int]:
        return self.labels.shape[1], self.labels.shape[0]

    def click(self, label: int) -> tuple[float, float]:
        """Working-frame (x, y) at the centre of a cell well inside a part (the body click avoids the decal)."""
        r, c = CLICK_CELLS[label]
        H, W = self.labels.shape
        return ((c + 0.5) * W / GRID_HW[1], (r + 0.5) * H / GRID_HW[0])

    def label_at(self, xy: tuple[float, float], scale: float = 1.0) -> int:
        return int(self.labels[int(xy[1] * scale), int(xy[0] * scale)])

    def seed(self, vertex: int) -> np.ndarray:
        """Oracle iSeg: probability 1 on the seed vertex's labelled part."""
        return (self.vertex_part == self.vertex_part[vertex]).astype(np.float32)


def label_map(height: int, width: int) -> np.ndarray:
    cells = np.full(GRID_HW, BACKGROUND, np.int8)
    for lab, r0, r1, c0, c1 in LAYOUT:
        cells[r0:r1, c0:c1] = lab
    rows = (np.arange(height) * GRID_HW[0] // height).astype(np.int64)
    cols = (np.arange(width) * GRID_HW[1] // width).astype(np.int64)
    return cells[np.ix_(rows, cols)]


def planted_scene(width: int = 256, height: int = 192, dim: int = 64, per_part: int = 120, noise: float = 0.01,
                  seed: int = 0) -> Scene:
    """The planted scene at any image size (the feature grid stays 24 x 32 cells)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, 12)))[0].T  # orthonormal directions
    d = {BODY: basis[0], ARM: basis[1], HEAD: basis[2], DECAL: basis[3], TAIL: basis[4], BACKGROUND: basis[5]}
    leg, thigh_sub, shin_sub, offset = basis[6], basis[7], basis[8], basis[9]
    d[THIGH], d[SHIN] = leg + 0.3 * thigh_sub, leg + 0.3 * shin_sub
    d[TAIL] = 0.5 * d[BODY] + basis[4]  # unseen in the image, but body-like, as real unseen parts resemble some

    cells = label_map(*GRID_HW)
    grid = np.stack([d[int(lab)] for lab in cells.reshape(-1)]) + offset
    grid = grid + noise * rng.normal(size=grid.shape)
    grid = grid.reshape(*GRID_HW, dim).transpose(2, 0, 1).astype(np.float32)

    feats, parts = [], []
    for lab in (BODY, ARM, THIGH, SHIN, HEAD, TAIL):
        feats.append(np.repeat(d[lab][None], per_part, axis=0))
        parts += [lab] * per_part
    n_out, n_shin = 3, 10
    feats.append(np.repeat((0.8 * d[BODY] + d[ARM] + 1.5 * offset)[None], n_out, axis=0))
    parts += [ARM] * n_out
    feats.append(np.repeat((d[SHIN] + offset)[None], n_shin, axis=0))
    parts += [SHIN] * n_shin
    vf = np.concatenate(feats)
    vf = (vf + noise * rng.normal(size=vf.shape)).astype(np.float32)
    order = rng.permutation(len(vf))  # vertex order carries no information
    vf, vpart = vf[order], np.asarray(parts)[order]
    inverse = np.argsort(order)
    n = len(parts)
    traps = {"outliers": inverse[n - n_out - n_shin:n - n_shin], "shin_offset": inverse[n - n_shin:]}
    labels = label_map(height, width)
    return Scene(labels, grid, vf, vpart, FakeSegmenter(labels), traps)
