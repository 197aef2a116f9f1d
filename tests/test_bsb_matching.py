"""BSB image -> shape on the planted scene: the paper's situations, with answers known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.bsb import feature_grid, match, nearest_vertex, random_valid_candidate
from engine.bsb.synthetic import ARM, BODY, CLICK_CELLS, DECAL, HEAD, SHIN, THIGH, planted_scene
from engine.errors import BsbError, Cancelled


@pytest.fixture(scope="module")
def scene():
    return planted_scene()


@pytest.fixture(scope="module")
def grid(scene):
    return feature_grid(scene.grid, scene.image_size)


def part_of(scene, result):
    return int(scene.vertex_part[result.winner_vertex])


def test_modality_offset_nearest_vertex_is_wrong_bsb_is_right(scene, grid):
    click = [scene.click(BODY)]
    base = nearest_vertex(scene.segmenter, grid, scene.vertex_features, click, [1])
    assert base.winner_vertex in set(scene.traps["outliers"].tolist())  # an arm vertex: the paper's failure
    assert part_of(scene, base) == ARM

    r = match(scene.segmenter, grid, scene.vertex_features, click, [1], seed=scene.seed)
    assert r.found and part_of(scene, r) == BODY
    outliers = {c.vertex: c for c in r.candidates if c.vertex in set(scene.traps["outliers"].tolist())}
    assert len(outliers) == 3 and not any(c.valid for c in outliers.values())  # their best pixels are on the arm
    assert all(scene.label_at(c.pixel) == ARM for c in outliers.values())
    assert scene.label_at(r.winner_pixel) == BODY
    np.testing.assert_array_equal(r.vertex_mask, scene.vertex_part == BODY)
    assert r.n_selected == int((scene.vertex_part == BODY).sum())


def test_texture_only_decal_has_no_corresponding_part(scene, grid):
    decal = match(scene.segmenter, grid, scene.vertex_features, [scene.click(DECAL)], [1], seed=scene.seed)
    part = match(scene.segmenter, grid, scene.vertex_features, [scene.click(HEAD)], [1], seed=scene.seed)
    assert not decal.found and decal.n_valid == 0 and decal.winner_vertex is None and decal.weights is None
    assert "no valid candidate" in decal.reason
    assert decal.part_mask.sum() == (scene.labels == DECAL).sum()  # the 2D masks are still reported
    assert part.found and part_of(scene, part) == HEAD
    assert part.confidence > 0.9 > 0.1 > decal.confidence


def test_iou_ranking_beats_similarity_among_valid_candidates(scene, grid):
    r = match(scene.segmenter, grid, scene.vertex_features, [scene.click(THIGH)], [1], seed=scene.seed)
    shin_trap = set(scene.traps["shin_offset"].tolist())
    valid = [c for c in r.candidates if c.valid]
    assert valid[0].vertex in shin_trap  # the most similar valid candidate is a shin vertex ...
    leg = (scene.labels == THIGH) | (scene.labels == SHIN)
    expected = (scene.labels == SHIN).sum() / leg.sum()
    for c in valid:  # ... whose SAM segment is only the shin, while a thigh pixel gives the whole leg
        assert c.iou == pytest.approx(expected if scene.vertex_part[c.vertex] == SHIN else 1.0)
    assert part_of(scene, r) == THIGH and r.confidence == pytest.approx(1.0)
    picks = {int(scene.vertex_part[random_valid_candidate(scene.segmenter, grid, scene.vertex_features,
                                                          [scene.click(THIGH)], [1], k=20,
                                                          rng=np.random.default_rng(s)).winner_vertex])
             for s in range(8)}
    assert SHIN in picks  # without the ranking, a valid but wrong candidate gets picked


def test_one_prompt_per_distinct_pixel_and_the_prompt_cap(scene, grid):
    seg = scene.segmenter
    before = seg.prompts
    r = match(seg, grid, scene.vertex_features, [scene.click(THIGH)], [1], max_prompts=None)
    distinct = {c.pixel for c in r.candidates if c.valid}
    assert seg.prompts - before == 1 + len(distinct) < 1 + r.n_valid  # query + one per distinct pixel
    capped = match(seg, grid, scene.vertex_features, [scene.click(THIGH)], [1], max_prompts=1)
    assert scene.vertex_part[capped.winner_vertex] == SHIN  # only the most similar pixel was re-segmented
    first = next(c.pixel for c in capped.candidates if c.valid)
    assert [c.iou is not None for c in capped.candidates] == [c.valid and c.pixel == first for c in capped.candidates]


def test_min_confidence_turns_a_weak_match_into_no_part(scene, grid):
    r = match(scene.segmenter, grid, scene.vertex_features, [scene.click(THIGH)], [1], k=10, seed=scene.seed)
    assert r.found  # the top 10 are all shin trap vertices: valid, IoU 0.5
    assert r.confidence == pytest.approx((scene.labels == SHIN).sum() / np.isin(scene.labels, [THIGH, SHIN]).sum())
    weak = match(scene.segmenter, grid, scene.vertex_features, [scene.click(THIGH)], [1], k=10,
                 min_confidence=0.8, seed=scene.seed)
    assert not weak.found and "below minimum" in weak.reason and weak.weights is None


def test_original_frame_coordinates_and_scale(scene, grid):
    scale = 0.25  # the segmenter and grid work on a quarter-size copy of a 1024 x 768 original
    click = np.array([scene.click(ARM)]) / scale
    r = match(scene.segmenter, grid, scene.vertex_features, click, [1], scale=scale)
    assert r.found and part_of(scene, r) == ARM and r.mask_scale == scale
    assert scene.label_at(r.winner_pixel, scale) == ARM
    assert all(0 <= c.pixel[0] < 1024 and 0 <= c.pixel[1] < 768 for c in r.candidates)


def test_box_and_negative_clicks(scene, grid):
    x, y = scene.click(ARM)
    box = match(scene.segmenter, grid, scene.vertex_features, None, None, box=[x - 10, y - 5, x + 10, y + 5])
    assert box.found and part_of(scene, box) == ARM
    multi = match(scene.segmenter, grid, scene.vertex_features, [scene.click(HEAD), scene.click(BODY)], [1, 0])
    assert multi.found and part_of(scene, multi) == HEAD


def test_bad_queries_say_what_to_do(scene, grid):
    seg, vf = scene.segmenter, scene.vertex_features
    with pytest.raises(BsbError, match="labels"):
        match(seg, grid, vf, [scene.click(ARM)], [1, 0])
    with pytest.raises(BsbError, match="positive point or a box"):
        match(seg, grid, vf, [scene.click(ARM)], [0])
    with pytest.raises(BsbError, match="outside the image"):
        match(seg, grid, vf, [[5000.0, 3.0]], [1])
    with pytest.raises(BsbError, match="same feature model"):
        match(seg, grid, vf[:, :10], [scene.click(ARM)], [1])


def test_cancel_stops_the_match(scene, grid):
    with pytest.raises(Cancelled):
        match(scene.segmenter, grid, scene.vertex_features, [scene.click(ARM)], [1], cancel=lambda: True)
    steps = []
    match(scene.segmenter, grid, scene.vertex_features, [scene.click(ARM)], [1], progress=lambda f, m: steps.append(f))
    assert steps == sorted(steps) and steps[-1] == 1.0


def test_torch_inputs_and_unit_features_give_the_same_answer(scene, grid):
    unit = torch.nn.functional.normalize(torch.from_numpy(scene.vertex_features), dim=1)
    a = match(scene.segmenter, grid, scene.vertex_features, [scene.click(BODY)], [1])
    b = match(scene.segmenter, feature_grid(torch.from_numpy(scene.grid)[None], scene.image_size), unit,
              [scene.click(BODY)], [1])
    assert a.winner_vertex == b.winner_vertex and a.winner_pixel == b.winner_pixel


def test_real_sam_wrapper_plugs_in():
    """Plumbing only: the real SamSegmenter class (tiny, random weights) satisfies the prompt interface."""
    from engine.models.sam import SamSegmenter, build_sam

    sam = SamSegmenter(build_sam("tiny"), model_id="tiny-random", device=torch.device("cpu"))
    sam.set_embedding(torch.randn(256, sam.grid, sam.grid), (48, 64))
    grid = feature_grid(torch.randn(1, 16, 4, 5), (64, 48))
    vf = torch.randn(200, 16)
    try:
        r = match(sam, grid, vf, [[30.0, 20.0]], [1], box=[10, 5, 50, 40], k=20, max_prompts=4)
    except BsbError as exc:  # random weights may segment nothing under the click: a clean, explained error
        assert "no part" in str(exc)
        return
    assert r.part_mask.shape == (48, 64) and r.n_candidates == 20
    assert sum(c.iou is not None for c in r.candidates) <= r.n_valid


def test_a_tie_at_the_best_iou_goes_to_the_part_the_tied_buddies_agree_on():
    """Candidates tied at IoU 1: the most similar one sits on a seam, and iSeg seeded there spills into the
    neighbour; the winner must be a tied candidate held surely by the part the tied candidates fill."""
    from engine.bsb.matching import Candidates, break_tie
    from engine.bsb.result import MatchResult

    seam, inner = 10, [11, 12, 13]
    cands = Candidates(np.array([seam] + inner + [40]), np.array([0.95, 0.9, 0.9, 0.8, 0.7]),
                       np.array([[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]), np.array([True] * 4 + [False]))
    ious = np.array([1.0, 1.0, 1.0, 1.0, -1.0])

    def seed(v: int) -> np.ndarray:
        p = np.zeros(50, np.float32)
        if v == seam:
            p[:30] = 0.9                           # the part and its neighbour
        else:
            p[:15], p[seam] = 0.9, 0.6             # the part; the seam vertex only just in it
        return p

    result = MatchResult(True, None, 1.0, 5, 4, seam, (1.5, 1.5), None, None)
    break_tie(result, cands, ious, seed, 1.0)
    assert result.winner_vertex == 11 and result.winner_pixel == (2.5, 2.5)
    untied = MatchResult(True, None, 1.0, 5, 4, seam, (1.5, 1.5), None, None)
    break_tie(untied, cands, np.array([1.0, 0.9, 0.9, 0.9, -1.0]), seed, 1.0)
    assert untied.winner_vertex == seam                # no tie: the IoU argmax stands


def test_a_noisy_patch_under_the_click_does_not_decide_the_query(scene):
    """The query feature adds the part's mean (over SAM's part mask) to the clicked patch: a body click on
    a patch that looks half like the arm (a highlight, a texture cell) still finds the body."""
    noisy = scene.grid.copy()
    arm_r, arm_c = CLICK_CELLS[ARM]
    body_r, body_c = CLICK_CELLS[BODY]
    noisy[:, body_r, body_c] += 1.2 * noisy[:, arm_r, arm_c]
    grid = feature_grid(noisy, scene.image_size)
    r = match(scene.segmenter, grid, scene.vertex_features, [scene.click(BODY)], [1], seed=scene.seed)
    assert r.found and part_of(scene, r) == BODY
    assert scene.label_at(r.winner_pixel) == BODY
    patch = torch.nn.functional.normalize(torch.from_numpy(noisy[:, body_r, body_c]), dim=0)
    sim = torch.nn.functional.normalize(torch.from_numpy(scene.vertex_features), dim=1) @ patch
    assert scene.vertex_part[int(sim.argmax())] == ARM  # the patch alone points at the arm
