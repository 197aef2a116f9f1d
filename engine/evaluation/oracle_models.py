"""Oracle 2D models behind the SAME interfaces as DinoFeatures and SamSegmenter, for labelled meshes.

Why: the engine's accuracy can only be measured end to end (renders -> teachers -> distilled fields ->
trained iSeg decoder -> BSB -> seeding) with teachers whose answers are known. These models plug into
`Session(models=Models(OracleFeatures(...), OracleSam(...), "cpu"))` and `Session.prepare` / `set_image`
run unchanged; only the teachers are replaced.

Images reach the oracle only as pixels, so it answers from a `Registry`: the benchmark registers every
image the engine will see (the preparation renders, which `engine.pipeline.render_views` makes
deterministically, and the test scenes) with its per-pixel ground truth. An unregistered image is an
error, never a guess. One registry holds one label space: a mesh's own human labels, or the semantic
airplane labels shared by several meshes (a wing is a wing); its models carry the space in their ids,
so caches of different spaces never mix.

What the oracle answers:
- `OracleFeatures` (DINO): area-pooled planted part directions (engine.evaluation.oracle.PlantedSpace)
  on the DINO patch grid. Renders are the mesh's modality: the part's own direction, with per-cell noise
  (`vertex_noise`) and outlier cells (`vertex_outliers`). Test images ("photos") carry every image-side
  defect `PlantedConfig` models: cross-part confusion, modality offset, hard and outlier cells, decals.
  `shuffle=True` answers photos with a deranged label -> feature map: a broken feature model for tests.
- `OracleSam` (SAM): the "embedding" is a label-like code map, one 256-d code per (part, 3D connected
  piece), pooled onto SAM's 64x64 grid, so the distilled SAM field (iSeg's features) learns label-like
  features as it would from SAM. The embedding's content also identifies its image: `set_embedding`
  finds the ground truth by hashing it, so `SamViewSegmenter` answers prompts from cached embeddings.
  Prompts get three masks, small to large like SAM: the clicked 3D piece of the part (as seen), the
  whole part, the whole object. Near a region border (another region fills `merge_share` of the window
  within `edge_px`) it merges the two regions, as SAM hesitates; with probability `error_rate` per prompt
  (deterministic per image and point) it answers a neighbouring part, or the clicked part merged with it.
  Negative points remove the piece under them (levels 0, 1) or the part under them (level 2). With
  `multimask=False` the part-level mask is returned (SAM's single output for a multi-click prompt).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from engine.errors import BsbError
from engine.evaluation.data import LabelledMesh
from engine.evaluation.oracle import PlantedConfig, PlantedSpace
from engine.evaluation.scenes import DECAL_REGION, Scene
from engine.models.sam import MaskSet
from engine.raster import rasterize

SAM_PATCH = 16
SAM_GRID = 64  # like SAM ViT-B/H: a 1024 px input, 64 x 64 embedding cells


@dataclass(frozen=True)
class Truth:
    """Ground truth of one registered image (all (H, W) at the image's resolution)."""

    part: np.ndarray  # int32 part label, -1 background, DECAL_REGION on a decal
    piece: np.ndarray  # int32 3D connected piece of the part (global per mesh), -1 background
    photo: bool  # a test image (photo modality) rather than a preparation render
    key: str  # content hash of the image


def image_key(rgb: np.ndarray) -> str:
    rgb = np.ascontiguousarray(rgb)
    return hashlib.sha1(str(rgb.shape).encode() + rgb.tobytes()).hexdigest()


def face_pieces(lm: LabelledMesh) -> np.ndarray:
    """(F,) int32: the 3D connected piece of each face within its part (faces sharing a vertex and a label).

    Why: SAM's smallest mask is one connected thing (one wing), while a label may name several (both wings).
    """
    faces = np.asarray(lm.mesh.faces, np.int64)
    labels = np.asarray(lm.face_labels, np.int64)
    nodes = faces * (int(labels.max()) + 1) + labels[:, None]  # (vertex, label) pairs
    _, node = np.unique(nodes.reshape(-1), return_inverse=True)
    node = node.reshape(-1, 3)
    a = np.concatenate([node[:, 0], node[:, 1]])
    b = np.concatenate([node[:, 1], node[:, 2]])
    parent = np.arange(int(node.max()) + 1)
    while True:  # hook roots onto the smaller root, then jump pointers to the roots
        ra, rb = parent[a], parent[b]
        low = np.minimum(ra, rb)
        np.minimum.at(parent, np.maximum(ra, rb), low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent[a], parent[b]):
            break
    _, piece = np.unique(parent[node[:, 0]], return_inverse=True)
    return piece.astype(np.int32)


class Registry:
    """Image content -> ground truth, for one label space (`space`) with `n_parts` labels."""

    def __init__(self, space: str, n_parts: int) -> None:
        self.space, self.n_parts = space, int(n_parts)
        self._truth: dict[str, Truth] = {}
        self._embedded: dict[str, str] = {}  # embedding hash -> image key
        self._pieces: dict[str, tuple[np.ndarray, int]] = {}  # mesh name -> (face pieces, offset)

    def __len__(self) -> int:
        return len(self._truth)

    def pieces(self, lm: LabelledMesh) -> np.ndarray:
        """Face pieces of `lm`, numbered apart from every other mesh of this registry."""
        if lm.name not in self._pieces:
            offset = sum(int(p.max()) + 1 for p, _ in self._pieces.values())
            self._pieces[lm.name] = (face_pieces(lm), offset)
        p, offset = self._pieces[lm.name]
        return p + offset

    def add(self, rgb: np.ndarray, part: np.ndarray, piece: np.ndarray, photo: bool) -> Truth:
        if part.shape != rgb.shape[:2] or piece.shape != rgb.shape[:2]:
            raise BsbError(f"ground truth {part.shape} does not match the image {rgb.shape[:2]}", "bad_array")
        key = image_key(rgb)
        truth = Truth(np.asarray(part, np.int32), np.asarray(piece, np.int32), bool(photo), key)
        self._truth[key] = truth
        return truth

    def add_raster(self, lm: LabelledMesh, rgb: np.ndarray, face_id: np.ndarray, photo: bool,
                   decal: np.ndarray | None = None) -> Truth:
        face_id = np.asarray(face_id)
        covered = face_id >= 0
        f = np.maximum(face_id, 0)
        part = np.where(covered, lm.face_labels[f], -1).astype(np.int32)
        piece = np.where(covered, self.pieces(lm)[f], -1).astype(np.int32)
        if decal is not None and decal.any():
            part[decal] = DECAL_REGION
            piece[decal] = DECAL_REGION
        return self.add(rgb, part, piece, photo)

    def lookup(self, rgb: np.ndarray) -> Truth:
        truth = self._truth.get(image_key(rgb))
        if truth is None:
            raise BsbError(f"the oracle ({self.space}) was given an image it has no ground truth for; register "
                           "the preparation renders and test scenes first (engine.evaluation.oracle_models)",
                           "bad_request")
        return truth

    def embedded(self, embedding: np.ndarray, sam: "OracleSam") -> Truth:
        """The image whose oracle embedding this is (embeddings of every registered image if need be)."""
        key = self._embedded.get(_array_key(embedding))
        if key is None:  # e.g. an embedding read back from the image cache by a fresh process
            for truth in self._truth.values():
                if truth.key not in self._embedded.values():
                    self._embedded[_array_key(sam.embed(truth))] = truth.key
            key = self._embedded.get(_array_key(embedding))
        if key is None:
            raise BsbError("the oracle SAM was given an embedding of no registered image", "bad_request")
        return self._truth[key]

    def note_embedding(self, embedding: np.ndarray, truth: Truth) -> None:
        self._embedded[_array_key(embedding)] = truth.key


def _array_key(array) -> str:
    a = np.ascontiguousarray(np.asarray(array, np.float32))
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest()


def register_renders(registry: Registry, lm: LabelledMesh, settings) -> int:
    """Register the views `engine.pipeline` renders for `settings` (both SAM view modes); returns the count.

    Both modes of engine.cameras are registered for the SAM views so the benchmark measures whichever
    sampling the shipped pipeline uses.
    """
    from engine.cameras import VIEW_MODES
    from engine.pipeline import render_views

    sets = [(settings.dino_views, settings.dino_size, "uniform")]
    sets += [(settings.sam_views, settings.sam_size, m) for m in VIEW_MODES]
    n = 0
    for views, size, mode in sets:
        _, raster, images = render_views(lm.mesh, views, size, mode)
        for b in range(len(images)):
            registry.add_raster(lm, images[b], raster.face_id[b], photo=False)
            n += 1
    return n


def register_scene(registry: Registry, lm: LabelledMesh, scene: Scene) -> Truth:
    """Register a test image (render_scene) with its parts, pieces and decal."""
    h, w = scene.part_map.shape
    raster = rasterize(lm.mesh.vertices, lm.mesh.faces, [scene.camera], w, h)
    return registry.add_raster(lm, scene.image, np.asarray(raster.face_id[0]), photo=True, decal=scene.decal)


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _pool(keys: np.ndarray, codes: np.ndarray, cell_rows: np.ndarray, cell_cols: np.ndarray,
          grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols, D): the area mean of `codes[keys]` over the pixels of each cell (empty cells: 0)."""
    n_keys = len(codes)
    cell = cell_rows[:, None] * grid[1] + cell_cols[None, :]
    counts = np.bincount((cell * n_keys + keys).reshape(-1), minlength=grid[0] * grid[1] * n_keys)
    counts = counts.reshape(grid[0] * grid[1], n_keys).astype(np.float64)
    total = np.maximum(counts.sum(1, keepdims=True), 1.0)
    return ((counts / total) @ codes).reshape(grid[0], grid[1], -1)


def _edges_to_cells(n: int, cells: int) -> np.ndarray:
    """Cell index of each of `n` pixels when `cells` cells tile them exactly."""
    return np.minimum((np.arange(n) + 0.5) * cells / n, cells - 1).astype(np.int64)


class OracleFeatures:
    """A DINOv2 stand-in (DinoFeatures' interface): planted part directions on the patch grid."""

    patch = 14

    def __init__(self, registry: Registry, config: PlantedConfig = PlantedConfig(), seed: int = 0,
                 input_size: int = 224, shuffle: bool = False) -> None:
        self.registry, self.config, self.seed, self.shuffle = registry, config, int(seed), bool(shuffle)
        self.input_size = int(input_size)
        self.dim = int(config.dim)
        self.random_weights = False
        self.space = PlantedSpace(registry.n_parts, config, _seed(seed, registry.space))
        n = registry.n_parts
        self.photo_labels = (np.arange(n) + 1) % n if shuffle and n > 1 else np.arange(n)  # a derangement
        digest = hashlib.sha1(repr((asdict(config), seed, input_size, shuffle)).encode()).hexdigest()[:10]
        self.model_id = f"oracle-dino:{registry.space}:{digest}"

    def grid_size(self, H: int, W: int) -> tuple[int, int]:
        long_cells = self.input_size // self.patch
        short_cells = max(1, int(round(min(H, W) * long_cells / max(H, W))))
        return (long_cells, short_cells) if H >= W else (short_cells, long_cells)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, D, h, w) float32."""
        images = np.asarray(images)
        return torch.from_numpy(np.stack([self.features(self.registry.lookup(im)) for im in images]))

    def features(self, truth: Truth) -> np.ndarray:
        c, s = self.config, self.space
        n = s.n_parts
        H, W = truth.part.shape
        grid = self.grid_size(H, W)
        rng = np.random.default_rng(_seed(self.seed, truth.key))
        part = truth.part
        decal = part == DECAL_REGION
        label = np.where(decal | (part < 0), 0, part)
        if truth.photo:
            # keys: 0..n-1 parts, n..2n-1 decal on part, 2n background
            under = np.where(decal, self._decal_part(truth), label)
            mapped = self.photo_labels[under]
            keys = np.where(part < 0, 2 * n, np.where(decal, n + mapped, mapped))
            decal_codes = _unit(c.decal_part_weight * s.directions + (1 - c.decal_part_weight) * s.novel)
            codes = np.concatenate([s.image_directions, decal_codes, s.background[None]]) + s.offset
        else:
            keys = np.where(part < 0, n, label)
            codes = np.concatenate([s.directions, s.background[None]])
        pooled = _pool(keys, codes, _edges_to_cells(H, grid[0]), _edges_to_cells(W, grid[1]), grid)
        flat = pooled.reshape(-1, self.dim)
        cells = len(flat)
        if truth.photo:
            out = rng.random(cells) < c.pixel_outliers
            flat[out] = s.image_directions[rng.integers(0, n, size=int(out.sum()))] + s.offset
            hard = rng.random(cells) < c.hard_cells
            flat += rng.normal(0.0, 1.0 / np.sqrt(self.dim), flat.shape) * np.where(hard, c.hard_noise,
                                                                                  c.pixel_noise)[:, None]
        else:
            out = rng.random(cells) < c.vertex_outliers
            flat[out] = s.directions[rng.integers(0, n, size=int(out.sum()))]
            flat += rng.normal(0.0, c.vertex_noise / np.sqrt(self.dim), flat.shape)
        return np.ascontiguousarray(flat.reshape(*grid, self.dim).transpose(2, 0, 1), dtype=np.float32)

    def _decal_part(self, truth: Truth) -> np.ndarray:
        """The part a decal is painted on: the most common part label bordering it (0 if none)."""
        part = truth.part
        decal = part == DECAL_REGION
        if not decal.any():
            return np.zeros_like(part)
        grown = decal.copy()
        grown[1:] |= decal[:-1]
        grown[:-1] |= decal[1:]
        grown[:, 1:] |= decal[:, :-1]
        grown[:, :-1] |= decal[:, 1:]
        ring = part[grown & ~decal]
        ring = ring[(ring >= 0) & (ring < self.space.n_parts)]
        return np.full_like(part, int(np.bincount(ring).argmax()) if len(ring) else 0)

    def vertex_truth(self, lm: LabelledMesh) -> np.ndarray:
        """(V, D): the render-modality feature each vertex should distil to (mean over its parts)."""
        member = lm.vertex_parts.astype(np.float64)
        return ((member / member.sum(1, keepdims=True)) @ self.space.directions[: lm.n_parts]).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class SegmenterConfig:
    """The oracle SAM's defects: border hesitation and a per-prompt error rate."""

    edge_px: int = 2  # within this many pixels of another region SAM may hesitate ...
    merge_share: float = 0.3  # ... when that region fills this share of the window: it merges the two
    error_rate: float = 0.0  # per prompt: answer a neighbouring part, or the part merged with it
    error_px: int = 12  # how far a neighbouring part may be for an error
    code_noise: float = 0.1  # per-cell noise of the embedding codes
    seed: int = 0


class OracleSam:
    """A SAM stand-in (SamSegmenter's interface) answering prompts from registered ground truth."""

    dim = 256
    grid = SAM_GRID
    img_size = SAM_GRID * SAM_PATCH

    def __init__(self, registry: Registry, config: SegmenterConfig = SegmenterConfig()) -> None:
        self.registry, self.config = registry, config
        self.random_weights = False
        digest = hashlib.sha1(repr(asdict(config)).encode()).hexdigest()[:10]
        self.model_id = f"oracle-sam:{registry.space}:{digest}"
        rng = np.random.default_rng(_seed(config.seed, registry.space, "sam codes"))
        self._part_codes = _unit(rng.normal(size=(registry.n_parts + 2, self.dim)))  # + decal, background
        self._piece_rng_seed = _seed(config.seed, registry.space, "piece codes")
        self._piece_codes: dict[int, np.ndarray] = {}
        self._truth: Truth | None = None
        self._hw: tuple[int, int] | None = None

    # ----- embeddings -------------------------------------------------------------------------
    def resized_hw(self, H: int, W: int) -> tuple[int, int]:
        scale = self.img_size / max(H, W)
        return int(H * scale + 0.5), int(W * scale + 0.5)

    def valid_grid(self, H: int, W: int) -> tuple[float, float]:
        h, w = self.resized_hw(H, W)
        return h / SAM_PATCH, w / SAM_PATCH

    def _piece_code(self, piece: int) -> np.ndarray:
        if piece not in self._piece_codes:
            self._piece_codes[piece] = _unit(np.random.default_rng(self._piece_rng_seed + piece).normal(size=self.dim))
        return self._piece_codes[piece]

    def embed(self, truth: Truth) -> np.ndarray:
        """(256, 64, 64) float32: label-like codes pooled onto the cells the image covers (padding: 0)."""
        n = self.registry.n_parts
        H, W = truth.part.shape
        part = np.where(truth.part == DECAL_REGION, n, np.where(truth.part < 0, n + 1, truth.part))
        pairs, keys = np.unique(np.stack([part, truth.piece], -1).reshape(-1, 2), axis=0, return_inverse=True)
        codes = np.stack([_unit(self._part_codes[p] + 0.5 * (self._piece_code(q) if q >= 0 else 0))
                          for p, q in pairs])
        rows, cols = self.valid_grid(H, W)
        cell_rows = np.minimum(((np.arange(H) + 0.5) * rows / H).astype(np.int64), self.grid - 1)
        cell_cols = np.minimum(((np.arange(W) + 0.5) * cols / W).astype(np.int64), self.grid - 1)
        pooled = _pool(keys.reshape(H, W), codes, cell_rows, cell_cols, (self.grid, self.grid))
        rng = np.random.default_rng(_seed(self.config.seed, truth.key, "embedding"))
        pooled += rng.normal(0.0, self.config.code_noise / np.sqrt(self.dim), pooled.shape)
        valid = np.zeros((self.grid, self.grid), bool)
        valid[: int(np.ceil(rows)), : int(np.ceil(cols))] = True
        pooled[~valid] = 0.0
        return np.ascontiguousarray(pooled.transpose(2, 0, 1), dtype=np.float32)

    def encode(self, images: np.ndarray) -> torch.Tensor:
        out = []
        for im in np.asarray(images):
            truth = self.registry.lookup(im)
            emb = self.embed(truth)
            self.registry.note_embedding(emb, truth)
            out.append(emb)
        return torch.from_numpy(np.stack(out))

    def set_image(self, rgb: np.ndarray) -> None:
        truth = self.registry.lookup(np.asarray(rgb))
        self._truth, self._hw = truth, truth.part.shape

    def set_embedding(self, embedding, image_hw: tuple[int, int]) -> None:
        emb = embedding.detach().cpu().numpy() if isinstance(embedding, torch.Tensor) else np.asarray(embedding)
        truth = self.registry.embedded(emb.reshape(self.dim, self.grid, self.grid), self)
        if tuple(truth.part.shape) != (int(image_hw[0]), int(image_hw[1])):
            raise BsbError(f"the oracle SAM was told the image is {tuple(image_hw)} but its ground truth is "
                           f"{truth.part.shape}", "bad_request")
        self._truth, self._hw = truth, truth.part.shape

    # ----- prompting --------------------------------------------------------------------------
    def predict(self, points=None, labels=None, boxes=None, mask_input=None, multimask: bool = True) -> MaskSet:
        """Three masks (piece, part, object) per prompt; boxes and mask inputs are not modelled."""
        if self._truth is None:
            raise BsbError("SAM has no image: call set_image or set_embedding before predict", "bad_request")
        if points is None:
            raise BsbError("the oracle SAM answers point prompts only", "bad_request")
        points = np.asarray(points, np.float64)
        points = points.reshape(len(points), -1, 2)
        labels = np.asarray(labels).reshape(len(points), -1)
        t = self._truth
        H, W = t.part.shape
        masks = np.zeros((len(points), 3, H, W), bool)
        scores = np.zeros((len(points), 3), np.float32)
        for n in range(len(points)):
            masks[n], scores[n] = self._answer(points[n], labels[n])
        if not multimask:
            masks, scores = masks[:, 1:2], scores[:, 1:2]
        return MaskSet(masks, scores, np.zeros((len(points), masks.shape[1], 0, 0), np.float32))

    def _answer(self, points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self._truth
        H, W = t.part.shape
        obj = t.part >= 0
        piece, part = np.zeros((H, W), bool), np.zeros((H, W), bool)
        scores = np.array([0.9, 0.88, 0.95], np.float32)
        positives = [p for p, lab in zip(points, labels) if lab == 1]
        for i, xy in enumerate(positives):
            r, c = _pixel(xy, H, W)
            here_part, here_piece = int(t.part[r, c]), int(t.piece[r, c])
            if here_part < 0:
                continue
            pc, pt = t.piece == here_piece, t.part == here_part
            other = self._hesitation(r, c) if i == 0 else None
            if other is None and i == 0:
                other = self._error(points, labels, r, c)
            if other is not None:
                kind, label = other
                scores[:2] = 0.75
                if kind == "swap":
                    pc = pt = t.part == label
                else:
                    pc, pt = pc | (t.part == label), pt | (t.part == label)
            piece |= pc
            part |= pt
        negatives = [p for p, lab in zip(points, labels) if lab == 0]
        obj_level = obj.copy()
        for xy in negatives:
            r, c = _pixel(xy, H, W)
            if t.part[r, c] < 0:
                continue
            cut_piece = t.piece == t.piece[r, c]
            piece &= ~cut_piece
            part &= ~cut_piece
            obj_level &= t.part != t.part[r, c]
        if not part.any():
            scores[:] = 0.0
        return np.stack([piece, part, obj_level | part]), scores

    def _hesitation(self, r: int, c: int) -> tuple[str, int] | None:
        """Merge with another region that fills `merge_share` of the window within `edge_px`."""
        t, e = self._truth, self.config.edge_px
        here = t.part[r, c]
        window = t.part[max(0, r - e):r + e + 1, max(0, c - e):c + e + 1].ravel()
        others = window[(window != here) & (window >= 0)]
        if len(others) == 0 or len(others) < self.config.merge_share * len(window):
            return None
        values, counts = np.unique(others, return_counts=True)
        return "merge", int(values[np.argmax(counts)])

    def _error(self, points: np.ndarray, labels: np.ndarray, r: int, c: int) -> tuple[str, int] | None:
        """With probability `error_rate`: a neighbouring part instead of (or merged with) the clicked one."""
        cfg, t = self.config, self._truth
        if cfg.error_rate <= 0:
            return None
        rng = np.random.default_rng(_seed(cfg.seed, t.key, np.round(points, 1).tobytes().hex(), labels.tobytes().hex()))
        if rng.random() >= cfg.error_rate:
            return None
        e = cfg.error_px
        window = t.part[max(0, r - e):r + e + 1, max(0, c - e):c + e + 1].ravel()
        others = window[(window != t.part[r, c]) & (window >= 0)]
        if len(others) == 0:
            return None
        values, counts = np.unique(others, return_counts=True)
        return ("swap" if rng.random() < 0.5 else "merge"), int(values[np.argmax(counts)])


def _pixel(xy: np.ndarray, H: int, W: int) -> tuple[int, int]:
    return int(np.clip(np.floor(xy[1]), 0, H - 1)), int(np.clip(np.floor(xy[0]), 0, W - 1))


def oracle_models(registry: Registry, features: PlantedConfig = PlantedConfig(),
                  segmenter: SegmenterConfig = SegmenterConfig(), profile: str = "cpu", seed: int = 0,
                  shuffle: bool = False):
    """`engine.pipeline.Models` of oracle teachers for `registry`'s label space."""
    from engine.pipeline import Models

    return Models(OracleFeatures(registry, features, seed, shuffle=shuffle), OracleSam(registry, segmenter), profile)
