"""Image feature grid and nearest-pixel search without a full-resolution feature image.

BSB's reference code upsamples DINO features to H x W x D (about 4 GB for one megapixel). Here the grid
stays coarse: features are sampled bilinearly (the same values `F.interpolate(..., align_corners=False)`
would give) only at the centres of a bounded *search lattice* of pixel blocks, only for blocks that touch
a restricting mask, and are normalised once. A chosen block maps back to one real pixel: the pixel inside
the mask nearest the block's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import BsbError

FEATURE_BUDGET_BYTES = 128 * 2**20  # lattice features (cells x D float32) never exceed this
SIM_CHUNK_ELEMENTS = 2**24  # largest similarity block computed at once (64 MiB of float32)


@dataclass(frozen=True)
class FeatureGrid:
    """A (D, h, w) feature grid that covers a whole (W, H) image, unit-normalised per cell."""

    grid: torch.Tensor  # (D, h, w) float32, unit vectors along D
    image_size: tuple[int, int]  # (W, H) of the image frame the grid covers

    @property
    def dim(self) -> int:
        return int(self.grid.shape[0])


@dataclass(frozen=True)
class Lattice:
    """Unit features at the centres of the pixel blocks that touch a mask."""

    features: torch.Tensor  # (L, D) unit rows
    cells: np.ndarray  # (L,) flat indices into the (lh, lw) block layout
    row_edges: np.ndarray  # (lh+1,) pixel row boundaries of the blocks
    col_edges: np.ndarray  # (lw+1,) pixel column boundaries


def to_tensor(x: object, device: torch.device | None = None) -> torch.Tensor:
    """float32 tensor on `device` from a numpy array or tensor (no copy when already right)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device or t.device, dtype=torch.float32)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length; already-unit input is returned as is, so callers can normalise once."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise BsbError(f"features must be a non-empty (N, D) array, got shape {tuple(x.shape)}", "bad_array")
    probe = x[:: max(1, x.shape[0] // 64)]
    if torch.allclose(probe.norm(dim=1), torch.ones(1, device=x.device), atol=1e-3):
        return x
    return F.normalize(x, dim=1, eps=1e-8)


def feature_grid(features: object, image_size: tuple[int, int], device: torch.device | None = None) -> FeatureGrid:
    """Wrap a DINO output ((D,h,w) or (1,D,h,w)) for an image of `image_size` = (W, H)."""
    t = to_tensor(features, device)
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise BsbError(f"image features must be (D, h, w) or (1, D, h, w), got {tuple(t.shape)}", "bad_array")
    return FeatureGrid(F.normalize(t, dim=0, eps=1e-8).contiguous(), (int(image_size[0]), int(image_size[1])))


def sample(grid: FeatureGrid, xy: np.ndarray) -> torch.Tensor:
    """Unit features at continuous image points xy (N, 2) (pixel centre of (i, j) is (i+.5, j+.5))."""
    W, H = grid.image_size
    pts = torch.as_tensor(np.asarray(xy, dtype=np.float32).reshape(-1, 2), device=grid.grid.device)
    norm = torch.stack([2 * pts[:, 0] / W - 1, 2 * pts[:, 1] / H - 1], dim=1)
    out = []
    step = max(1, SIM_CHUNK_ELEMENTS // max(1, grid.dim))
    for s in range(0, len(norm), step):
        g = norm[s:s + step].view(1, 1, -1, 2)
        v = F.grid_sample(grid.grid[None], g, mode="bilinear", padding_mode="border", align_corners=False)
        out.append(v[0, :, 0].T)
    return F.normalize(torch.cat(out) if out else grid.grid.new_zeros((0, grid.dim)), dim=1, eps=1e-8)


def lattice_side(grid: FeatureGrid, upsample: int = 4, min_side: int = 128) -> tuple[int, int]:
    """(lh, lw): a few blocks per grid cell, never more blocks than pixels nor features than the budget."""
    W, H = grid.image_size
    _, h, w = grid.grid.shape
    longest = min(max(W, H), max(min_side, upsample * max(h, w)))
    max_cells = max(1, FEATURE_BUDGET_BYTES // (4 * grid.dim))
    longest = min(longest, int(np.sqrt(max_cells * max(W, H) / min(W, H))))
    lw = max(1, min(W, round(longest * W / max(W, H))))
    lh = max(1, min(H, round(longest * H / max(W, H))))
    return lh, lw


def build_lattice(grid: FeatureGrid, mask: np.ndarray | None = None, upsample: int = 4) -> Lattice:
    """The search lattice restricted to blocks that contain at least one pixel of `mask` (None: all)."""
    W, H = grid.image_size
    lh, lw = lattice_side(grid, upsample)
    row_edges = np.round(np.linspace(0, H, lh + 1)).astype(np.int64)
    col_edges = np.round(np.linspace(0, W, lw + 1)).astype(np.int64)
    if mask is None:
        touched = np.ones((lh, lw), bool)
    else:
        check_mask(mask, grid.image_size, "mask")
        rows = np.logical_or.reduceat(mask, row_edges[:-1], axis=0)
        touched = np.logical_or.reduceat(rows, col_edges[:-1], axis=1)
    cells = np.flatnonzero(touched)
    r, c = np.divmod(cells, lw)
    centres = np.stack([(col_edges[c] + col_edges[c + 1]) / 2, (row_edges[r] + row_edges[r + 1]) / 2], axis=1)
    return Lattice(sample(grid, centres), cells, row_edges, col_edges)


def check_mask(mask: np.ndarray, image_size: tuple[int, int], what: str) -> None:
    W, H = image_size
    if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.shape != (H, W):
        shape = getattr(mask, "shape", None)
        raise BsbError(f"{what} must be a ({H}, {W}) bool array matching the image, got {shape}", "bad_array")


def block_pixel(lattice: Lattice, cell: int, mask: np.ndarray | None) -> tuple[int, int]:
    """The pixel (column, row) inside `mask` nearest the centre of lattice block `cell`."""
    lw = len(lattice.col_edges) - 1
    r, c = divmod(int(cell), lw)
    r0, r1 = lattice.row_edges[r], lattice.row_edges[r + 1]
    c0, c1 = lattice.col_edges[c], lattice.col_edges[c + 1]
    cy, cx = (r0 + r1) / 2 - 0.5, (c0 + c1) / 2 - 0.5  # centre in pixel-index units
    if mask is None:
        return int(np.clip(round(cx), c0, c1 - 1)), int(np.clip(round(cy), r0, r1 - 1))
    ys, xs = np.nonzero(mask[r0:r1, c0:c1])
    if len(ys) == 0:
        raise BsbError("internal: a lattice block without mask pixels was chosen", "internal")
    i = int(np.argmin((ys + r0 - cy) ** 2 + (xs + c0 - cx) ** 2))
    return int(xs[i] + c0), int(ys[i] + r0)


def nearest_rows(queries: torch.Tensor, bank: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each unit query row, the index of the most similar unit row of `bank` and the cosine."""
    step = max(1, SIM_CHUNK_ELEMENTS // max(1, len(bank)))
    idx, sims = [], []
    for s in range(0, len(queries), step):
        best = (queries[s:s + step] @ bank.T).max(dim=1)
        idx.append(best.indices.cpu().numpy())
        sims.append(best.values.cpu().numpy())
    return np.concatenate(idx), np.concatenate(sims)


def top_k(query: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of `bank` most similar to one unit `query` (D,), best first, with their cosines."""
    sim = bank @ query
    k = min(int(k), len(bank))
    best = torch.topk(sim, k)
    return best.indices.cpu().numpy(), best.values.cpu().numpy()
