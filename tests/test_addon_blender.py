"""The add-on inside Blender (bpy wheel, background mode) against the fake engine script.

Answers are known by construction: the fake engine selects the vertices above the mesh's mid-height
(scene up = +Z) for a click in the top half of the image. The UV sphere has an odd ring count, so no
vertex sits at mid-height: the part is the upper hemisphere and its faces are those whose corners all
lie above the equator (the straddling quads have two corners each side). Failures (engine missing, crash, cancel, stale object, bad input) must leave
vertex groups, attributes and materials exactly as they were.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402  (ships with bpy)

from bsb_addon import api, engine_client as ec, jobs, session  # noqa: E402
from bsb_addon.errors import InputError, ObjectChanged  # noqa: E402

pytestmark = pytest.mark.blender
FAKE = Path(__file__).with_name("fake_engine.py")


def fake_client(tmp_path: Path, *flags: str) -> ec.EngineClient:
    cfg = ec.EngineConfig(command=[sys.executable, "-u", str(FAKE), *flags], log_path=str(tmp_path / "fake.log"),
                          start_timeout=30, cancel_grace=3)
    client = ec.EngineClient(cfg)
    client.start()
    return client


@pytest.fixture(scope="module")
def addon():
    mod = addon_utils.enable("bsb_addon", default_set=True, handle_error=None)
    assert mod is not None
    yield mod
    session.release()
    addon_utils.disable("bsb_addon", default_set=True)


@pytest.fixture
def scene(addon, tmp_path):
    """A fresh UV sphere and a 40x20 reference image: top half red, bottom half blue."""
    for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.materials, bpy.data.images):
        for item in list(coll):
            coll.remove(item)
    bpy.context.scene.bsb.results.clear()
    bpy.context.scene.bsb.clicks.clear()
    wm = bpy.context.window_manager.bsb_job
    wm.error, wm.fix, wm.message = "", "NONE", ""
    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=9, radius=1.0)
    obj = bpy.context.active_object
    img = bpy.data.images.new("ref", 40, 20)
    px = np.zeros((20, 40, 4), np.float32)
    px[10:, :, 0] = 1.0  # Blender rows run bottom-up: rows 10..19 are the top of the picture
    px[:10, :, 2] = 1.0
    px[..., 3] = 1.0
    img.pixels.foreach_set(px.ravel())
    client = fake_client(tmp_path)
    session.use_client(client)
    yield obj, img
    session.release()


def local_z(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)[:, 2]


def group_members(obj, name: str) -> dict[int, float]:
    gi = obj.vertex_groups[name].index
    return {v.index: g.weight for v in obj.data.vertices for g in v.groups if g.group == gi}


def snapshot(obj) -> dict:
    """Everything a failed action must not touch."""
    me = obj.data
    mi = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", mi)
    return {
        "groups": {g.name: group_members(obj, g.name) for g in obj.vertex_groups},
        "attributes": sorted(a.name for a in me.attributes),
        "slots": [getattr(m, "name", None) for m in me.materials],
        "materials": sorted(m.name for m in bpy.data.materials),
        "material_index": mi.tolist(),
    }


def test_register_unregister_twice_cleanly(addon):
    for _ in range(2):
        addon_utils.disable("bsb_addon", default_set=True)
        assert not hasattr(bpy.types.Scene, "bsb") and not hasattr(bpy.types, "BSB_PT_view3d")
        addon_utils.enable("bsb_addon", default_set=True, handle_error=None)
        assert hasattr(bpy.types.Scene, "bsb") and hasattr(bpy.types, "BSB_OT_match")
    assert session.preferences() is not None and session.preferences().device == "AUTO"


def test_headless_match_writes_group_attribute_and_material_on_the_right_faces(scene):
    obj, img = scene
    out = api.match(obj, img, [[20.0, 2.0]], [1], group_name="Top", material="NEW")
    z = local_z(obj)
    expected = set(np.flatnonzero(z > 1e-6).tolist())
    assert out["found"] and out["n_selected"] == len(expected)
    assert set(group_members(obj, "Top")) == expected
    attr = np.empty(len(z), np.float32)
    obj.data.attributes["bsb_Top"].data.foreach_get("value", attr)
    assert np.array_equal(attr > 0.5, z > 1e-6)
    mi = np.empty(len(obj.data.polygons), np.int32)
    obj.data.polygons.foreach_get("material_index", mi)
    slot = [getattr(m, "name", None) for m in obj.data.materials].index("Top")
    want = [all(z[v] > 1e-6 for v in p.vertices) for p in obj.data.polygons]
    assert (mi == slot).tolist() == want and out["n_faces"] == sum(want)
    # The image's top half is pure red: the new material takes the part's median colour.
    assert tuple(bpy.data.materials["Top"].diffuse_color) == pytest.approx((1.0, 0.0, 0.0, 1.0))
    item = bpy.context.scene.bsb.results[0]
    assert item.name == "Top" and item.found and item.n_vertices == len(expected) and not item.random_weights


def test_operator_match_uses_blender_clicks_and_world_up(scene):
    obj, img = scene
    obj.rotation_euler = (math.pi, 0.0, 0.0)  # upside down: the picture's top is now local -Z
    bpy.context.view_layer.update()
    s = bpy.context.scene.bsb
    s.image, s.group_name = img, "Upper"
    click = s.clicks.add()
    click.u, click.v, click.positive = 0.5, 0.9, True  # near the top in Blender's bottom-up view space
    assert bpy.ops.bsb.match() == {"FINISHED"}
    assert set(group_members(obj, "Upper")) == set(np.flatnonzero(local_z(obj) < -1e-6).tolist())
    assert "Upper" in bpy.context.window_manager.bsb_job.message


def test_soft_weights_and_no_part_found(scene):
    obj, img = scene
    api.match(obj, img, [[20.0, 18.0]], group_name="Low", soft=True)
    weights = group_members(obj, "Low")
    assert set(weights) == set(np.flatnonzero(local_z(obj) <= 1e-6).tolist())
    assert all(w == pytest.approx(0.9, abs=1 / 255) for w in weights.values())
    before = snapshot(obj)
    out = api.match(obj, img, [[1.0, 5.0]], group_name="Nothing")
    assert not out["found"] and out["label"] == "no corresponding part"
    assert snapshot(obj) == before
    assert bpy.context.scene.bsb.results[-1].name == "Nothing" and not bpy.context.scene.bsb.results[-1].found


def test_random_weights_are_labelled_as_plumbing_check(scene, tmp_path):
    obj, img = scene
    session.use_client(fake_client(tmp_path, "--random-weights"))
    out = api.match(obj, img, [[20.0, 2.0]], group_name="Top")
    assert out["random_weights"] and "plumbing check (random weights)" in out["label"]
    assert bpy.context.scene.bsb.results[-1].random_weights


@pytest.mark.parametrize("flags, cancel, error", [(("--crash-on", "match"), False, ec.EngineCrashed),
                                                  (("--slow", "20"), True, ec.EngineCancelled)])
def test_crash_and_cancel_leave_the_blend_unchanged(scene, tmp_path, flags, cancel, error):
    obj, img = scene
    api.match(obj, img, [[20.0, 2.0]], group_name="Existing", material="NEW")
    before = snapshot(obj)
    session.use_client(fake_client(tmp_path, *flags))
    with pytest.raises(error):
        api.match(obj, img, [[20.0, 18.0]], group_name="New", material="NEW", cancel=lambda: cancel)
    assert snapshot(obj) == before


def test_operator_reports_crash_with_restart_fix(scene, tmp_path):
    obj, img = scene
    session.use_client(fake_client(tmp_path, "--crash-on", "prepare"))
    before = snapshot(obj)
    with pytest.raises(RuntimeError, match="stopped unexpectedly"):
        bpy.ops.bsb.prepare_mesh()
    assert bpy.context.window_manager.bsb_job.fix == "RESTART"
    assert snapshot(obj) == before


def test_engine_missing_is_a_clear_error_with_preferences_fix(scene, tmp_path):
    obj, img = scene
    session.release()
    session.preferences().engine_python = str(tmp_path / "no-such-python")
    s = bpy.context.scene.bsb
    s.image = img
    click = s.clicks.add()
    click.u, click.v = 0.5, 0.5
    before = snapshot(obj)
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.bsb.match()
    assert bpy.context.window_manager.bsb_job.fix == "PREFS"
    assert snapshot(obj) == before
    session.preferences().engine_python = ""


def test_stale_object_is_refused_and_nothing_written(scene):
    obj, img = scene
    req = api.begin(obj, img)
    result = jobs.run_match(session.get_client(), req.mesh, req.image_path, str(req.job_dir / "m"), points=[[20, 2]])
    obj.data.vertices.add(1)  # the user edited the mesh while the engine worked
    before = snapshot(obj)
    with pytest.raises(ObjectChanged, match="edited"):
        api.apply_part(req, result, "Late")
    obj.name = "Renamed"
    with pytest.raises(ObjectChanged, match="no longer exists"):
        api.apply_part(req, result, "Late")
    assert snapshot(obj) == before


def test_bad_input_messages(scene):
    obj, img = scene
    with pytest.raises(InputError, match="No active object"):
        api.match(None, img, [[1, 1]])
    empty = bpy.data.objects.new("Empty", bpy.data.meshes.new("empty"))
    with pytest.raises(InputError, match="no faces"):
        api.match(empty, img, [[1, 1]])
    with pytest.raises(InputError, match="does not exist"):
        api.match(obj, "/no/such/image.png", [[1, 1]])
    before = snapshot(obj)
    with pytest.raises(ec.EngineError, match="outside"):
        api.match(obj, img, [[40.5, 3.0]])
    assert snapshot(obj) == before


def test_refine_from_edit_mode_selection_and_match_all(scene):
    obj, img = scene
    z = local_z(obj)
    top, bottom = int(np.argmax(z)), int(np.argmin(z))
    for items in (obj.data.edges, obj.data.polygons):  # selected faces would re-select their vertices
        items.foreach_set("select", np.zeros(len(items), bool))
    sel = np.zeros(len(z), bool)
    sel[top] = True
    obj.data.vertices.foreach_set("select", sel)
    bpy.context.scene.bsb.group_name = "Cap"
    bpy.ops.object.mode_set(mode="EDIT")
    assert bpy.ops.bsb.refine(positive=True) == {"FINISHED"}
    bpy.ops.object.mode_set(mode="OBJECT")
    sel[:] = False
    sel[bottom] = True
    obj.data.vertices.foreach_set("select", sel)
    assert bpy.ops.bsb.refine(positive=False) == {"FINISHED"}
    co = np.empty(len(z) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    nearer_top = np.linalg.norm(co - co[top], axis=1) < np.linalg.norm(co - co[bottom], axis=1)
    assert set(group_members(obj, "Cap")) == set(np.flatnonzero(nearer_top).tolist())
    out = api.match_all(obj, img, prefix="All")
    assert [o["group"] for o in out] == ["All top", "All bottom"]
    assert len(group_members(obj, "All top")) + len(group_members(obj, "All bottom")) == len(z)


def test_modifiers_send_the_evaluated_mesh_with_a_map_back_or_warn(scene):
    from bsb_addon import meshio

    obj, _ = scene
    original, _, copies, warning = meshio.read_mesh(obj)
    assert copies is None and not warning
    obj.modifiers.new("sub", "SUBSURF")
    with_subsurf, _, copies, warning = meshio.read_mesh(obj, bpy.context.evaluated_depsgraph_get())
    assert len(with_subsurf) > len(original) and not warning
    # Every base vertex has exactly one copy, at the index the map names.
    assert sorted(copies[copies >= 0].tolist()) == list(range(len(original)))
    assert not any(a.name.startswith("bsb_tmp") for a in obj.data.attributes)  # temporary layers removed
    obj.modifiers.clear()
    mod = obj.modifiers.new("push", "DISPLACE")
    mod.strength = 0.5
    displaced, _, copies, _ = meshio.read_mesh(obj, bpy.context.evaluated_depsgraph_get())
    assert copies is None and displaced.shape == original.shape and not np.allclose(displaced, original)
    obj.modifiers.clear()
    obj.modifiers.new("dec", "DECIMATE").ratio = 0.3
    base, _, copies, warning = meshio.read_mesh(obj, bpy.context.evaluated_depsgraph_get())
    assert copies is None and np.allclose(base, original) and "WITHOUT its modifiers" in warning


def test_real_engine_tiny_profile_end_to_end(scene):
    """The real `python -m engine serve --profile tiny` started from the preferences (random weights:
    a plumbing check, so the answer itself is not judged; what is checked is that exactly the engine's
    vertices are written, on the right faces, and that the result says it is a plumbing check)."""
    obj, img = scene
    session.release()
    prefs = session.preferences()
    prefs.engine_python, prefs.profile, prefs.device = sys.executable, "TINY", "CPU"
    try:
        req = api.begin(obj, img)
        client = session.get_client()
        assert client.hello["protocol"] == 1 and client.random_weights
        result = jobs.run_match(client, req.mesh, req.image_path, str(req.job_dir / "m"), points=[[20.0, 5.0]])
        assert result.random_weights and result.part_mask is not None and result.part_mask.shape == (20, 40)
        if not result.found:
            pytest.skip(f"the random-weight engine found no part this time ({result.reason})")
        want = [2 * sum(result.mask[v] for v in p.vertices) > len(p.vertices) for p in obj.data.polygons]
        out = api.apply_part(req, result, "Real", material="NEW" if any(want) else None, color_from_image=True)
        assert "plumbing check (random weights)" in out["label"]
        assert set(group_members(obj, "Real")) == set(np.flatnonzero(result.mask).tolist())
        if any(want):
            mi = np.empty(len(obj.data.polygons), np.int32)
            obj.data.polygons.foreach_get("material_index", mi)
            slot = [getattr(m, "name", None) for m in obj.data.materials].index("Real")
            assert (mi == slot).tolist() == want
    finally:
        session.release()
        prefs.engine_python, prefs.profile, prefs.device = "", "CPU", "AUTO"


@pytest.mark.parametrize("operator", ["match", "match_all", "shape_to_image"])
def test_operators_without_a_reference_image_say_so_and_write_nothing(scene, operator):
    obj, _ = scene
    bpy.context.scene.bsb.image = None
    before = snapshot(obj)
    with pytest.raises(RuntimeError, match="No reference image"):
        getattr(bpy.ops.bsb, operator)()
    assert snapshot(obj) == before
