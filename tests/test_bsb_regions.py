"""Shape -> image, match all and the 2D region helpers on the planted scene."""

from __future__ import annotations

import numpy as np
import pytest

from engine.bsb import feature_grid, match_all, shape_to_image
from engine.bsb.prompting import default_chooser
from engine.bsb.regions import automatic_regions, interior_pixel
from engine.errors import BsbError
from engine.bsb.synthetic import ARM, BACKGROUND, BODY, DECAL, HEAD, SHIN, TAIL, THIGH, planted_scene


@pytest.fixture(scope="module")
def scene():
    return planted_scene()


@pytest.fixture(scope="module")
def grid(scene):
    return feature_grid(scene.grid, scene.image_size)


def test_interior_pixel_is_deepest_and_inside():
    m = np.zeros((60, 90), bool)
    m[10:50, 5:15] = True  # thin bar
    m[20:45, 40:80] = True  # thick block: its centre is deepest
    x, y = interior_pixel(m)
    assert m[y, x] and 55 <= x <= 64 and 28 <= y <= 36
    ring = np.zeros((50, 50), bool)
    ring[5:45, 5:45] = True
    ring[15:35, 15:35] = False  # centroid lies in the hole
    x, y = interior_pixel(ring)
    assert ring[y, x]


def test_automatic_regions_dedup_and_score_filter(scene):
    regions = automatic_regions(scene.segmenter, default_chooser(), scene.image_size, points_per_side=8)
    # body, arm, head, decal, leg (from a thigh click), shin; the background (score 0.3) is dropped
    assert len(regions) == 6
    assert all(r.shape == scene.labels.shape and (scene.labels[r] != BACKGROUND).all() for r in regions)


def test_match_all_names_regions_and_rejects_the_decal(scene, grid):
    results = match_all(scene.segmenter, grid, scene.vertex_features, seed=scene.seed)
    assert [r.name for r in results] == [f"region {i}" for i in range(1, len(results) + 1)]
    found_parts = {int(scene.vertex_part[r.winner_vertex]) for r in results if r.found}
    assert {BODY, ARM, HEAD, SHIN} <= found_parts and THIGH in found_parts
    lost = [r for r in results if not r.found]
    assert len(lost) == 1 and (lost[0].part_mask == (scene.labels == DECAL)).all()
    for r in results:
        if r.found:  # the seeded mesh part is the one SAM outlined under the region's click
            assert (scene.labels[r.part_mask] == scene.vertex_part[r.winner_vertex]).mean() > 0.45


@pytest.mark.parametrize("rule,part", [("paper", HEAD), ("paper", ARM), ("buddies", HEAD),
                                       ("buddies", ARM), ("buddies", THIGH), ("buddies", BODY)])
def test_shape_to_image_finds_the_region(scene, grid, part, rule):
    clicked = np.flatnonzero(scene.vertex_part == part)[:2]
    r = shape_to_image(scene.segmenter, grid, scene.vertex_features, clicked, scene.vertex_part == part,
                       seed=scene.seed, rule=rule)
    assert r.found and r.confidence > 0.9
    assert scene.label_at(r.winner_pixel) == part
    assert scene.vertex_part[r.winner_vertex] == part
    assert r.part_mask[scene.labels == part].all()


def test_shape_to_image_outlier_vertices_veto_the_paper_rule_not_the_buddies_one(scene, grid):
    """The planted arm outliers resemble body pixels more than body vertices do: under the paper's one-vertex
    test no body pixel maps back to the body; the relaxed buddies test still finds it."""
    part = scene.vertex_part == BODY
    clicked = np.flatnonzero(part)[:2]
    paper = shape_to_image(scene.segmenter, grid, scene.vertex_features, clicked, part, seed=scene.seed)
    buddies = shape_to_image(scene.segmenter, grid, scene.vertex_features, clicked, part, rule="buddies")
    assert not paper.found and paper.n_valid == 0
    assert buddies.found and scene.label_at(buddies.winner_pixel) == BODY


def test_shape_to_image_paper_rule_ranks_valid_candidates_by_3d_iou():
    """The most similar valid candidate loses when iSeg at its vertex overlaps the part less than another's."""
    scene = planted_scene(noise=0.1)  # noise spreads the pixels' nearest vertices over several head vertices
    grid = feature_grid(scene.grid, scene.image_size)
    part = scene.vertex_part == HEAD
    clicked = np.flatnonzero(part)[:2]
    first = shape_to_image(scene.segmenter, grid, scene.vertex_features, clicked, part, seed=scene.seed)
    valid = [c.vertex for c in first.candidates if c.valid]
    assert len(set(valid)) >= 2 and first.winner_vertex == valid[0]  # all tie at IoU 1: the most similar wins
    calls = []

    def seed(v):  # iSeg seeded at the most similar candidate's vertex selects half of the head only
        calls.append(v)
        p = scene.seed(v)
        if v == valid[0]:
            p[np.flatnonzero(part)[::2]] = 0.0
        return p

    r = shape_to_image(scene.segmenter, grid, scene.vertex_features, clicked, part, seed=seed)
    assert r.found and r.winner_vertex != valid[0] and r.winner_vertex in valid and r.confidence == 1.0
    assert sorted(calls) == sorted(set(valid))  # one iSeg pass per distinct valid vertex, none for invalid ones
    assert [c.iou for c in r.candidates if c.vertex == valid[0]][0] == pytest.approx(0.5, abs=0.02)
    assert all(c.iou is None for c in r.candidates if not c.valid)


@pytest.mark.parametrize("rule", ["paper", "buddies"])
def test_shape_to_image_rejects_a_part_the_image_lacks(scene, grid, rule):
    clicked = np.flatnonzero(scene.vertex_part == TAIL)[:3]
    r = shape_to_image(scene.segmenter, grid, scene.vertex_features, clicked, scene.vertex_part == TAIL,
                       seed=scene.seed, rule=rule)
    assert not r.found and r.n_valid == 0 and r.part_mask is None


def test_shape_to_image_object_hint_restricts_the_search(scene, grid):
    clicked = np.flatnonzero(scene.vertex_part == HEAD)[:2]
    hint = scene.labels == ARM  # a wrong hint: no head pixel can be chosen
    r = shape_to_image(scene.segmenter, grid, scene.vertex_features, clicked, scene.vertex_part == HEAD,
                       seed=scene.seed, object_hint=hint)
    assert all(hint[int(c.pixel[1]), int(c.pixel[0])] for c in r.candidates)
    assert not r.found


def test_shape_to_image_checks_its_rule(scene, grid):
    with pytest.raises(BsbError, match="unknown shape-to-image rule"):
        shape_to_image(scene.segmenter, grid, scene.vertex_features, [0], scene.vertex_part == BODY, rule="x")
    with pytest.raises(BsbError, match="seed="):
        shape_to_image(scene.segmenter, grid, scene.vertex_features, [0], scene.vertex_part == BODY)
