"""The pipeline glue (engine/pipeline.py) and result writers (engine/results.py) on the tiny profile.

Tiny models have random weights: these tests check plumbing, shapes, caching and frames, never quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from engine import results
from engine.errors import BsbError, Cancelled
from engine.images import image_from_array
from engine.mesh import mesh_from_arrays
from engine.pipeline import Session, mesh_cache_key, render_views, settings_for
from engine.sample_meshes import mug


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def mug_mesh():
    v, f, labels, _ = mug(0, 16)
    return mesh_from_arrays(v, f)


@pytest.fixture(scope="module")
def session(tmp_path_factory, models_dir):
    return Session("tiny", "cpu", models_dir=models_dir, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def prepared(session, mug_mesh):
    return session.prepare(mug_mesh)


def test_settings_follow_the_profile_and_take_overrides():
    from engine.models.profiles import get_profile

    cpu = settings_for("cpu")
    assert (cpu.sam_views, cpu.dino_size) == (get_profile("cpu").sam_views, get_profile("cpu").dino_input_size)
    assert settings_for("tiny", k=7).k == 7
    with pytest.raises(BsbError, match="unknown profile"):
        settings_for("huge")


def test_prepare_gives_per_vertex_features_and_a_decoder(session, prepared, mug_mesh):
    V = mug_mesh.num_vertices
    assert session.random_weights and not prepared.cached
    assert prepared.dino.shape[0] == V and prepared.sam.shape == (V, 256)
    assert np.isfinite(prepared.dino.numpy()).all()
    prob = prepared.iseg.predict([(0, True)])
    assert prob.shape == (V,) and ((prob >= 0) & (prob <= 1)).all()


def test_second_prepare_is_served_from_cache_and_answers_alike(session, prepared, mug_mesh):
    again = session.prepare(mug_mesh)
    assert again.cached and again.key == prepared.key
    np.testing.assert_array_equal(again.dino.numpy(), prepared.dino.numpy())
    np.testing.assert_array_equal(again.sam.numpy(), prepared.sam.numpy())
    clicks = [(3, True), (40, False)]
    np.testing.assert_allclose(again.iseg.predict(clicks), prepared.iseg.predict(clicks), atol=1e-6)


def test_moved_vertex_misses_the_cache_and_corrupt_entry_is_rebuilt(session, prepared, mug_mesh):
    v, f, _, _ = mug(0, 16)
    v = v.copy()
    v[5] += 0.01
    moved = mesh_from_arrays(v, f)
    events = []
    other = session.prepare(moved, progress=lambda fr, msg: events.append(fr))
    assert not other.cached and other.key != prepared.key
    assert events and events[-1] == pytest.approx(1.0) and events == sorted(events)

    entry = session.cache.root / "mesh" / prepared.key
    raw = bytearray((entry / "dino.npy").read_bytes())
    raw[-3] ^= 0x55
    (entry / "dino.npy").write_bytes(bytes(raw))
    rebuilt = session.prepare(mug_mesh)
    assert not rebuilt.cached
    np.testing.assert_allclose(rebuilt.dino.numpy(), prepared.dino.numpy(), atol=1e-3)  # deterministic rebuild
    assert session.prepare(mug_mesh).cached


def test_cancel_stops_preparation_and_caches_nothing(session):
    v, f, _, _ = mug(0, 12)
    mesh = mesh_from_arrays(v * 1.5, f)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        session.prepare(mesh, cancel=cancel)
    assert session.cache.get("mesh", mesh_cache_key(mesh, session.models, session.settings)) is None


def test_match_refine_and_results(session, prepared, mug_mesh, tmp_path):
    _, _, renders = render_views(mug_mesh, 1, 96, "uniform")
    image = image_from_array(renders[0])
    pimage = session.set_image(image)
    assert session.set_image(image).cached
    covered = np.argwhere(renders[0].min(axis=-1) < 250)
    y, x = covered[len(covered) // 2]
    match = session.match(prepared, pimage, [[x + 0.5, y + 0.5]], [1])
    V = mug_mesh.num_vertices
    assert match.n_candidates == prepared.settings.k
    if match.found:
        assert match.weights.shape == (V,) and match.vertex_mask.dtype == bool
    npz = results.write_match_npz(tmp_path / "r.npz", match, V, image.original_size, True)
    data = np.load(npz)
    assert data["weights"].shape == (V,) and data["part_mask"].shape == (96, 96) and bool(data["random_weights"])
    none = session.match(prepared, pimage, [[x + 0.5, y + 0.5]], [1], min_confidence=1.5)  # IoU <= 1 always
    assert not none.found and "below minimum" in none.reason

    weights, mask = session.refine(prepared, [(0, True)])
    assert weights.shape == (V,) and mask.dtype == bool
    with pytest.raises(BsbError, match="out of range"):
        session.refine(prepared, [(V, True)])

    for rule in ("paper", "buddies"):
        region = session.shape_to_image(prepared, pimage, [3, 40], rule=rule)
        assert region.match.n_candidates == prepared.settings.k
        if region.found:
            assert region.mask.shape == (96, 96) and region.mask.any() and region.pixel is not None
        else:
            assert region.mask is None and region.match.n_valid == 0
    with pytest.raises(BsbError, match="unknown shape-to-image rule"):
        session.shape_to_image(prepared, pimage, [3], rule="nearest")


def test_teacher_views_are_uniform_on_the_sphere(models_dir, monkeypatch):
    """Both teachers see Fibonacci views: the reference's front-biased sampling leaves the back unseen."""
    import engine.pipeline as pipeline

    modes = []
    render = pipeline.render_views
    monkeypatch.setattr(pipeline, "render_views", lambda mesh, n, size, mode, *rest: modes.append(mode) or render(mesh, n, size, mode, *rest))
    v, f, _, _ = mug(0, 8)
    Session("tiny", "cpu", models_dir=models_dir, use_cache=False).prepare(mesh_from_arrays(v, f))
    assert modes == ["uniform", "uniform"]


def test_ply_is_in_the_source_frame_with_the_part_coloured(mug_mesh, tmp_path):
    v, f, labels, _ = mug(0, 16)
    mask = labels == labels.max()
    ply = results.write_colored_ply(tmp_path / "m.ply", mug_mesh, mask)
    loaded = trimesh.load(ply, process=False)
    np.testing.assert_allclose(loaded.vertices, v, atol=1e-5)
    colors = loaded.visual.vertex_colors[:, :3]
    assert (colors[mask] == results.PART_COLOR).all() and (colors[~mask] == results.BASE_COLOR).all()
    np.testing.assert_array_equal(loaded.faces, mug_mesh.faces)


def test_resize_mask_keeps_pixel_centres():
    small = np.zeros((2, 4), bool)
    small[0, 1] = True  # covers x in [1, 2), y in [0, 1) of a 4x2 image
    big = results.resize_mask(small, (8, 4))
    expected = np.zeros((4, 8), bool)
    expected[0:2, 2:4] = True
    np.testing.assert_array_equal(big, expected)


def test_preview_shows_the_random_weights_warning(mug_mesh):
    from engine.bsb.result import MatchResult

    mask = np.zeros(mug_mesh.num_vertices, bool)
    mask[:50] = True
    match = MatchResult(True, None, 0.9, 100, 5, 3, (10.0, 12.0), np.ones((40, 40), bool), np.ones((40, 40), bool),
                        weights=mask.astype(np.float32), vertex_mask=mask)
    pic = results.match_preview(mug_mesh, np.full((40, 40, 3), 200, np.uint8), match, [(10, 12, 1)], 1.0, True, 96)
    assert pic.ndim == 3 and pic.shape[1] > 2 * 96
    render = results.render_highlight(mug_mesh, mask, 64)
    part = (np.abs(render.astype(int) - np.array(results.PART_COLOR)).sum(-1) < 200) & (render[..., 0] > render[..., 2] + 40)
    assert part.any()  # the highlighted part is visible and orange-ish
    assert results.preview_title("x", True).endswith(results.RANDOM_NOTE)


def test_a_seeded_vertex_is_decoded_once_per_answer(prepared, monkeypatch):
    """break_tie seeds the winner before seed_result does: the second ask reuses the first decoder pass,
    and gives an equal array that the caller may change freely."""
    from engine.pipeline import _seed

    calls = []
    predict = prepared.iseg.predict
    monkeypatch.setattr(prepared.iseg, "predict", lambda clicks: calls.append(clicks) or predict(clicks))
    seed = _seed(prepared)
    first = seed(5)
    first[:] = -1.0
    again = seed(5)
    assert len(calls) == 1 and (again >= 0).all()
    np.testing.assert_array_equal(again, _seed(prepared)(5))
    assert len(calls) == 2
