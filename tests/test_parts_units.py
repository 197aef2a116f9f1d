"""Part-map building blocks with answers known by construction: graph cleanup, metrics, the geometric
baseline, part-tree cuts, view votes, and the oracle detector's misses."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from engine.errors import BsbError
from engine.parts.geometric import faces_to_vertices, normal_regions
from engine.parts.graph import absorb_small, components, mesh_edges, vertex_areas
from engine.parts.metrics import best_match_miou, rand_index, vertex_to_face_labels
from engine.parts.segment_all import PartTree, SegmentAllSettings, build_tree, cut, propose
from engine.parts.text import view_votes


def grid(n: int):
    t = np.linspace(0, 1, n)
    x, y = np.meshgrid(t, t)
    v = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], 1)
    i = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    f = np.concatenate([np.stack([i, i + 1, i + n + 1], 1), np.stack([i, i + n + 1, i + n], 1)])
    return v, f


def test_components_and_small_pieces_join_their_neighbour():
    assert components(5, np.array([[0, 1], [3, 4]])).tolist() == [0, 0, 1, 2, 2]
    v, f = grid(10)
    labels = (v[:, 0] > 0.5).astype(int)      # two halves...
    labels[0] = 2                              # ...a one-vertex speck in the left half
    labels[99] = 0                             # a left-label vertex inside the right half: another piece
    out = absorb_small(labels, mesh_edges(f), vertex_areas(v, f), min_area=0.05)
    assert len(np.unique(out)) == 2
    assert out[0] == out[1] and out[99] == out[98]
    assert vertex_areas(v, f).sum() == pytest.approx(1.0)


def test_metrics_perfect_permuted_and_merged():
    gt = np.array([0, 0, 1, 1, 2, 2])
    w = np.ones(6)
    assert best_match_miou(np.array([5, 5, 3, 3, 9, 9]), gt, w) == pytest.approx(1.0)
    assert rand_index(np.array([5, 5, 3, 3, 9, 9]), gt, w) == pytest.approx(1.0)
    merged = np.zeros(6)
    assert best_match_miou(merged, gt, w) == pytest.approx(1 / 3)
    assert rand_index(merged, gt, w) == pytest.approx(1 - 2 * (6 * 6 - 3 * 4) / 2 / 36)  # pairs apart in gt
    assert vertex_to_face_labels(np.array([[0, 1, 2]]), np.array([7, 8, 8])).tolist() == [8]


def test_geometric_baseline_splits_a_box_at_its_edges_only():
    box = trimesh.creation.box()
    regions = normal_regions(box.vertices, box.faces, 30.0)
    assert len(np.unique(regions)) == 6
    sphere = trimesh.creation.icosphere(3)
    assert len(np.unique(normal_regions(sphere.vertices, sphere.faces, 30.0))) == 1
    assert faces_to_vertices(np.array([[0, 1, 2], [1, 2, 3], [1, 3, 2]]), np.array([4, 5, 5]), 5).tolist() == [4, 5, 5, 5, -1]


def test_cut_is_monotone_and_checks_its_range():
    # four finest parts on a strip; merges (0,1) at 0.9, then (2,3) at 0.6, then the two pairs at 0.2
    fine = np.repeat(np.arange(4), 5)
    tree = PartTree(fine, [(0, 1, 0.9), (2, 3, 0.6), (4, 5, 0.2)], 4, np.ones(20), np.array([0.5, 0.9, 0.4, 0.3]),
                    np.array([1, 6, 11, 16]))
    counts = [cut(tree, g).n_parts for g in np.linspace(0, 1, 11)]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 4
    mid = cut(tree, 0.5)
    assert mid.n_parts == 2 and mid.labels[0] == mid.labels[5] != mid.labels[10]
    assert set(mid.seed.tolist()) == {6, 11}       # the best-scoring seed of each merged part
    with pytest.raises(BsbError):
        cut(tree, 1.5)


class _BlobDecoder:
    """A decoder that learned nothing: a disc of high probability around whatever vertex is clicked."""

    def __init__(self, vertices, radius):
        self.vertices, self.radius = vertices, radius

    def predict(self, clicks):
        d = np.linalg.norm(self.vertices - self.vertices[clicks[0][0]], axis=1)
        return np.where(d < self.radius, 0.9, 0.05).astype(np.float32)


def test_probe_clicks_keep_parts_and_reject_blobs_that_move_with_the_click():
    v, f = grid(40)
    settings = SegmentAllSettings()
    # a checkerboard of 0.2-wide cells: each cell answers the same wherever it is clicked
    cell = (np.minimum(v[:, 0] // 0.2, 4) * 5 + np.minimum(v[:, 1] // 0.2, 4)).astype(int)
    calls = []
    parts = _StubDecoder([cell == k for k in range(25)])
    parts.predict = lambda clicks, one=parts.predict: calls.append(clicks) or one(clicks)
    real = propose(parts, f, v, settings)
    assert len(calls) > settings.n_seeds                  # cells holding one seed were probed...
    assert (real.agreement >= 0.9).all()                  # ...and answered the same region
    # discs around the click that hold no other seed (so no seed agreement) and shift with the probe click
    blobs = propose(_BlobDecoder(v, 0.14), f, v, settings)
    assert (blobs.masks[:, blobs.seeds].sum(1) == 1).all()
    assert (blobs.confidence > 0.8).all()                 # confident, so only agreement can reject them
    assert (blobs.agreement < settings.min_agreement).all(), blobs.agreement
    assert cut(build_tree(blobs, v, f, settings), settings.granularity).n_parts == 1


def test_view_votes_average_over_the_views_that_see_a_vertex():
    faces = np.array([[0, 1, 2], [2, 3, 0]])
    face_id = np.array([[[0, 0], [1, 1]], [[0, 0], [-1, -1]]])   # view 1 does not see face 1
    masks = np.array([[[1, 1], [0, 0]], [[1, 1], [0, 0]]], bool)
    votes, seen = view_votes(face_id, faces, 5, masks)
    assert seen.tolist() == [2, 2, 2, 1, 0]
    assert votes[1] == pytest.approx(1.0) and votes[3] == pytest.approx(0.0)
    assert votes[0] == pytest.approx((0.5 + 1.0) / 2)      # half its pixels in view 0, all in view 1


class _StubDecoder:
    """Answers a click with one of the planted parts: the one holding the clicked vertex."""

    def __init__(self, parts):
        self.parts = parts

    def predict(self, clicks):
        v = clicks[0][0]
        return next(p for p in self.parts if p[v]).astype(np.float32)


def test_text_answer_covers_every_named_piece_and_refuses_a_decoder_part_that_spills():
    from engine.parts.text import TextSettings, _cover

    v, f = grid(20)
    x, y = v[:, 0], v[:, 1]
    left = (x < 0.3) & (y > 0.3) & (y < 0.7)            # two pieces the views voted for ("wings")
    right = (x > 0.7) & (y > 0.3) & (y < 0.7)
    votes = (left | right).astype(np.float64)
    edges, areas, seen = mesh_edges(f), vertex_areas(v, f), np.full(len(v), 8.0)
    region = left | right
    # the decoder knows each wing as its own part: one click cannot take both, two clicks do
    mask, _, clicks, source = _cover(_StubDecoder([left, right, ~region]), f, edges, areas, votes, seen, region,
                                     TextSettings())
    assert np.array_equal(mask, region) and len(clicks) == 2 and source == "iseg"
    # a decoder whose left part spills over unvoted surface (a rudder click that takes the tail): its IoU
    # with the piece (~0.5) passes min_agreement, the share on voted surface (~0.5) fails min_precision
    spill = left | ((y < 0.3) & (x < 0.45))
    mask, _, _, source = _cover(_StubDecoder([spill, right, ~(spill | right)]), f, edges, areas, votes, seen, region,
                                TextSettings())
    assert np.array_equal(mask, region) and source == "iseg+votes"
