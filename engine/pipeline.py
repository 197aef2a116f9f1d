"""The glue: a mesh and an image in, BSB / iSeg answers out, calling the other modules in order.

`prepare_mesh` is the expensive per-mesh step (render views, run the teachers, distil DINO and SAM fields,
train the iSeg decoder) and is cached on disk; `prepare_image` runs the 2D models once per image (cached
too). After that every click is cheap: `match_image`, `refine`, `match_all`, `shape_to_image`.
`Session` binds a profile, device, models and cache so the CLI and the protocol server share one path.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine import __version__
from engine.bsb.result import MatchResult
from engine.cache import Cache, make_key
from engine.errors import BsbError, Cancelled
from engine.images import ReferenceImage
from engine.mesh import Mesh

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]
DinoReady = Callable[[torch.Tensor], None]  # gets the (V, D) DINO field as soon as it exists (engine.provisional)


@dataclass(frozen=True)
class PrepareSettings:
    """How much work preparation does. Part of every cache key: change one, recompute."""

    dino_views: int = 100  # renders for the DINO field (uniform on the sphere)
    dino_size: int = 224
    sam_views: int = 24  # renders whose SAM embeddings teach the SAM field and train iSeg (uniform on the sphere)
    sam_size: int = 512
    field_width: int = 256
    field_depth: int = 4
    field_encoding: int = 256  # Fourier features of xyz
    points_per_view: int = 2048  # surface points per view and distillation step
    distill_epochs: float = 3.0
    dino_steps: int | None = None  # None: `distill_epochs` passes over the views
    sam_steps: int | None = None
    iseg: dict[str, Any] = field(default_factory=dict)  # passed to the iSeg trainer's config
    k: int = 100  # BSB candidates
    max_prompts: int | None = None  # cap on the candidate pixels SAM re-segments per click (None: all, as the paper)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PAPER_EXTRA: dict[str, Any] = {
    "dino_steps": 3000, "sam_steps": 3000, "field_encoding": 1024, "points_per_view": 4096,
    "iseg": {"max_clicks": 500, "views_per_click": 100, "attn_dim": 256, "width": 256, "encoder_depth": 8,
             "head_depth": 3, "steps": 6000, "batch_size": 16, "pixels_per_sample": 4096, "lr": 1e-3}}
# iSeg steps / max_clicks: bench/iseg.py --quick --set sweep (steps 300, 600, 1200; max_clicks 100, 200, 400):
# IoU after 1 click 0.877 / 0.872 / 0.881 (s.e. 0.05), after corrections 0.96-0.98, training x1 / x1.4 / x3.
_CPU_EXTRA: dict[str, Any] = {"dino_steps": 100, "sam_steps": 50, "iseg": {"max_clicks": 200, "steps": 300}}
# fast: the cheapest point of the click-data curve on 24 views at 512 px (`bench/iseg.py --quick --oracle-only
# --profile fast --set ...`, oracle teacher, 24 clicks): cpu's iSeg (6 views per click vertex, 200 vertices,
# 300 steps) asks 11,500 prompts per mesh for IoU 0.915 +- 0.033 after 1 click, 0.976 +- 0.003 corrected;
# 2 views, 64 vertices, 1 sub-part and 1 neighbour negative, 200 steps ask 710: 0.918 +- 0.033, 0.979 +- 0.002.
# DINO field steps 50 (with 50 DINO views): the end-to-end oracle curve `bench/views.py --quick --dino 100:100
# 101:100 50:100 25:100 50:50 25:50` gives BSB part IoU +0.040 +- 0.044 (paired per click) against 100 views x
# 100 steps, inside the +0.022 +- 0.031 that a null change (101 views) moves it; see engine.models.profiles.
_FAST_EXTRA: dict[str, Any] = {**_CPU_EXTRA, "dino_steps": 50,
                               "iseg": {"max_clicks": 64, "views_per_click": 2, "second_negative": 1,
                                        "neighbour_negative": 1, "steps": 200}}

# What the model profiles (engine.models.profiles) leave to the pipeline; view counts and sizes come from there.
_EXTRA: dict[str, dict[str, Any]] = {
    # The paper's / reference's sizes (research memo iseg_bsb.md): ~3000 field steps, a 2048-d Fourier
    # encoding (1024 frequencies), 64 x 64 = 4096 surface points per view; iSeg on 3% of the vertices by FPS,
    # ~100 views per click vertex, a deeper and wider decoder trained longer. Not validated on a GPU here.
    "gpu": _PAPER_EXTRA,
    "paper": _PAPER_EXTRA,
    # Chosen from measured quality-vs-seconds curves (bench/sweep.py, oracle teachers): see engine.models.profiles.
    "cpu": _CPU_EXTRA,
    # As `cpu` (field steps; balanced: also the iSeg schedule); view counts come from engine.models.profiles.
    "fast": _FAST_EXTRA,
    "balanced": _CPU_EXTRA,
    # Random weights, for tests and the plumbing check: small enough to prepare in seconds.
    "tiny": {"dino_views": 6, "dino_steps": 20, "sam_steps": 20, "field_encoding": 32, "points_per_view": 256,
             "k": 20, "iseg": {"min_clicks": 8, "max_clicks": 12, "views_per_click": 2, "steps": 6,
                               "attn_dim": 16, "width": 32, "encoder_depth": 1, "head_depth": 1,
                               "pixels_per_sample": 256, "batch_size": 4}},
}


def settings_for(profile: str, **overrides: Any) -> PrepareSettings:
    """The profile's view counts, sizes and field shape, plus the pipeline's own knobs; `overrides` win."""
    from engine.models.profiles import get_profile

    p = get_profile(profile)
    base = dict(dino_views=p.dino_views, dino_size=p.dino_input_size, sam_views=p.sam_views,
                sam_size=p.sam_input_size, field_width=p.field_width, field_depth=p.field_depth,
                distill_epochs=float(p.distill_epochs))
    base.update(_EXTRA.get(profile, {}))
    base.update(overrides)
    return PrepareSettings(**base)


@dataclass
class Models:
    """The two 2D models of a profile, loaded once per process."""

    dino: Any  # engine.models.dino.DinoFeatures
    sam: Any  # engine.models.sam.SamSegmenter
    profile: str

    @property
    def random_weights(self) -> bool:
        return bool(self.dino.random_weights or self.sam.random_weights)

    @property
    def ids(self) -> dict[str, str]:
        return {"dino": self.dino.model_id, "sam": self.sam.model_id}


@dataclass
class PreparedMesh:
    mesh: Mesh
    dino: torch.Tensor  # (V, D) distilled DINOv2 features
    sam: torch.Tensor  # (V, 256) distilled SAM features
    iseg: Any  # engine.iseg.model.ISegModel
    settings: PrepareSettings
    key: str
    cached: bool
    seconds: float


@dataclass
class PreparedImage:
    image: ReferenceImage
    dino: torch.Tensor  # (D, h, w) features of the working image
    sam: torch.Tensor  # (256, g, g) SAM embedding of the working image
    key: str
    cached: bool


@dataclass(frozen=True)
class ImageRegion:
    """shape_to_image's answer, in the original image's pixels."""

    found: bool
    pixel: tuple[float, float] | None
    mask: np.ndarray | None  # (H, W) bool, original resolution
    confidence: float
    match: MatchResult


def _stage(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A progress callback for one stage, mapped into [start, end] of the whole job."""
    if progress is None:
        return None
    return lambda f, msg: progress(start + (end - start) * min(1.0, max(0.0, f)), msg)


def _check(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled()


def mesh_cache_key(mesh: Mesh, models: Models, settings: PrepareSettings) -> str:
    return make_key("mesh", mesh.content_hash(), models.ids, settings.to_dict())


def prepare_mesh(mesh: Mesh, models: Models, settings: PrepareSettings, device: torch.device | str = "cpu",
                 cache: Cache | None = None, progress: Progress | None = None,
                 cancel: CancelCheck | None = None, on_dino: DinoReady | None = None) -> PreparedMesh:
    """Distilled DINO/SAM vertex features and a trained iSeg decoder for `mesh`, from the cache when possible.
    `on_dino` is called with the DINO field before the SAM stages start (not on a cache hit)."""
    from engine.iseg.model import ISegModel

    start = time.monotonic()
    device = torch.device(device)
    key = mesh_cache_key(mesh, models, settings)
    def load(folder: Path, meta: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        dino = torch.from_numpy(np.load(folder / "dino.npy", allow_pickle=False).astype(np.float32))
        iseg = ISegModel.load(folder / "iseg.pt", device)
        if dino.ndim != 2 or len(dino) != mesh.num_vertices or len(iseg.features) != mesh.num_vertices:
            raise ValueError("the stored features do not fit this mesh")
        return dino, iseg

    if cache is not None and (hit := cache.load("mesh", key, load)) is not None:
        dino, iseg = hit
        sam = iseg.features.float().cpu()  # the iSeg file carries the SAM field's vertex features
        if progress:
            progress(1.0, "loaded from the cache")
        return PreparedMesh(mesh, dino, sam, iseg, settings, key, True, time.monotonic() - start)

    dino, sam, iseg = _compute_mesh(mesh, models, settings, device, progress, cancel, on_dino)
    if cache is not None:
        def write(folder: Path) -> None:
            np.save(folder / "dino.npy", dino.numpy().astype(np.float16))
            iseg.save(folder / "iseg.pt")
        cache.put("mesh", key, write, meta={"vertices": mesh.num_vertices, "faces": mesh.num_faces,
                                            "profile": models.profile, "models": models.ids})
    return PreparedMesh(mesh, dino, sam, iseg, settings, key, False, time.monotonic() - start)


def render_views(mesh: Mesh, n: int, size: int, mode: str, cancel: CancelCheck | None = None):
    """Cameras, raster and shaded renders of `mesh`: what the teachers see."""
    from engine.cameras import sphere_views
    from engine.raster import rasterize
    from engine.shading import shade

    cameras = sphere_views(n, mode=mode, seed=0)
    raster = rasterize(mesh.vertices, mesh.faces, cameras, size, cancel=cancel)
    return cameras, raster, shade(raster)


def _compute_mesh(mesh: Mesh, models: Models, settings: PrepareSettings, device: torch.device,
                  progress: Progress | None, cancel: CancelCheck | None, on_dino: DinoReady | None = None):
    from engine.distill import distill, teacher_targets
    from engine.iseg import ISegConfig, train_iseg
    from engine.iseg.view_segmenters import SamViewSegmenter

    v, f = mesh.vertices, mesh.faces
    if progress:
        progress(0.0, f"rendering {settings.dino_views} views")
    _, raster, images = render_views(mesh, settings.dino_views, settings.dino_size, "uniform", cancel)
    _check(cancel)
    targets = teacher_targets(models.dino, images, progress=_stage(progress, 0.02, 0.15), cancel=cancel)
    config = _field_config(settings, targets.shape[1])
    _, dino = distill(v, f, raster, targets, config, _distill_config(settings, settings.dino_steps), device,
                      _stage(progress, 0.15, 0.4), cancel)
    del targets, raster, images
    # Rounded to float16 now, as stored in the cache, so a cached and a fresh preparation answer alike.
    dino = _half(dino)
    if on_dino is not None:
        on_dino(dino)

    if progress:
        progress(0.4, f"rendering {settings.sam_views} views for SAM")
    # Uniform, not the reference's front-biased sampling: with few views, the gaussian ones leave the back
    # of the mesh unseen and its vertices unclickable for the iSeg data (bench/sweep.py).
    _, sam_raster, sam_images = render_views(mesh, settings.sam_views, settings.sam_size, "uniform", cancel)
    embeddings = teacher_targets(models.sam.encode, sam_images, batch=2, progress=_stage(progress, 0.4, 0.6),
                                 cancel=cancel)
    config = _field_config(settings, embeddings.shape[1])
    _, sam = distill(v, f, sam_raster, _crop_sam(models.sam, embeddings, settings.sam_size), config,
                     _distill_config(settings, settings.sam_steps), device, _stage(progress, 0.6, 0.75), cancel)

    sam = _half(sam)
    segmenter = SamViewSegmenter(models.sam, embeddings, (settings.sam_size, settings.sam_size))
    iseg = train_iseg(v, f, sam_raster, sam, segmenter, ISegConfig(**settings.iseg), device=device,
                      progress=_stage(progress, 0.75, 1.0), cancel=cancel)
    return dino, sam, iseg


def _half(features: torch.Tensor) -> torch.Tensor:
    return features.detach().cpu().half().float()


def _field_config(settings: PrepareSettings, out_dim: int):
    from engine.field import FieldConfig

    return FieldConfig(width=settings.field_width, depth=settings.field_depth, out_dim=out_dim,
                       encoding_dim=settings.field_encoding)


def _distill_config(settings: PrepareSettings, steps: int | None):
    from engine.distill import DistillConfig

    return DistillConfig(steps=steps, epochs=settings.distill_epochs, points_per_view=settings.points_per_view)


def _crop_sam(sam: Any, embeddings: torch.Tensor, size: int) -> torch.Tensor:
    """The embedding cells that cover the (square) render; SAM pads non-square inputs bottom/right."""
    rows, cols = sam.valid_grid(size, size)
    return embeddings[..., : int(np.ceil(rows)), : int(np.ceil(cols))]


def prepare_image(image: ReferenceImage, models: Models, cache: Cache | None = None,
                  progress: Progress | None = None, cancel: CancelCheck | None = None) -> PreparedImage:
    """DINO features and the SAM embedding of the working image, from the cache when possible."""
    key = make_key("image", image.content_hash, image.rgb.shape, models.ids)
    if cache is not None and (hit := cache.get_arrays("image", key, ("dino", "sam"))) is not None:
        arrays, _ = hit
        return PreparedImage(image, torch.from_numpy(arrays["dino"]), torch.from_numpy(arrays["sam"]), key, True)
    if progress:
        progress(0.0, "DINOv2 features of the image")
    dino = models.dino(image.rgb[None])[0]
    _check(cancel)
    if progress:
        progress(0.3, "SAM embedding of the image")
    sam = models.sam.encode(image.rgb[None])[0]
    if cache is not None:
        cache.put_arrays("image", key, {"dino": dino.numpy(), "sam": sam.numpy()},
                         meta={"size": list(image.original_size)})
    if progress:
        progress(1.0, "image ready")
    return PreparedImage(image, dino, sam, key, False)


class _Segmenter:
    """SAM with one image's embedding set, exposing `image_size` (W, H) as BSB's PromptSegmenter needs."""

    def __init__(self, sam: Any, prepared: PreparedImage) -> None:
        rgb = prepared.image.rgb
        sam.set_embedding(prepared.sam, rgb.shape[:2])
        self._sam = sam
        self.image_size = (rgb.shape[1], rgb.shape[0])

    def predict(self, points=None, labels=None, boxes=None, mask_input=None):
        return self._sam.predict(points, labels, boxes, mask_input)


def _bsb_inputs(prepared: PreparedMesh, image: PreparedImage, models: Models):
    from engine.bsb.features import feature_grid

    segmenter = _Segmenter(models.sam, image)
    grid = feature_grid(image.dino, segmenter.image_size, device=prepared.dino.device)
    return segmenter, grid


def _check_vertices(prepared: PreparedMesh, vertices) -> None:
    n = prepared.mesh.num_vertices
    bad = [v for v in vertices if not 0 <= v < n]
    if bad:
        raise BsbError(f"vertex {bad[0]} is out of range: this mesh has {n} vertices", "bad_request")


def _seed(prepared: PreparedMesh) -> Callable[[int], np.ndarray]:
    """iSeg from one positive click at a BSB winner, with the region choice `refine` makes
    (CONNECTED_DEFAULT): above-0.5 islands apart from the winner's piece are set to 0, so the seeded
    selection (p >= 0.5) is the one a click on that vertex would give. The last TIE_SEEDS answers are kept:
    a tie break seeds the winner among them just before the answer does (one decoder pass, not two)."""
    from engine.bsb.matching import TIE_SEEDS
    from engine.iseg.postprocess import select_vertices

    answers: dict[int, np.ndarray] = {}

    def seed(vertex: int) -> np.ndarray:
        vertex = int(vertex)
        if vertex not in answers:
            clicks = [(vertex, True)]
            weights = np.asarray(prepared.iseg.predict(clicks), np.float32)
            keep = select_vertices(weights, prepared.mesh.faces, clicks, "fixed", 0.5)
            answers[vertex] = np.where(keep | (weights < 0.5), weights, 0.0).astype(np.float32)
            if len(answers) > TIE_SEEDS:
                del answers[next(iter(answers))]
        return answers[vertex].copy()

    return seed


def match_image(prepared: PreparedMesh, image: PreparedImage, models: Models, points, labels, box=None,
                min_confidence: float | None = None, progress: Progress | None = None,
                cancel: CancelCheck | None = None) -> MatchResult:
    """BSB for one query (original-image pixels), then iSeg seeded at the winning vertex."""
    from engine.bsb.matching import match

    segmenter, grid = _bsb_inputs(prepared, image, models)
    return match(segmenter, grid, prepared.dino, np.asarray(points, np.float32).reshape(-1, 2),
                 np.asarray(labels, np.int64).reshape(-1), None if box is None else np.asarray(box, np.float32),
                 seed=_seed(prepared), k=prepared.settings.k, min_confidence=min_confidence,
                 max_prompts=prepared.settings.max_prompts,
                 scale=image.image.scale, progress=progress, cancel=cancel)


def refine(prepared: PreparedMesh, clicks: list[tuple[int, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """iSeg from vertex clicks: (V,) probability and the selected region holding the positive clicks."""
    from engine.iseg.postprocess import select_vertices

    _check_vertices(prepared, [v for v, _ in clicks])
    weights = np.asarray(prepared.iseg.predict(list(clicks)), np.float32)
    mask = select_vertices(weights, prepared.mesh.faces, list(clicks))
    return weights, np.asarray(mask, bool)


def match_all(prepared: PreparedMesh, image: PreparedImage, models: Models, max_regions: int | None = None,
              progress: Progress | None = None, cancel: CancelCheck | None = None) -> list[MatchResult]:
    from engine.bsb.match_all import match_all as bsb_match_all

    segmenter, grid = _bsb_inputs(prepared, image, models)
    return bsb_match_all(segmenter, grid, prepared.dino, seed=_seed(prepared), k=prepared.settings.k,
                         scale=image.image.scale, max_regions=max_regions, progress=progress, cancel=cancel)


def shape_to_image(prepared: PreparedMesh, image: PreparedImage, models: Models, vertices: list[int],
                   progress: Progress | None = None, cancel: CancelCheck | None = None,
                   rule: str = "paper") -> ImageRegion:
    """The image region corresponding to a set of mesh vertices (their iSeg part).

    rule "paper": the paper's symmetric BSB (candidates re-segmented by iSeg, ranked by 3D IoU with the
    part); "buddies": the earlier relaxed test (see engine.bsb.shape_to_image).
    """
    from engine.bsb.shape_to_image import shape_to_image as bsb_shape_to_image
    from engine.results import resize_mask

    _check_vertices(prepared, vertices)
    part = np.zeros(prepared.mesh.num_vertices, bool)
    part[list(vertices)] = True
    part |= np.asarray(prepared.iseg.predict([(int(v), True) for v in vertices])) >= 0.5
    segmenter, grid = _bsb_inputs(prepared, image, models)
    result = bsb_shape_to_image(segmenter, grid, prepared.dino, list(vertices), part, seed=_seed(prepared), rule=rule,
                                k=prepared.settings.k, scale=image.image.scale, progress=progress, cancel=cancel)
    mask = None if result.part_mask is None else resize_mask(result.part_mask, image.image.original_size)
    return ImageRegion(result.found, result.winner_pixel, mask, float(result.confidence), result)


# ----------------------------------------------------------------------------------------------------

def load_models(profile: str, models_dir: Path | None, device: torch.device, offline: bool | None = None) -> Models:
    """The profile's DINOv2 and SAM (fetched on first use unless offline); missing weights raise
    ModelMissingError with the command that fetches them."""
    from engine.models.profiles import get_profile
    from engine.models.store import load_profile_models

    dino, sam = load_profile_models(get_profile(profile), models_dir, device, offline)
    return Models(dino, sam, profile)


def default_profile(device: torch.device) -> str:
    """The paper's setting where CUDA makes it affordable; the fast profile on CPUs and Apple GPUs."""
    return "paper" if device.type == "cuda" else "fast"


class Session:
    """One profile on one device with its models (loaded on first use) and cache; the CLI and the server use it."""

    def __init__(self, profile: str | None = None, device: str = "auto", models_dir: Path | None = None,
                 cache_dir: Path | None = None, offline: bool | None = None, settings: PrepareSettings | None = None,
                 use_cache: bool = True, models: Models | None = None) -> None:
        """`models`: ready 2D models (e.g. the evaluation's oracle teachers) instead of the profile's weights."""
        from engine.device import pick_device

        self.device = pick_device(device)
        self.profile = profile or (models.profile if models is not None else default_profile(self.device))
        self.settings = settings or settings_for(self.profile)
        self.models_dir = models_dir
        self.offline = offline
        self.cache = Cache(cache_dir) if use_cache else None
        self._models: Models | None = models

    @property
    def random_weights(self) -> bool:
        return self.profile == "tiny" if self._models is None else self._models.random_weights

    @property
    def models(self) -> Models:
        if self._models is None:
            self._models = load_models(self.profile, self.models_dir, self.device, self.offline)
        return self._models

    def prepare(self, mesh: Mesh, progress: Progress | None = None, cancel: CancelCheck | None = None,
                on_dino: DinoReady | None = None) -> PreparedMesh:
        return prepare_mesh(mesh, self.models, self.settings, self.device, self.cache, progress, cancel, on_dino)

    def set_image(self, image: ReferenceImage, progress: Progress | None = None,
                  cancel: CancelCheck | None = None) -> PreparedImage:
        return prepare_image(image, self.models, self.cache, progress, cancel)

    def match(self, prepared: PreparedMesh, image: PreparedImage, points, labels, box=None,
              min_confidence: float | None = None, progress: Progress | None = None,
              cancel: CancelCheck | None = None) -> MatchResult:
        return match_image(prepared, image, self.models, points, labels, box, min_confidence, progress, cancel)

    def refine(self, prepared: PreparedMesh, clicks: list[tuple[int, bool]]) -> tuple[np.ndarray, np.ndarray]:
        return refine(prepared, clicks)

    def match_all(self, prepared: PreparedMesh, image: PreparedImage, max_regions: int | None = None,
                  progress: Progress | None = None, cancel: CancelCheck | None = None) -> list[MatchResult]:
        return match_all(prepared, image, self.models, max_regions, progress, cancel)

    def shape_to_image(self, prepared: PreparedMesh, image: PreparedImage, vertices: list[int],
                       progress: Progress | None = None, cancel: CancelCheck | None = None,
                       rule: str = "paper") -> ImageRegion:
        return shape_to_image(prepared, image, self.models, vertices, progress, cancel, rule)

    def describe(self) -> dict[str, Any]:
        from engine.device import describe_device

        return {"engine": __version__, "device": str(self.device), "device_name": describe_device(self.device),
                "torch": torch.__version__, "profile": self.profile, "random_weights": self.random_weights}
