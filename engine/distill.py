"""Distilling 2D teacher features (DINOv2, SAM) into a feature field on the mesh surface.

The caller rasterizes the views once; here every view gets its covered pixels' surface points and a
pixel -> feature-grid averaging (engine.interp.GridPool), both built once. A training step evaluates
the field only at a bounded, cell-stratified random subset of the surface points of a few views, pools
them onto the teacher's grid with a sparse matmul per view and takes the MSE over well-covered cells. The
vertex count never enters a step, so a 1M-vertex mesh trains as fast as a 50k one; vertices are
evaluated once at the end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from engine.errors import BsbError, Cancelled, ImageError
from engine.field import FeatureField, FieldConfig, evaluate_vertices
from engine.interp import GridPool, pool_views, sample_pixels, surface_points

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


@dataclass(frozen=True)
class DistillConfig:
    """Training schedule. `steps` wins over `epochs` (one epoch = every view once). A grid cell
    enters the loss only if at least `min_cell_coverage` of its pixels show the mesh, because the
    teacher's feature for a mostly-background cell describes the background. `points_per_view`
    bounds the surface points evaluated per view and step (at least one per covered cell).
    `eval_chunk` keeps the final vertex evaluation of the paper's DINO field near 0.4 GiB of
    activations (65,536 vertices at a time would take about 1.5 GiB)."""

    steps: int | None = None
    epochs: float = 3.0
    views_per_step: int = 4
    lr: float = 1e-3
    seed: int = 0
    min_cell_coverage: float = 0.5
    points_per_view: int = 1024
    eval_chunk: int = 16384

    def __post_init__(self) -> None:
        positive = {"views_per_step": self.views_per_step, "points_per_view": self.points_per_view,
                    "eval_chunk": self.eval_chunk, "lr": self.lr, "epochs": self.epochs}
        if self.steps is not None:
            positive["steps"] = self.steps
        bad = [f"{name}={value}" for name, value in positive.items() if not value > 0]
        if not 0.0 <= self.min_cell_coverage <= 1.0:
            bad.append(f"min_cell_coverage={self.min_cell_coverage}")
        if bad:
            raise BsbError(
                f"distillation settings out of range ({', '.join(bad)}); "
                "counts, lr and epochs must be positive and min_cell_coverage within [0, 1]",
                "bad_request",
            )

    def total_steps(self, n_views: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return max(1, math.ceil(self.epochs * n_views / self.views_per_step))


@dataclass(frozen=True)
class _View:
    pool: GridPool
    points: torch.Tensor  # (P,3) surface points in the pool's pixel order
    cells: torch.Tensor  # (n,) long, cells that enter the loss
    targets: torch.Tensor  # (n, D) normalised targets of those cells


def _check_inputs(vertices: torch.Tensor, faces: torch.Tensor, face_id, targets: torch.Tensor, out_dim: int) -> None:
    if vertices.dim() != 2 or vertices.shape[1] != 3:
        raise BsbError(f"vertices must be (V,3); got {tuple(vertices.shape)}", "bad_array")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise BsbError(f"faces must be (F,3); got {tuple(faces.shape)}", "bad_array")
    if targets.dim() != 4 or targets.shape[0] != face_id.shape[0]:
        raise BsbError(
            f"targets must be (B,D,h,w) with one map per rendered view (B={face_id.shape[0]}); "
            f"got {tuple(targets.shape)}",
            "bad_array",
        )
    if targets.shape[1] != out_dim:
        raise BsbError(
            f"targets have {targets.shape[1]} channels but the field outputs {out_dim}; set FieldConfig.out_dim",
            "bad_array",
        )


def _prepare_views(vertices, faces, raster, targets, min_coverage) -> list[_View]:
    """Per view: the pooling, its surface points and the target rows of the cells in the loss."""
    face_id = torch.as_tensor(np.asarray(raster.face_id)).long()
    bary = torch.as_tensor(np.asarray(raster.bary)).float()
    points, pixel_index = surface_points(vertices, faces, face_id, bary)  # all views, ascending pixels
    pixels_per_view = face_id.shape[1] * face_id.shape[2]
    views = []
    for b, pool in enumerate(pool_views(face_id, (targets.shape[2], targets.shape[3]))):
        rows = torch.searchsorted(pixel_index, pool.pixel_index + b * pixels_per_view)  # the pool's order
        cells = torch.nonzero((pool.counts > 0) & (pool.coverage >= min_coverage)).squeeze(1)
        view_targets = targets[b].reshape(targets.shape[1], -1).t()[cells].float()
        views.append(_View(pool, points[rows], cells, view_targets))
    return views


def _view_squared_error(
    field: FeatureField, view: _View, budget: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Sum of squared errors over the view's loss cells, from a bounded sample of its surface points."""
    positions, weight = sample_pixels(view.pool, budget, generator)
    cells_total = view.pool.grid[0] * view.pool.grid[1]
    matrix = torch.sparse_coo_tensor(
        torch.stack([view.pool.cell[positions], torch.arange(positions.numel())]), weight,
        (cells_total, positions.numel()), is_coalesced=True, check_invariants=False,
    )
    pooled = torch.sparse.mm(matrix.to(device), field.forward_normalized(view.points[positions].to(device)))
    return torch.sum((pooled[view.cells.to(device)] - view.targets.to(device)) ** 2)


def train_field(
    mesh_vertices,
    faces,
    raster,
    targets: torch.Tensor,
    field_config: FieldConfig,
    config: DistillConfig = DistillConfig(),
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    on_step: Callable[[int, FeatureField], None] | None = None,
) -> FeatureField:
    """Fit a field so that its rendering, pooled to the teacher's grid, matches `targets (B,D,h,w)`.

    `raster` holds the B views (face_id, bary) the targets were computed from; the grid covers the
    whole image. Progress runs from 0 to 0.95 (the rest belongs to the vertex evaluation in `distill`).
    `on_step(steps_done, field)` after every step lets a benchmark read a quality curve from one run.
    """
    device = torch.device(device)
    vertices = torch.as_tensor(np.asarray(mesh_vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(faces)).long()
    targets = torch.as_tensor(targets).detach().cpu()  # a GPU teacher's output; rows move per step
    _check_inputs(vertices, faces, raster.face_id, targets, field_config.out_dim)
    if progress is not None:
        progress(0.0, f"preparing {targets.shape[0]} views for distillation")

    views = _prepare_views(vertices, faces, raster, targets, config.min_cell_coverage)
    views = [v for v in views if v.cells.numel() > 0]
    if not views:
        raise BsbError(
            "the mesh covers too little of every rendered view to learn from (it may be only a few thin faces, "
            "or a small part far from the rest); check for stray geometry and that the faces have area",
            "bad_array",
        )
    field = FeatureField(field_config, seed=config.seed)
    field.fit_output_stats(torch.cat([v.targets for v in views]))
    views = [_View(v.pool, v.points, v.cells, field.normalize(v.targets)) for v in views]
    field.to(device).train()
    optimizer = torch.optim.Adam(field.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)

    total = config.total_steps(len(views))
    if progress is not None:
        progress(0.0, f"distilling: {total} steps over {len(views)} views")
    order: list[int] = []
    last_report = time.monotonic()
    for step in range(total):
        if len(order) < config.views_per_step:
            order += torch.randperm(len(views), generator=generator).tolist()
        batch = [views[i] for i in order[: config.views_per_step]]
        del order[: config.views_per_step]
        # One backward per view (gradients accumulate to the batch MSE): bounded memory, and a cancel
        # lands within one view's work instead of a whole step's.
        elements = sum(v.targets.numel() for v in batch)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for view in batch:
            if cancel is not None and cancel():
                raise Cancelled()
            part = _view_squared_error(field, view, config.points_per_view, generator, device) / elements
            part.backward()
            loss += part.item()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1, field)
        now = time.monotonic()
        if progress is not None and (now - last_report > 0.5 or step == total - 1):
            progress(0.95 * (step + 1) / total, f"distilling: step {step + 1}/{total}, loss {loss:.4f}")
            last_report = now
    return field


def distill(
    mesh_vertices,
    faces,
    raster,
    targets: torch.Tensor,
    field_config: FieldConfig,
    config: DistillConfig = DistillConfig(),
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> tuple[FeatureField, torch.Tensor]:
    """`train_field`, then the field at every vertex: `(field on device, (V,D) float32 on the CPU)`.

    Deterministic for a given `config.seed` on the CPU.
    """
    field = train_field(mesh_vertices, faces, raster, targets, field_config, config, device, progress, cancel)
    vertices = np.asarray(mesh_vertices)
    if progress is not None:
        progress(0.95, f"evaluating the field at {vertices.shape[0]} vertices")
    vertex_features = evaluate_vertices(field, vertices, config.eval_chunk, device, cancel)
    if progress is not None:
        progress(1.0, "distillation done")
    return field, vertex_features


def teacher_targets(
    teacher: Callable[[np.ndarray], torch.Tensor],
    images,
    batch: int = 8,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> torch.Tensor:
    """Run a teacher (uint8 images `(b,H,W,3)` -> feature maps `(b,D,h,w)`) over all views in batches.

    Returns `(B,D,h,w)` float32 on the CPU, filled in place so only one copy of the targets exists.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ImageError(f"teacher images must be (B,H,W,3) uint8; got {images.shape} {images.dtype}")
    out: torch.Tensor | None = None
    with torch.no_grad():
        for start in range(0, images.shape[0], batch):
            if cancel is not None and cancel():
                raise Cancelled()
            maps = torch.as_tensor(teacher(images[start : start + batch])).float().cpu()
            if out is None:
                out = torch.empty(images.shape[0], *maps.shape[1:])
            out[start : start + maps.shape[0]] = maps
            if progress is not None:
                done = min(images.shape[0], start + batch)
                progress(done / images.shape[0], f"teacher features: {done}/{images.shape[0]} views")
    if out is None:
        raise ImageError("no images were given to the teacher; render at least one view")
    return out
