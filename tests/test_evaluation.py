"""Evaluation harness: labelled data, test scenes, oracle models, metrics and a small benchmark subset.

Expectations are known by construction: a sphere cut into four quadrant parts seen from +X (where each part
lands in the image is geometry), planted features with every defect switched off (matching must be right)
or scrambled across vertices (matching must fall to chance), and hand-made outcomes for the metrics.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trimesh

from engine.cameras import look_at, project, sphere_views
from engine.evaluation import correspondence as C
from engine.evaluation.data import LabelledMesh, load_labelled, median_annotation
from engine.evaluation.oracle import OracleSegmenter, PlantedConfig
from engine.evaluation.scenes import DECAL_REGION, evaluation_views, render_scene, visible_vertices
from engine.mesh import mesh_from_arrays

CLEAN = PlantedConfig(vertex_noise=0.0, vertex_outliers=0.0, confusion=0.0, pixel_noise=0.0, hard_cells=0.0,
                      pixel_outliers=0.0)


@pytest.fixture(scope="module")
def quadrants() -> LabelledMesh:
    """Unit sphere, part = 2 * (y > 0) + (z > 0) by face centroid."""
    ico = trimesh.creation.icosphere(subdivisions=3)
    mesh = mesh_from_arrays(np.asarray(ico.vertices), np.asarray(ico.faces), up="y")
    centroid = mesh.vertices[mesh.faces].mean(axis=1)
    labels = (2 * (centroid[:, 1] > 0) + (centroid[:, 2] > 0)).astype(np.int32)
    return LabelledMesh("sphere/quadrants", "sphere", mesh, labels)


@pytest.fixture(scope="module")
def front_scene(quadrants):
    return render_scene(quadrants, look_at((2.0, 0.0, 0.0)), size=128, seed=3)


def test_median_annotation_picks_the_typical_granularity(tmp_path):
    paths = []
    for k, n_segments in enumerate((2, 9, 5)):
        p = tmp_path / f"m_{k}.seg"
        p.write_text("\n".join(str(i % n_segments) for i in range(30)))
        paths.append(p)
    assert median_annotation(tuple(paths)).name == "m_2.seg"


def test_semantic_airplane_labels_and_vertex_parts(shared_data):
    lm = load_labelled("airplane/61", semantic=True, root=shared_data)
    assert len(lm.face_labels) == len(lm.mesh.faces) == 10796
    assert set(np.unique(lm.face_labels)) == {0, 1, 2, 3} and lm.part_names[1] == "wing"
    assert lm.vertex_parts.any(axis=1).all()  # PSB meshes have no unreferenced vertices
    wing = lm.interior_vertices(1)
    touching = np.isin(lm.mesh.faces, wing).any(axis=1)
    assert len(wing) > 100 and (lm.face_labels[touching] == 1).all()


def test_scene_puts_each_part_where_the_geometry_says(quadrants, front_scene):
    # Camera on +X looking at the origin, up +Y: image left is +Z, image top is +Y.
    s = front_scene
    expect = {(0.35, 0.35): 3, (0.65, 0.35): 2, (0.35, 0.65): 1, (0.65, 0.65): 0}
    for (fx, fy), part in expect.items():
        r, c = int(fy * 128), int(fx * 128)
        if not s.decal[r, c]:
            assert s.part_map[r, c] == part
    assert s.part_map[0, 0] == -1 and s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
    assert s.decal.any(), "a 16-pixel decal fits on a quadrant of a sphere that fills the view"
    assert len(np.unique(s.part_map[s.decal])) == 1
    assert (s.region_map()[s.decal] == DECAL_REGION).all()
    # the decal is painted in the image only: its pixels differ from the part colour around it
    part = s.part_map[s.decal][0]
    around = (s.part_map == part) & ~s.decal
    assert np.abs(s.image[s.decal].mean(0) - s.image[around].mean(0)).max() > 20


def test_visible_vertices_face_the_camera_and_sit_on_their_part(quadrants, front_scene):
    idx, xy = visible_vertices(quadrants, front_scene.camera, front_scene.part_map, front_scene.depth)
    assert len(idx) > 50
    assert (quadrants.mesh.vertices[idx, 0] > 0).all()  # the far hemisphere is hidden
    labels = front_scene.part_map[np.floor(xy[:, 1]).astype(int), np.floor(xy[:, 0]).astype(int)]
    assert quadrants.vertex_parts[idx, labels].all()
    again, _ = project(quadrants.mesh.vertices[idx], front_scene.camera, 128, 128)
    np.testing.assert_allclose(again, xy)


def test_evaluation_views_are_held_out_and_photo_like():
    held_out = np.stack([c.eye for c in evaluation_views(40, seed=5)])
    assert np.allclose(np.linalg.norm(held_out, axis=1), 2.0)
    assert (np.abs(held_out[:, 1]) <= 2.0 * np.sin(np.radians(60.0)) + 1e-9).all()
    for mode in ("uniform", "gaussian"):
        prep = np.stack([c.eye for c in sphere_views(100, mode=mode)])
        assert np.linalg.norm(held_out[:, None] - prep[None], axis=-1).min() > 1e-3


def test_oracle_segmenter_answers_regions_and_merges_at_borders():
    regions = np.full((40, 40), -1)
    regions[5:35, 5:20] = 0
    regions[5:35, 20:35] = 1
    regions[8:17, 8:17] = DECAL_REGION
    seg = OracleSegmenter(regions, edge_px=2)
    assert seg.image_size == (40, 40)
    out = seg.predict(np.array([[[8.5, 30.5]], [[19.5, 25.5]], [[12.5, 12.5]], [[1.5, 1.5]]]), np.ones((4, 1)))
    masks = out.masks
    np.testing.assert_array_equal(masks[0, 0], regions == 0)  # deep inside part 0
    np.testing.assert_array_equal(masks[1, 0], (regions == 0) | (regions == 1))  # on the 0|1 border
    np.testing.assert_array_equal(masks[2, 0], regions == DECAL_REGION)  # the decal is its own region
    assert not masks[3, 0].any()  # background: no part
    np.testing.assert_array_equal(masks[0, 2], regions >= 0)  # object = the whole shape
    assert out.scores.shape == (4, 3)


def _run_sphere(lm, scene, models, clicks=8):
    rng = np.random.default_rng(1)
    bank = C.unit_rows(models.vertex_features(lm, "mesh:sphere"))
    image = models.image_models(lm, scene, "mesh:sphere", seed=2)
    trials = C.click_trials(lm, scene, 0, clicks, rng, 25) + C.decal_trial(lm, scene, 0)
    assert len(trials) == clicks + 1
    return [o for t in trials for o in C.run_methods(t, lm, image, bank, k=30, seed=0)]


def test_clean_planted_features_match_perfectly_and_reject_the_decal(quadrants, front_scene):
    s = C.summarize(_run_sphere(quadrants, front_scene, C.OracleModels(CLEAN)), "oracle")
    assert s.success["bsb"] >= 0.875 and s.success["nearest_vertex"] >= 0.875
    assert s.no_part_rejection["bsb"] == 1.0
    assert s.no_part_rejection["nearest_vertex"] == 0.0  # the baseline always answers


def test_scrambled_vertex_features_fall_to_chance(quadrants, front_scene):
    class Scrambled(C.OracleModels):
        def vertex_features(self, lm, space):
            feats = super().vertex_features(lm, space)
            return feats[np.random.default_rng(0).permutation(len(feats))]

    s = C.summarize(_run_sphere(quadrants, front_scene, Scrambled(CLEAN), clicks=12), "oracle")
    assert s.success["nearest_vertex"] <= 0.5 and s.success["bsb"] <= 0.5


def test_success_rules():
    lm_faces = np.array([[0, 1, 2], [1, 3, 2]])
    mesh = mesh_from_arrays(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.2]], float), lm_faces, up="y")
    lm = LabelledMesh("toy/1", "toy", mesh, np.array([0, 1], np.int32))
    part = C.Trial("part", "toy", "toy/1", "toy/1", 0, (0.0, 0.0), 0, 0)
    assert C.is_success(part, True, 0, lm)  # vertex 0 only touches part 0
    assert C.is_success(part, True, 1, lm)  # vertex 1 is on the border: it belongs to both
    assert not C.is_success(part, True, 3, lm)
    assert not C.is_success(part, False, 0, lm)  # "no part" is a failure on a real part
    absent = replace(part, kind="cross", part=4)  # a label the shape does not have: only "no part" is right
    assert C.is_success(absent, False, None, lm) and not C.is_success(absent, True, 0, lm)
    decal = replace(part, kind="decal", part=-1, vertex=-1)
    assert C.is_success(decal, False, None, lm) and not C.is_success(decal, True, 0, lm)


def test_summary_rates_and_auroc_on_known_outcomes():
    def out(kind, method, success, found=True, conf=1.0, cat="a"):
        t = C.Trial(kind, cat, "m", "m", 0, (0.0, 0.0), 0, 0)
        return C.Outcome(t, method, found, 0 if found else None, conf, success, 0.01)

    outcomes = [out("part", "bsb", True, conf=0.9), out("part", "bsb", False, found=False, cat="b"),
                out("part", "nearest_vertex", True), out("part", "nearest_vertex", True, cat="b"),
                out("decal", "bsb", True, found=False), out("decal", "bsb", False, conf=0.9),
                out("decal", "nearest_vertex", False), out("cross", "bsb", True)]
    s = C.summarize(outcomes, "oracle")
    assert s.success["bsb"] == 0.5 and s.success["nearest_vertex"] == 1.0 and s.success["random_valid"] is None
    assert s.per_category["b"]["bsb"] == 0.0 and s.per_category["a"]["nearest_vertex"] == 1.0
    assert s.no_part_rejection["bsb"] == 0.5 and s.no_part_rejection["nearest_vertex"] == 0.0
    assert s.false_rejection["bsb"] == 0.5 and s.cross_success["bsb"] == 1.0
    # part scores (0.9, 0 rejected) vs decal scores (0 rejected, 0.9): 1 win, 2 ties, 1 loss of 4 pairs
    assert s.bsb_confidence["auroc"] == pytest.approx(0.5)
    assert C.auroc(np.array([1.0, 0.5]), np.array([0.5, 0.0])) == pytest.approx(0.875)
    record = s.to_json()
    assert record["mode"] == "oracle" and record["bsb_success"] == 0.5 and record["nn_success"] == 1.0
    assert "no_part_rejection_rate" in record and "random_success" in record
    assert "oracle" in C.format_table(s) and "matching logic" in C.format_table(s)


def test_small_benchmark_subset_is_well_formed(shared_data):
    protocol = C.Protocol(meshes=("airplane/61",), views=1, clicks=4,
                          cross_pairs=(("airplane/63", "airplane/61"),))
    outcomes = list(C.run(protocol, C.OracleModels()))
    lms = {n: load_labelled(n) for n in ("airplane/61",)}
    trials = {o.trial for o in outcomes}
    assert {o.method for o in outcomes} == set(C.METHODS)
    assert len(outcomes) == 3 * len(trials)
    kinds = [t.kind for t in trials]
    assert kinds.count("part") == 4 and kinds.count("cross") == 4 and kinds.count("decal") <= 1
    for t in trials:
        if t.kind == "part":  # the click is an interior vertex of its ground-truth part
            assert lms[t.image_mesh].vertex_parts[t.vertex].sum() == 1
            assert lms[t.image_mesh].vertex_parts[t.vertex, t.part]
        if t.kind == "cross":
            assert t.image_mesh == "airplane/63" and t.shape_mesh == "airplane/61" and 0 <= t.part <= 4
    semantic = load_labelled("airplane/61", semantic=True)
    for o in outcomes:
        if o.method == "nearest_vertex":
            assert o.found
        if o.trial.kind != "decal" and o.found:
            shape = semantic if o.trial.kind == "cross" else lms["airplane/61"]
            assert o.success == bool(shape.vertex_parts[o.vertex, o.trial.part])
    s = C.summarize(outcomes, "oracle")
    assert s.n_part_trials == 4 and s.n_cross_trials == 4


def test_real_path_runs_on_tiny_random_weights_and_says_so(tmp_path, shared_data):
    from engine.pipeline import Session

    session = Session(profile="tiny", device="cpu", models_dir=tmp_path / "models", cache_dir=tmp_path / "cache",
                      offline=True)
    models = C.RealModels(session)
    assert models.mode == "plumbing"  # random weights are never reported as "real"
    protocol = C.Protocol(meshes=("bearing/341",), views=1, clicks=1, cross_pairs=(), size=96)
    outcomes = list(C.run(protocol, models))
    assert {o.method for o in outcomes} == set(C.METHODS)
    lm = load_labelled("bearing/341")
    assert all(o.vertex is None or 0 <= o.vertex < len(lm.mesh.vertices) for o in outcomes)
    assert "RANDOM-WEIGHT" in C.format_table(C.summarize(outcomes, models.mode))


def test_report_reads_last_json_lines_and_lists_missing_figures():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.last_json('table\n{"a": 1}\n') == ({"a": 1}, None)
    assert report.last_json('{"a": 1}\nafter')[1] is not None
    assert report.last_json("no json")[0] is None
    rows, missing, figures = report.gather({
        "raster": {"figures": {"raster_224_50k_views_per_s": 400.0, "seconds": 3.0}},
        "correspondence": {"figures": {"mode": "oracle", "bsb_success": 0.8, "per_category": {"a": {}}}}})
    keys = [r[1] for r in rows]
    assert "raster_224_50k_views_per_s" in keys and "bsb_success" in keys and "seconds" not in keys
    assert "match_click_s_cpu" in missing and "bsb_success" not in missing
    assert figures["mode"] == "oracle" and "per_category" not in figures


# ----- oracle teachers behind the real model interfaces (engine.evaluation.oracle_models) --------------

def _oracle(quadrants, front_scene, **segmenter):
    from engine.evaluation.oracle_models import Registry, SegmenterConfig, oracle_models, register_scene

    registry = Registry("test:quadrants", quadrants.n_parts)
    register_scene(registry, quadrants, front_scene)
    return registry, oracle_models(registry, segmenter=SegmenterConfig(**segmenter))


def test_oracle_models_refuse_unregistered_images(quadrants, front_scene):
    from engine.errors import BsbError

    _, models = _oracle(quadrants, front_scene)
    other = front_scene.image.copy()
    other[0, 0, 0] ^= 1
    with pytest.raises(BsbError, match="no ground truth"):
        models.dino(other[None])
    with pytest.raises(BsbError, match="no ground truth"):
        models.sam.encode(other[None])


def test_oracle_sam_answers_from_its_embedding_small_to_large(quadrants, front_scene):
    """The embedding alone (as SamViewSegmenter holds it) brings back the image's ground truth; a click deep in
    a quadrant gets that quadrant (its one piece) then the object, sorted small to large."""
    from engine.bsb.regions import interior_pixel

    _, models = _oracle(quadrants, front_scene)
    emb = models.sam.encode(front_scene.image[None])
    assert emb.shape == (1, 256, 64, 64)
    models.sam.set_embedding(emb[0].clone(), front_scene.part_map.shape)
    regions = front_scene.region_map()
    part = int(front_scene.part_map[~front_scene.decal & (front_scene.part_map >= 0)][0])
    x, y = interior_pixel((regions == part))
    out = models.sam.predict(np.array([[[x + 0.5, y + 0.5]]]), np.array([[1]]))
    piece, whole, obj = out.masks[0]
    assert (piece == (regions == part)).all() and (whole == piece).all()
    assert (obj == (front_scene.part_map >= 0)).all() and piece.sum() < obj.sum()
    # a negative click on another part removes it from the object-level mask only
    other = int(next(p for p in range(4) if p != part and (regions == p).any()))
    ox, oy = interior_pixel(regions == other)
    two = models.sam.predict(np.array([[[x + 0.5, y + 0.5], [ox + 0.5, oy + 0.5]]]), np.array([[1, 0]]),
                             multimask=False)
    assert two.masks.shape[1] == 1 and (two.masks[0, 0] == piece).all()
    # a click on a decal answers the decal, the region no mesh part has
    dx, dy = interior_pixel(front_scene.decal)
    decal = models.sam.predict(np.array([[[dx + 0.5, dy + 0.5]]]), np.array([[1]])).masks[0, 0]
    assert (decal == front_scene.decal).all()


def test_oracle_sam_errors_follow_the_error_rate(quadrants, front_scene):
    from engine.bsb.regions import interior_pixel

    regions = front_scene.region_map()
    x, y = interior_pixel(regions == 0)
    pts = np.array([[[x + 0.5 + dx, y + 0.5]] for dx in np.linspace(-3, 3, 60)])
    wrong = []
    for rate in (0.0, 0.5):
        _, models = _oracle(quadrants, front_scene, error_rate=rate, error_px=40)
        models.sam.set_image(front_scene.image)
        part = models.sam.predict(pts, np.ones((60, 1), int)).masks[:, 1]
        wrong.append(float(np.mean([(m != (regions == 0)).any() for m in part])))
    assert wrong[0] == 0.0 and 0.3 < wrong[1] < 0.7, wrong


def test_oracle_features_tell_parts_apart_and_shuffle_breaks_them(quadrants, front_scene):
    from engine.evaluation.oracle_models import Registry, oracle_models, register_scene

    registry = Registry("test:quadrants", quadrants.n_parts)
    register_scene(registry, quadrants, front_scene)
    clean = oracle_models(registry, features=CLEAN).dino
    shuffled = oracle_models(registry, features=CLEAN, shuffle=True).dino
    truth = clean.vertex_truth(quadrants)  # what each vertex's renders teach
    blocks = (front_scene.part_map == 3) & ~front_scene.decal  # 16 x 16 cells of 8 x 8 pixels
    full = blocks.reshape(16, 8, 16, 8).all(axis=(1, 3))
    r, c = np.argwhere(full)[0]
    for model, right in ((clean, True), (shuffled, False)):
        grid = model(front_scene.image[None])[0].numpy()
        assert grid.shape == (clean.dim, 16, 16)
        f = grid[:, r, c]
        best = np.argmax([f @ truth[quadrants.interior_vertices(p)[0]] for p in range(4)])
        assert (best == 3) == right


def test_face_pieces_split_a_label_into_its_connected_pieces():
    from engine.evaluation.oracle_models import face_pieces

    a = trimesh.creation.box(extents=(1, 1, 1))
    b = trimesh.creation.box(extents=(1, 1, 1))
    b.apply_translation((3, 0, 0))
    both = trimesh.util.concatenate([a, b])
    mesh = mesh_from_arrays(np.asarray(both.vertices), np.asarray(both.faces))
    lm = LabelledMesh("two/boxes", "two", mesh, np.zeros(len(mesh.faces), np.int32))  # one label, two boxes
    pieces = face_pieces(lm)
    assert len(np.unique(pieces)) == 2 and len(np.unique(pieces[:12])) == 1
