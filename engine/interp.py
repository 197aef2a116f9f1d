"""Per-vertex attributes into rendered views, differentiably, and pixels onto a feature grid.

The rasterizer runs once without gradients (face id + barycentrics); everything here is plain torch
indexing on top of it, so gradients reach the per-vertex attribute (or the field that produced the
surface points) and never the geometry, which is fixed during distillation.

Pixel convention (docs/ARCHITECTURE.md): pixel (col i, row j) has its centre at (i+0.5, j+0.5). A
feature grid of (h, w) cells covers the whole image; a pixel belongs to the cell that contains its
centre, so when H and W are multiples of h and w a cell is exactly an average-pooling window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.errors import BsbError


def _as_long(array, device: torch.device | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(array, device=device)
    return tensor.long()


def _as_float(array, device: torch.device | None = None) -> torch.Tensor:
    return torch.as_tensor(array, device=device).float()


def _check_raster(face_id: torch.Tensor, bary: torch.Tensor) -> None:
    if face_id.dim() != 3 or bary.shape != (*face_id.shape, 3):
        raise BsbError(
            f"face_id must be (B,H,W) and bary (B,H,W,3); got {tuple(face_id.shape)} and {tuple(bary.shape)}",
            "bad_array",
        )


def interpolate(attr: torch.Tensor, faces, face_id, bary) -> torch.Tensor:
    """Render a per-vertex attribute `(V,C)` into `(B,H,W,C)` images; zeros on background pixels.

    Only covered pixels are gathered, so the cost follows the silhouette area, not the image size.
    """
    values, covered = _blend_covered(attr, faces, face_id, bary)
    shape = tuple(face_id.shape)
    out = attr.new_zeros(math.prod(shape), attr.shape[1])
    out = out.index_copy(0, covered, values)
    return out.reshape(*shape, attr.shape[1])


def _blend_covered(attr: torch.Tensor, faces, face_id, bary) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentric blend of per-vertex `attr (V,C)` at the covered pixels: `(values (P,C), pixel_index (P,))`."""
    device = attr.device
    faces = _as_long(faces, device)
    face_id = _as_long(face_id, device)
    bary = _as_float(bary, device)
    _check_raster(face_id, bary)
    flat_id = face_id.reshape(-1)
    covered = torch.nonzero(flat_id >= 0).squeeze(1)
    corners = faces[flat_id[covered]]  # (P,3) vertex ids
    weights = bary.reshape(-1, 3)[covered].to(attr.dtype)  # (P,3)
    return (attr[corners] * weights.unsqueeze(-1)).sum(1), covered


def surface_points(vertices, faces, face_id, bary) -> tuple[torch.Tensor, torch.Tensor]:
    """3D points behind the covered pixels: `(points (P,3), pixel_index (P,))`.

    `pixel_index` is the flat index into `B*H*W` (view = index // (H*W)), so results computed at the
    points scatter back into images with `index_copy`.
    """
    return _blend_covered(_as_float(vertices), faces, face_id, bary)


@dataclass(frozen=True)
class GridPool:
    """How one view's covered pixels average onto an (h, w) feature grid; built once per view.

    The pixels are listed in cell order. `weight` is 1/(covered pixels in the pixel's cell), so
    `matrix @ values` (values in the order of `pixel_index`) is the mean over covered pixels of each
    cell; `coverage` is the covered fraction of each cell's pixels (cells with low coverage mix in
    background in the teacher's features and are best left out of a loss).
    """

    height: int
    width: int
    grid: tuple[int, int]
    pixel_index: torch.Tensor  # (P,) long, flat index into H*W, sorted by cell
    cell: torch.Tensor  # (P,) long, flat cell index into h*w, non-decreasing
    weight: torch.Tensor  # (P,) float32
    counts: torch.Tensor  # (h*w,) long, covered pixels per cell
    coverage: torch.Tensor  # (h*w,) float32 in [0, 1]
    matrix: torch.Tensor  # sparse COO (h*w, P)

    @property
    def n_pixels(self) -> int:
        return int(self.pixel_index.numel())


def _cell_of(index: torch.Tensor, size: int, cells: int) -> torch.Tensor:
    """Cell containing the centre (index + 0.5) when `size` pixels are split into `cells` equal cells."""
    return ((2 * index + 1) * cells) // (2 * size)


def pool_views(face_id, grid: tuple[int, int]) -> list[GridPool]:
    """The averaging of each view's covered pixels onto a `grid=(h,w)` grid, for `(B,H,W)` face ids.

    All views are sorted and counted in one vectorised pass; each pool then holds its own slices.
    """
    face_id = _as_long(face_id)
    if face_id.dim() != 3:
        raise BsbError(f"face_id must be (B,H,W); got {tuple(face_id.shape)}", "bad_array")
    views, height, width = face_id.shape
    h, w = int(grid[0]), int(grid[1])
    if not (0 < h <= height and 0 < w <= width):
        raise BsbError(f"feature grid {h}x{w} must be between 1x1 and the image size {height}x{width}", "bad_array")
    cells_per_view, pixels_per_view = h * w, height * width
    row_cell = _cell_of(torch.arange(height), height, h)
    col_cell = _cell_of(torch.arange(width), width, w)
    cell_of_pixel = (row_cell[:, None] * w + col_cell[None, :]).reshape(-1)
    pixels_per_cell = torch.bincount(cell_of_pixel, minlength=cells_per_view).float()

    covered = torch.nonzero(face_id.reshape(-1) >= 0).squeeze(1)
    key = (covered // pixels_per_view) * cells_per_view + cell_of_pixel[covered % pixels_per_view]
    order = torch.argsort(key, stable=True)  # by view, then cell, then pixel
    covered, key = covered[order], key[order]
    counts = torch.bincount(key, minlength=views * cells_per_view)
    weight = 1.0 / counts[key].float()
    per_view = torch.bincount(covered // pixels_per_view, minlength=views).tolist()

    pools, start = [], 0
    for b, n in enumerate(per_view):
        cells = key[start : start + n] - b * cells_per_view
        view_counts = counts[b * cells_per_view : (b + 1) * cells_per_view]
        matrix = torch.sparse_coo_tensor(
            torch.stack([cells, torch.arange(n)]), weight[start : start + n], (cells_per_view, n),
            is_coalesced=True, check_invariants=False,
        )
        pools.append(GridPool(
            height=height,
            width=width,
            grid=(h, w),
            pixel_index=covered[start : start + n] - b * pixels_per_view,
            cell=cells,
            weight=weight[start : start + n],
            counts=view_counts,
            coverage=view_counts.float() / pixels_per_cell,
            matrix=matrix,
        ))
        start += n
    return pools


def pool_to_grid(face_id_view, grid: tuple[int, int]) -> GridPool:
    """`pool_views` for one view's `(H,W)` face ids."""
    face_id_view = _as_long(face_id_view)
    if face_id_view.dim() != 2:
        raise BsbError(f"pool_to_grid takes one view's face ids (H,W); got {tuple(face_id_view.shape)}", "bad_array")
    return pool_views(face_id_view[None], grid)[0]


def pool_images(pools: list[GridPool], images: torch.Tensor) -> torch.Tensor:
    """Average rendered `(B,H,W,C)` images onto each view's grid: `(B,C,h,w)`, zeros in empty cells."""
    if images.dim() != 4 or images.shape[0] != len(pools):
        raise BsbError(f"images must be (B,H,W,C) with B={len(pools)}; got {tuple(images.shape)}", "bad_array")
    out = []
    for pool, image in zip(pools, images):
        values = image.reshape(-1, image.shape[-1])[pool.pixel_index.to(image.device)]
        pooled = torch.sparse.mm(pool.matrix.to(image.device, image.dtype), values)  # (h*w, C)
        out.append(pooled.t().reshape(-1, *pool.grid))
    return torch.stack(out)


def sample_pixels(
    pool: GridPool, budget: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bounded, cell-stratified random subset of a view's covered pixels: `(positions, weight)`.

    Every covered cell keeps `k = max(1, budget // covered cells)` random pixels (all of them if it
    has fewer), so the subset's mean per cell is an unbiased estimate of the full cell mean while the
    number of points stays near `budget` whatever the render resolution. `positions` index the pool's
    pixel list (in cell order) and `weight` is 1/(kept pixels in the cell). When the whole view fits
    in the budget the precomputed weights are returned unchanged.
    """
    if pool.n_pixels <= budget:
        return torch.arange(pool.n_pixels), pool.weight
    covered_cells = int((pool.counts > 0).sum())
    keep = max(1, budget // covered_cells)
    noise = torch.rand(pool.n_pixels, generator=generator, dtype=torch.float64)
    order = torch.argsort(pool.cell.double() + noise)  # cells stay in order, random order inside each
    start = torch.cumsum(pool.counts, 0) - pool.counts
    rank = torch.arange(pool.n_pixels) - start[pool.cell[order]]
    positions = order[rank < keep]
    positions = positions.sort().values  # back to cell order: rows stay non-decreasing
    kept = torch.clamp(pool.counts, max=keep)
    weight = 1.0 / kept[pool.cell[positions]].float()
    return positions, weight

