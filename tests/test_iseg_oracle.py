"""iSeg end to end on real PSB meshes against an oracle teacher built from human part labels.

Features: planted smooth random functions of position (engine.iseg.evaluate.planted_features), rendered
into the views, pooled to a 16x16 teacher grid and distilled back onto the vertices with engine.distill
-- the path a real teacher takes. The labels never enter the features; they only drive the oracle view
segmenter (the stand-in for SAM), so the test measures whether the click data, the rendered BCE and the
decoder recover the teacher's parts from clicks.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.cameras import sphere_views
from engine.iseg import ISegConfig, OracleViewSegmenter, train_iseg
from engine.iseg.evaluate import (distilled_planted_features, interior_vertices, iou, single_click_ious,
                                  vertex_labels)
from engine.iseg.postprocess import select_vertices
from engine.mesh import load_mesh
from engine.raster import rasterize

# (mesh, annotator for the parts, finer annotator whose segments a negative click removes)
MESHES = {"bearing": ("bearing/344", "344_0", None), "glasses": ("glasses/59", "59_0", "59_1"),
          "plier": ("plier/202", "202_0", None)}
# 6% of the vertices as click vertices (the default 3% gives the glasses' smaller split part ~13 sub-part cuts
# per direction, too few to learn them reliably among the corrective kinds)
CONFIG = ISegConfig(click_fraction=0.06, steps=400, batch_size=8, pixels_per_sample=256, views_per_click=6,
                    second_negative=4)


def read_seg(root, mesh: str, seg: str) -> np.ndarray:
    return np.loadtxt(root / "psb" / mesh.split("/")[0] / f"{seg.split('_')[0]}_seg" / f"{seg}.seg", dtype=np.int64)


@pytest.fixture(scope="module")
def trained(request):
    from tests.conftest import SHARED_DATA
    out = {}
    for key, (mesh_name, seg, fine) in MESHES.items():
        mesh = load_mesh(SHARED_DATA / "psb" / f"{mesh_name}.off", up="y")
        labels = read_seg(SHARED_DATA, mesh_name, seg)
        assert len(labels) == len(mesh.faces)
        fine_labels = read_seg(SHARED_DATA, mesh_name, fine) if fine else None
        raster = rasterize(mesh.vertices, mesh.faces, sphere_views(12), 96)
        features = distilled_planted_features(mesh.vertices, mesh.faces, raster, dim=64, sigma=2.0, steps=300)
        oracle = OracleViewSegmenter(labels, raster, negative_labels=fine_labels)
        model = train_iseg(mesh.vertices, mesh.faces, raster, features, oracle, CONFIG, seed=0)
        out[key] = (mesh, labels, fine_labels, model)
    return out


def test_single_clicks_recover_human_parts(trained):
    scores = []
    for key, (mesh, labels, _, model) in trained.items():
        vlab = vertex_labels(mesh.faces, labels, len(mesh.vertices))
        inner = np.nonzero(interior_vertices(mesh.faces, labels, len(mesh.vertices)))[0]
        clicks = np.random.default_rng(7).choice(inner, 8, replace=False)
        scores.append(single_click_ious(model, mesh.faces, vlab, clicks))
    scores = np.concatenate(scores)
    assert len(scores) >= 20
    assert scores.mean() >= 0.75, scores.round(2)


def test_negative_click_inside_the_selection_cuts_out_the_sub_part(trained):
    """On each coarse part the finer annotator splits in two, a positive click in one sub-part and a
    negative click in the other must shrink the selection to (about) the positive's sub-part."""
    mesh, labels, fine, model = trained["glasses"]
    n = len(mesh.vertices)
    vlab, vfine = vertex_labels(mesh.faces, labels, n), vertex_labels(mesh.faces, fine, n)
    inner = interior_vertices(mesh.faces, fine, n) & interior_vertices(mesh.faces, labels, n)
    rng = np.random.default_rng(3)
    cases = []
    for part in np.unique(vlab):
        sizes = np.bincount(vfine[vlab == part])
        subparts = np.nonzero(sizes >= 0.2 * sizes.sum())[0]    # ignore annotator-disagreement slivers
        if len(subparts) < 2:
            continue     # this part has no finer split: a negative click would not describe a sub-part
        for keep, cut in ((subparts[0], subparts[1]), (subparts[1], subparts[0])):
            pos = int(rng.choice(np.nonzero((vfine == keep) & inner)[0]))
            neg = int(rng.choice(np.nonzero((vfine == cut) & inner)[0]))
            before = select_vertices(model.predict([(pos, True)]), mesh.faces, [(pos, True)])
            clicks = [(pos, True), (neg, False)]
            after = select_vertices(model.predict(clicks), mesh.faces, clicks)
            cut_part = (vlab == part) & (vfine == cut)
            cases.append((part, keep, cut, bool(before[neg]), bool(after[pos]), after.sum() / before.sum(),
                          (cut_part & after).sum() / cut_part.sum()))
    assert len(cases) >= 3, cases
    for part, keep, cut, had_neg, kept_pos, ratio, cut_left in cases:
        assert had_neg and kept_pos, cases       # the negative was inside the selection; the positive stays
    # Clearly smaller because the negative's sub-part is (mostly) gone. Training on CPU is not bit-exact
    # under load (threaded float reductions), and one run in several was seen to leave one of the four
    # splits unlearned, so all but one case must cut, and the cut must hold on average.
    cut_cases = [ratio < 0.85 and cut_left < 0.3 for *_, ratio, cut_left in cases]
    assert sum(cut_cases) >= len(cases) - 1, cases
    assert np.mean([c[5] for c in cases]) < 0.85, cases


def test_second_positive_click_in_another_part_grows_the_selection(trained):
    mesh, labels, _, model = trained["plier"]
    n = len(mesh.vertices)
    vlab = vertex_labels(mesh.faces, labels, n)
    inner = interior_vertices(mesh.faces, labels, n)
    parts = np.argsort(-np.bincount(vlab))[:3]
    for a, b in zip(parts, parts[1:]):
        va, vb = np.nonzero((vlab == a) & inner)[0][0], np.nonzero((vlab == b) & inner)[0][0]
        one = select_vertices(model.predict([(int(va), True)]), mesh.faces, [(int(va), True)], connected=False)
        clicks = [(int(va), True), (int(vb), True)]
        two = select_vertices(model.predict(clicks), mesh.faces, clicks, connected=False)
        union = (vlab == a) | (vlab == b)
        assert two.sum() > one.sum()
        assert iou(two, union) >= 0.75 and iou(two, union) > iou(one, union)
