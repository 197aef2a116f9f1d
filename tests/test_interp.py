"""interp: attribute rendering by hand, gradients, surface points and grid pooling against dense pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import BsbError
from engine.interp import interpolate, pool_images, pool_to_grid, pool_views, sample_pixels, surface_points

# Two triangles of a unit square, and a 1x2x2 "render" of them written by hand.
VERTS = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
FACES = torch.tensor([[0, 1, 2], [0, 2, 3]])
FACE_ID = torch.tensor([[[0, 1], [-1, 0]]], dtype=torch.int32)
BARY = torch.tensor([[[[1.0, 0, 0], [0.2, 0.3, 0.5]], [[0, 0, 0], [0.25, 0.25, 0.5]]]])


def random_raster(views: int, size: int, n_faces: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random face-id image with a blob of background and random normalised barycentrics."""
    g = torch.Generator().manual_seed(seed)
    face_id = torch.randint(0, n_faces, (views, size, size), generator=g)
    face_id[torch.rand(views, size, size, generator=g) < 0.35] = -1
    bary = torch.rand(views, size, size, 3, generator=g)
    return face_id, bary / bary.sum(-1, keepdim=True)


def test_interpolate_matches_hand_computed_values():
    attr = torch.tensor([[1.0, 10], [2, 20], [3, 30], [4, 40]])
    out = interpolate(attr, FACES, FACE_ID, BARY)
    assert out.shape == (1, 2, 2, 2)
    assert torch.allclose(out[0, 0, 0], torch.tensor([1.0, 10]))
    # face 1 = (0,2,3): 0.2*1 + 0.3*3 + 0.5*4 = 3.1
    assert torch.allclose(out[0, 0, 1], torch.tensor([3.1, 31.0]))
    assert torch.equal(out[0, 1, 0], torch.zeros(2))  # background
    # face 0 = (0,1,2): 0.25*1 + 0.25*2 + 0.5*3 = 2.25
    assert torch.allclose(out[0, 1, 1], torch.tensor([2.25, 22.5]))


def test_gradient_reaches_the_attribute():
    attr = torch.zeros(4, 1, requires_grad=True)
    interpolate(attr, FACES, FACE_ID, BARY).sum().backward()
    # d(sum)/d(attr_v) = total barycentric weight the vertex receives over covered pixels
    expected = torch.tensor([1.0 + 0.2 + 0.25, 0.25, 0.3 + 0.5, 0.5])
    assert torch.allclose(attr.grad[:, 0], expected)


def test_surface_points_equal_rendered_positions():
    face_id, bary = random_raster(2, 12, 2, seed=1)
    points, pixel_index = surface_points(VERTS, FACES, face_id, bary)
    dense = interpolate(VERTS, FACES, face_id, bary).reshape(-1, 3)
    assert points.shape[0] == int((face_id >= 0).sum())
    assert torch.allclose(points, dense[pixel_index])
    assert pixel_index.max() < 2 * 12 * 12


@pytest.mark.parametrize("size,grid", [(32, (8, 8)), (28, (2, 4))])
def test_pooling_equals_dense_render_then_average_pooling(size, grid):
    face_id, bary = random_raster(3, size, 2, seed=2)
    attr = torch.randn(4, 5)
    dense = interpolate(attr, FACES, face_id, bary)  # (B,H,W,C), zeros on background
    pools = pool_views(face_id, grid)
    pooled = pool_images(pools, dense)  # mean over covered pixels
    coverage = torch.stack([p.coverage.reshape(grid) for p in pools])
    kernel = (size // grid[0], size // grid[1])
    reference = F.avg_pool2d(dense.permute(0, 3, 1, 2), kernel)
    assert torch.allclose(pooled * coverage[:, None], reference, atol=1e-5)
    mask_fraction = F.avg_pool2d((face_id >= 0).float()[:, None], kernel)[:, 0]
    assert torch.allclose(coverage, mask_fraction)


def test_uneven_grid_assigns_pixels_by_their_centre():
    face_id, bary = random_raster(1, 10, 2, seed=3)
    attr = torch.randn(4, 2)
    dense = interpolate(attr, FACES, face_id, bary)[0].numpy()
    pool = pool_to_grid(face_id[0], (3, 4))
    pooled = pool_images([pool], torch.from_numpy(dense)[None])[0].numpy()
    covered = face_id[0].numpy() >= 0
    for r in range(3):
        for c in range(4):
            rows = [j for j in range(10) if int((j + 0.5) * 3 / 10) == r]
            cols = [i for i in range(10) if int((i + 0.5) * 4 / 10) == c]
            cell = np.ix_(rows, cols)
            n = covered[cell].sum()
            expected = dense[cell][covered[cell]].mean(0) if n else np.zeros(2)
            assert np.allclose(pooled[:, r, c], expected, atol=1e-5)
            assert np.isclose(pool.coverage[r * 4 + c].item(), n / covered[cell].size)


def test_sampled_subset_is_stratified_and_bounded():
    face_id, _ = random_raster(1, 64, 2, seed=4)
    pool = pool_to_grid(face_id[0], (8, 8))
    covered_cells = int((pool.counts > 0).sum())
    positions, weight = sample_pixels(pool, budget=4 * covered_cells, generator=torch.Generator().manual_seed(0))
    cells = pool.cell[positions]
    kept = torch.bincount(cells, minlength=64)
    assert torch.equal(kept, torch.clamp(pool.counts, max=4))  # every covered cell, at most 4 pixels
    sums = torch.zeros(64).index_add(0, cells, weight)
    assert torch.allclose(sums[pool.counts > 0], torch.ones(covered_cells))  # an average per cell
    assert torch.all(cells[1:] >= cells[:-1])
    again, _ = sample_pixels(pool, budget=4 * covered_cells, generator=torch.Generator().manual_seed(0))
    assert torch.equal(positions, again)
    everything, full_weight = sample_pixels(pool, budget=pool.n_pixels)
    assert torch.equal(everything, torch.arange(pool.n_pixels)) and torch.equal(full_weight, pool.weight)


def test_bad_shapes_are_reported():
    with pytest.raises(BsbError, match="bary"):
        interpolate(torch.zeros(4, 1), FACES, FACE_ID, BARY[..., :2])
    with pytest.raises(BsbError, match="grid"):
        pool_to_grid(FACE_ID[0], (4, 4))
