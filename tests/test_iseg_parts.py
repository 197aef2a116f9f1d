"""iSeg building blocks with answers known by construction: FPS, Otsu, connected region, clicks, oracle."""

from __future__ import annotations

import numpy as np
import pytest

from engine.cameras import look_at
from engine.iseg.clicks import (ClickSites, accept_confirming, accept_second_clicks, find_click_sites,
                               second_click_partners)
from engine.iseg.fps import farthest_point_sampling
from engine.iseg.postprocess import connected_region, otsu_threshold, select_vertices, threshold_probability
from engine.iseg.view_segmenters import OracleViewSegmenter
from engine.raster import rasterize


def grid_square(n: int, z: float, size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """An n x n vertex grid in the plane z, spanning [-size/2, size/2]^2, two triangles per cell."""
    t = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(t, t)
    v = np.stack([x.ravel(), y.ravel(), np.full(n * n, z)], 1).astype(np.float32)
    i = np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]
    i = i.ravel()
    f = np.concatenate([np.stack([i, i + 1, i + n + 1], 1), np.stack([i, i + n + 1, i + n], 1)])
    return v, f.astype(np.int64)


def test_fps_spreads_points_and_is_deterministic():
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.01, (500, 3))            # a tight cluster...
    far = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]])  # ...and three lone points
    pts = np.concatenate([dense, far])
    idx = farthest_point_sampling(pts, 4, start=0)
    assert idx[0] == 0 and len(set(idx.tolist())) == 4
    assert set(idx[1:].tolist()) == {500, 501, 502}   # the lone points come before any cluster point
    assert np.array_equal(idx, farthest_point_sampling(pts, 4, start=0))
    # greedy property: each new point is the farthest from the chosen set
    grid = rng.uniform(-1, 1, (300, 3))
    idx = farthest_point_sampling(grid, 20)
    for k in range(1, 20):
        d = np.min(np.linalg.norm(grid[:, None] - grid[idx[:k]][None], axis=2), axis=1)
        assert d[idx[k]] == pytest.approx(d.max())
    assert len(farthest_point_sampling(grid, 1000)) == 300


def test_otsu_splits_a_bimodal_sample():
    rng = np.random.default_rng(1)
    low, high = rng.normal(0.2, 0.05, 3000), rng.normal(0.75, 0.05, 1000)
    t = otsu_threshold(np.concatenate([low, high]))
    assert 0.35 < t < 0.6
    mask = threshold_probability(np.concatenate([low, high]), "otsu")
    assert mask[:3000].mean() < 0.01 and mask[3000:].mean() > 0.99
    assert threshold_probability(np.array([0.2, 0.6]), "fixed", 0.5).tolist() == [False, True]


def test_connected_region_keeps_the_clicked_island():
    v, f = grid_square(10, 0.0)
    mask = np.zeros(100, bool)
    mask[[0, 1, 2, 10, 11]] = True          # island at one corner
    mask[[88, 89, 98, 99]] = True           # island at the opposite corner
    region = connected_region(f, mask, [11])
    assert set(np.nonzero(region)[0].tolist()) == {0, 1, 2, 10, 11}
    assert not connected_region(f, mask, [50]).any()   # a seed outside the mask selects nothing
    prob = mask * 0.9 + 0.05
    sel = select_vertices(prob, f, [(99, True), (0, False)])
    assert set(np.nonzero(sel)[0].tolist()) == {88, 89, 98, 99}


def test_a_vertex_behind_another_surface_is_not_clicked():
    front_v, front_f = grid_square(9, 0.3, 1.2)
    back_v, back_f = grid_square(9, -0.3, 0.6)      # hidden by the front square from +Z, visible from -Z
    v = np.concatenate([front_v, back_v])
    f = np.concatenate([front_f, back_f + len(front_v)])
    cams = [look_at((0, 0, 2.0)), look_at((0, 0, -2.0))]
    raster = rasterize(v, f, cams, 64)
    back_centre = 81 + 40
    front_centre = 40
    sites = find_click_sites(v, f, raster, np.array([front_centre, back_centre]))
    pairs = set(zip(sites.view.tolist(), sites.vertex.tolist()))
    assert (0, front_centre) in pairs and (0, back_centre) not in pairs
    assert (1, back_centre) in pairs and (1, front_centre) not in pairs
    # the click lands on the vertex: the pixel's surface point is the vertex itself (within a pixel)
    row = sites.view.tolist().index(0)
    x, y = sites.xy[row]
    assert abs(x - 32) <= 1.0 and abs(y - 32) <= 1.0


def test_second_click_filters():
    first = np.zeros((4, 8, 8), bool)
    first[:, 2:5, 2:5] = True                       # 9 pixels
    grown, shrunk, same = first.copy(), first.copy(), first.copy()
    grown[0, 5:8, 2:5] = True
    shrunk[1, 2:5, 4] = False
    masks = np.stack([grown[0], shrunk[1], same[2], grown[0]])
    scores = np.array([0.9, 0.9, 0.9, 0.3])
    positive = np.array([True, False, True, True])
    # first click inside the first mask; second click where each answer puts (+) or leaves out (-) it
    at = np.array([[[3.5, 3.5], [3.5, 6.5]], [[2.5, 2.5], [4.5, 2.5]], [[3.5, 3.5], [3.5, 6.5]],
                   [[3.5, 3.5], [3.5, 6.5]]], np.float32)
    ok = accept_second_clicks(first, scores, masks, positive, at)
    assert ok.tolist() == [True, True, False, False]    # unchanged mask, low first score rejected
    # a positive that shrinks or a negative that grows is rejected
    assert not accept_second_clicks(first[:1], scores[:1], shrunk[1:2], np.array([True]), at[:1])[0]
    assert not accept_second_clicks(first[:1], scores[:1], grown[:1], np.array([False]), at[:1])[0]
    # a negative that removes the first click's own pixel is rejected
    wiped = first[:1].copy()
    wiped[0, 3, 3] = False
    assert not accept_second_clicks(first[:1], scores[:1], wiped, np.array([False]), at[1:2] * 0 + [[3.5, 3.5], [4.5, 2.5]])[0]
    # a negative whose own pixel stays selected is rejected
    assert not accept_second_clicks(first[1:2], scores[1:2], shrunk[1:2], np.array([False]), at[:1] * 0 + [[2.5, 2.5], [2.5, 3.5]])[0]
    # confirming: a second positive on the same part that leaves the part as it is, holding both clicks
    both = np.array([[[2.5, 2.5], [4.5, 4.5]]] * 3, np.float32)
    confirmed = accept_confirming(first[:3], scores[:3], np.stack([first[0], grown[0], first[0]]), both)
    assert confirmed.tolist() == [True, False, True]
    assert not accept_confirming(first[:1], np.array([0.1]), first[:1], both[:1])[0]


def test_second_click_partners_lie_in_the_region():
    sites = ClickSites(view=np.array([0, 0, 0, 0, 1]), vertex=np.array([0, 1, 2, 3, 4]),
                       xy=np.array([[1.5, 1.5], [2.5, 1.5], [6.5, 6.5], [5.5, 6.5], [1.5, 1.5]], np.float32))
    verts = np.array([[0, 0, 0], [0.1, 0, 0], [1.0, 0, 0], [0.45, 0, 0], [0, 0, 0]], np.float32)
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    rng = np.random.default_rng(0)
    neg = second_click_partners(sites, 0, mask, verts, 5, rng)
    pos = second_click_partners(sites, 0, ~mask, verts, 5, rng)
    assert neg.tolist() == [1]                       # inside, same view, not the first vertex
    assert pos.tolist() == [3]      # outside, same view; 2 is too far (d^2 = 1 >= 0.5 x the farthest)


def test_oracle_returns_rendered_segments():
    v, f = grid_square(9, 0.0, 1.0)
    centres = v[f].mean(1)
    labels = (centres[:, 0] > 0).astype(int)          # left half 0, right half 1
    fine = labels * 2 + (centres[:, 1] > 0)           # quarters
    raster = rasterize(v, f, [look_at((0, 0, 2.0))], 64)
    oracle = OracleViewSegmenter(labels, raster, negative_labels=fine)
    seen = np.where(raster.face_id[0] >= 0, labels[np.maximum(raster.face_id[0], 0)], -1)
    fine_seen = np.where(raster.face_id[0] >= 0, fine[np.maximum(raster.face_id[0], 0)], -1)
    left, right = [20.5, 32.5], [44.5, 32.5]
    pts = np.array([[left, left], [left, right], [left, [20.5, 20.5]], [[1.5, 1.5], [1.5, 1.5]]], np.float32)
    masks, scores = oracle.segment_views(np.zeros(4, int), pts, np.array([[1, 1], [1, 1], [1, 0], [1, 1]]))
    assert np.array_equal(masks[0], seen == 0)
    assert np.array_equal(masks[1], seen >= 0)                     # union of both halves
    removed = fine_seen[20, 20]
    assert np.array_equal(masks[2], (seen == 0) & (fine_seen != removed))
    assert scores.tolist() == [1, 1, 1, 0] and not masks[3].any()   # background click: nothing
    # the wider answer: the clicked half and the half touching it; both halves touch here
    part, part_scores, wider = oracle.segment_levels(np.zeros(2, int), np.array([left, [1.5, 1.5]], np.float32))
    assert np.array_equal(part[0], seen == 0) and np.array_equal(wider[0], seen >= 0)
    assert part_scores.tolist() == [1, 0] and not wider[1].any()
    three = np.minimum((centres[:, 0] + 0.5) * 3, 2).astype(int)   # three vertical strips: 0 and 2 never touch
    strips = OracleViewSegmenter(three, raster)
    seen3 = np.where(raster.face_id[0] >= 0, three[np.maximum(raster.face_id[0], 0)], -1)
    _, _, wider = strips.segment_levels(np.zeros(2, int), np.array([[21.5, 32.5], [32.5, 32.5]], np.float32))
    assert np.array_equal(wider[0], (seen3 == 0) | (seen3 == 1)) and np.array_equal(wider[1], seen3 >= 0)


def test_sam_view_segmenter_plumbing_with_a_tiny_random_sam():
    """Shapes and batching only: a randomly initialised tiny SAM gives meaningless masks."""
    import torch
    from engine.models.sam import SamSegmenter, build_sam
    from engine.iseg.view_segmenters import SamViewSegmenter
    from engine.shading import shade

    torch.manual_seed(0)
    sam = SamSegmenter(build_sam("tiny"), model_id="tiny", device=torch.device("cpu"), random_weights=True)
    v, f = grid_square(5, 0.0)
    raster = rasterize(v, f, [look_at((0, 0, 2.0)), look_at((0.5, 0, 2.0))], 48)
    seg = SamViewSegmenter(sam, sam.encode(shade(raster)), (48, 48))
    views = np.array([1, 0, 1])
    masks, scores = seg.segment_views(views, np.array([[[24.5, 24.5]]] * 3, np.float32), np.ones((3, 1), int))
    assert masks.shape == (3, 48, 48) and masks.dtype == bool and scores.shape == (3,)
    masks2, _ = seg.segment_views(views, np.array([[[24.5, 24.5], [10.5, 10.5]]] * 3, np.float32),
                                  np.array([[1, 0]] * 3))
    assert masks2.shape == (3, 48, 48)


def test_focus_draws_are_weighted_back_to_the_true_part_share():
    """Half the pixels drawn inside a 10% focus would train the part as ~50% of the view; the weights
    must bring the weighted share of part pixels back to 10% (the calibration BSB's 0.5 threshold needs)."""
    import torch
    from engine.iseg.train import _bit, _draw_pixels, pixel_weights

    n = 1000
    for share in (0.1, 0.02, 0.6):
        mask = np.zeros(n, bool)
        mask[: int(share * n)] = True
        packed = torch.from_numpy(np.packbits(mask)[None].repeat(64, 0))
        batch, counts = torch.arange(64), torch.full((64,), n)
        g = torch.Generator().manual_seed(0)
        j = _draw_pixels(batch, counts, packed, 512, 256, g, torch.device("cpu"))
        inside = _bit(packed, batch, j)
        raw = inside.float().mean().item()
        w = pixel_weights(inside, counts, torch.full((64,), int(mask.sum())), 0.5)
        weighted = (w * inside).mean().item()
        assert raw > share + 0.2 or share > 0.5            # the draw is biased toward the part...
        assert abs(weighted - share) < 0.01 + 0.05 * share, (share, raw, weighted)   # ...the weights undo it
        assert abs(w.mean().item() - 1.0) < 0.03


def test_corrective_click_goes_to_the_middle_of_the_largest_error():
    from engine.iseg.evaluate import corrected_ious, corrective_click

    v, f = grid_square(11, 0.0)
    col, row = np.arange(121) % 11, np.arange(121) // 11
    target = col <= 5
    spill = target | ((col >= 6) & (col <= 10) & (row >= 3) & (row <= 7))   # 25 false positives
    missed = target & ~((col <= 1) & (row <= 1))                            # 4 false negatives
    assert corrective_click(v, f, spill, target) == (5 * 11 + 8, False)         # centre of the spill: row 5, col 8
    vertex, positive = corrective_click(v, f, missed, target)
    assert positive and col[vertex] <= 1 and row[vertex] <= 1
    both = missed | (spill & ~target)
    assert corrective_click(v, f, both, target)[1] is False                 # the larger error first
    assert corrective_click(v, f, target, target) is None
    # only clickable vertices count: with the spill's middle column off limits, the click moves off it,
    # and with every wrong vertex off limits there is nothing to click
    off = col != 8
    vertex, positive = corrective_click(v, f, spill, target, clickable=off)
    assert not positive and spill[vertex] and not target[vertex] and col[vertex] != 8
    assert corrective_click(v, f, spill, target, clickable=~(spill & ~target)) is None

    class Exact:      # answers the part of the clicks, to check the bookkeeping of corrected_ious
        def predict(self, clicks):
            return np.where(target, 0.9, 0.1) if len(clicks) > 1 else np.where(spill, 0.9, 0.1)
    ious = corrected_ious(Exact(), v, f, target.astype(int), int(np.flatnonzero(target)[0]), corrections=3)
    assert ious[0] == pytest.approx(target.sum() / spill.sum()) and ious[1:].tolist() == [1.0, 1.0, 1.0]
