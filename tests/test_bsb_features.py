"""Feature grid sampling and the bounded search lattice, against direct computations."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.bsb import features as ft


def test_sample_equals_full_resolution_bilinear_upsampling():
    rng = np.random.default_rng(1)
    grid = rng.normal(size=(8, 5, 7)).astype(np.float32)
    W, H = 35, 20
    fg = ft.feature_grid(grid, (W, H))
    full = F.interpolate(fg.grid[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    ys, xs = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    got = ft.sample(fg, np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1))
    want = F.normalize(full.reshape(8, -1).T, dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lattice_finds_the_planted_pixel_inside_the_mask_only():
    W, H, D = 640, 480, 16
    rng = np.random.default_rng(2)
    grid = rng.normal(size=(D, 12, 16)).astype(np.float32)
    fg = ft.feature_grid(grid, (W, H))
    mask = np.zeros((H, W), bool)
    mask[100:300, 50:400] = True
    lattice = ft.build_lattice(fg, mask)
    assert len(lattice.features) < (len(lattice.row_edges) - 1) * (len(lattice.col_edges) - 1)
    target = ft.sample(fg, np.array([[200.5, 150.5]]))  # a feature planted at a point inside the mask
    idx, sim = ft.nearest_rows(target, lattice.features)
    x, y = ft.block_pixel(lattice, lattice.cells[idx[0]], mask)
    assert mask[y, x] and abs(x - 200) < 10 and abs(y - 150) < 10 and sim[0] > 0.99
    outside = ft.sample(fg, np.array([[600.5, 450.5]]))  # best match lies outside: the answer stays inside
    idx, _ = ft.nearest_rows(outside, lattice.features)
    x, y = ft.block_pixel(lattice, lattice.cells[idx[0]], mask)
    assert mask[y, x]


def test_lattice_features_respect_the_memory_budget():
    fg = ft.feature_grid(np.ones((1024, 64, 64), np.float32), (6000, 4000))
    lh, lw = ft.lattice_side(fg)
    assert lh * lw * 1024 * 4 <= ft.FEATURE_BUDGET_BYTES and lw > lh
