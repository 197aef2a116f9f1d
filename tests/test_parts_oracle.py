"""Segment-all and text -> part on real PSB meshes, with iSeg trained against rendered human labels.

The decoders are trained on planted features that never see the labels (engine.parts.oracle), with a
short schedule to keep the file fast; segment-all and text -> part themselves run their SHIPPED settings.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.evaluation.data import load_labelled
from engine.iseg import ISegConfig
from engine.parts.geometric import faces_to_vertices, normal_regions
from engine.parts.graph import face_areas, vertex_areas
from engine.parts.metrics import best_match_miou, vertex_to_face_labels
from engine.parts.oracle import OracleBoxSegmenter, OracleDetector, oracle_prepared
from engine.parts.segment_all import SegmentAllSettings, cut, segment_all
from engine.parts.text import TextSettings, find_part, render_for_text

CONFIG = ISegConfig(steps=300, batch_size=8, pixels_per_sample=256, max_clicks=48, views_per_click=4, width=64,
                    attn_dim=32, encoder_depth=2)
VIEWS, SIZE = 8, 80


def _miou(mesh, labels, gt):
    return best_match_miou(vertex_to_face_labels(mesh.faces, labels), gt, face_areas(mesh.vertices, mesh.faces))


@pytest.fixture(scope="module")
def bird(shared_data):
    """Bird 243: wings, head and tail flow into the body with no sharp edge between them."""
    lm = load_labelled("bird/243", root=shared_data)
    true = oracle_prepared(lm.mesh, lm.face_labels, VIEWS, SIZE, CONFIG, distilled=False)
    shuffled_labels = np.random.default_rng(0).permutation(lm.face_labels)
    shuffled = oracle_prepared(lm.mesh, shuffled_labels, VIEWS, SIZE, CONFIG, distilled=False)
    return lm, true, shuffled


def test_segment_all_beats_the_geometric_baseline_and_a_shuffled_oracle_does_not(bird):
    lm, true, shuffled = bird
    mesh = lm.mesh
    w = face_areas(mesh.vertices, mesh.faces)
    baseline = max(best_match_miou(normal_regions(mesh.vertices, mesh.faces, a), lm.face_labels, w)
                   for a in (15, 30, 45, 60))
    parts, tree = segment_all(true)
    assert parts.labels.shape == (mesh.num_vertices,) and (parts.labels >= 0).all()   # every vertex assigned
    assert np.isclose(parts.area.sum(), 1.0)
    score = _miou(mesh, parts.labels, lm.face_labels)
    assert score >= baseline + 0.3, (score, baseline)
    # a teacher whose labels are shuffled over the faces teaches noise: the decoder's faint answers and the
    # click-shaped blobs that move with the click are no parts (SegmentAllSettings.min_confidence and
    # min_agreement), so at most the baseline's single region (~1/parts) is left; blobs would score far
    # above it
    noisy, _ = segment_all(shuffled)
    noise = _miou(mesh, noisy.labels, lm.face_labels)
    assert noise < baseline + 0.15 and noise < 0.5 * (baseline + score), (noise, baseline, score)


def test_granularity_moves_the_part_count_monotonically_without_a_decoder_pass(bird):
    lm, true, _ = bird
    _, tree = segment_all(true)
    calls = []
    original = true.iseg.predict
    true.iseg.predict = lambda clicks: calls.append(clicks) or original(clicks)
    try:
        counts = [cut(tree, g).n_parts for g in np.linspace(0.0, 1.0, 11)]
    finally:
        del true.iseg.predict
    assert not calls
    assert counts == sorted(counts) and counts[0] < counts[-1], counts
    assert counts[0] == 1                         # the bird is one connected mesh
    assert cut(tree, SegmentAllSettings().granularity).n_parts >= lm.n_parts - 1


@pytest.fixture(scope="module")
def airplane(shared_data):
    human = load_labelled("airplane/61", root=shared_data)
    semantic = load_labelled("airplane/61", semantic=True, root=shared_data)
    prepared = oracle_prepared(human.mesh, human.face_labels, VIEWS, SIZE, CONFIG, distilled=False)
    images, raster = render_for_text(human.mesh, TextSettings())
    return human, semantic, prepared, images, raster


def test_text_finds_the_named_airplane_part_and_not_a_missing_one(airplane):
    human, semantic, prepared, images, raster = airplane
    mesh = human.mesh
    areas = vertex_areas(mesh.vertices, mesh.faces)
    vsem = faces_to_vertices(mesh.faces, semantic.face_labels, mesh.num_vertices)
    segmenter = OracleBoxSegmenter(raster.face_id, human.face_labels)
    for name in ("wing", "body"):
        k = semantic.part_names.index(name)
        detector = OracleDetector(raster.face_id, mesh.faces, semantic.face_labels, semantic.part_names,
                                  miss_rate=0.2, false_rate=0.2, seed=k)
        found = find_part(prepared, images, raster.face_id, detector, segmenter, name)
        assert found.found, found.reason
        gt = vsem == k
        iou = (found.mask & gt) @ areas / ((found.mask | gt) @ areas)
        others = [(found.mask & (vsem == j)) @ areas / ((found.mask | (vsem == j)) @ areas)
                  for j in range(len(semantic.part_names)) if j != k and (vsem == j).any()]
        assert iou >= 0.5 and iou > max(others), (name, iou, others)
    detector = OracleDetector(raster.face_id, mesh.faces, semantic.face_labels, semantic.part_names,
                              miss_rate=0.2, false_rate=0.5, seed=9)
    missing = find_part(prepared, images, raster.face_id, detector, segmenter, "propeller")
    assert not missing.found and missing.mask is None and missing.reason
