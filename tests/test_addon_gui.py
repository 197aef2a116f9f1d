"""The GUI path driven headless: worker thread, the drain timer fired by hand, `apply_result` as an undo step.

`session._force_interactive` makes the add-on take its interactive path under the bpy wheel (where
timers never fire by themselves); `pump()` plays the timer. The fake engine's planted rule (a click in
the image's top half selects the vertices above mid-height) gives the expected answers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402
import bmesh  # noqa: E402

from bsb_addon import api, feedback, jobs, session  # noqa: E402
from bsb_addon import engine_client as ec  # noqa: E402

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
def gui(addon, tmp_path, monkeypatch):
    """Interactive mode, an empty scene with a reference image, the fake engine, and captured reports."""
    monkeypatch.setattr(session, "_force_interactive", True)
    reports: list[tuple[str, str]] = []
    monkeypatch.setattr(feedback, "report", lambda level, msg: reports.append((level, msg)))
    reset_scene()
    session.use_client(fake_client(tmp_path))
    yield reports
    session.cancel_job()
    pump(timeout=10)
    session.release()


def reset_scene():
    if bpy.context.object is not None and bpy.context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.materials, bpy.data.images):
        for item in list(coll):
            coll.remove(item)
    s = bpy.context.scene.bsb
    s.results.clear()
    s.clicks.clear()
    s.group_name = ""
    job = bpy.context.window_manager.bsb_job
    job.error, job.fix, job.message, job.busy = "", "NONE", "", False
    img = bpy.data.images.new("ref", 40, 20)
    px = np.zeros((20, 40, 4), np.float32)
    px[10:, :, 0] = 1.0
    px[..., 3] = 1.0
    img.pixels.foreach_set(px.ravel())
    s.image = img


def sphere(segments: int = 16, rings: int = 9):
    bpy.ops.mesh.primitive_uv_sphere_add(segments=segments, ring_count=rings, radius=1.0)
    return bpy.context.active_object


def big_grid(side: int = 320):
    """A wavy side x side grid built with foreach_set (primitive operators take ~a minute at 100k vertices)."""
    x, y = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side))
    co = np.stack([x, y, 0.2 * np.sin(3 * x) * np.cos(3 * y)], -1).reshape(-1, 3).astype(np.float32)
    i = np.arange(side - 1)
    a = (i[:, None] * side + i[None, :]).ravel()
    quads = np.stack([a, a + 1, a + side + 1, a + side], -1).astype(np.int32)
    me = bpy.data.meshes.new("grid")
    me.vertices.add(len(co))
    me.vertices.foreach_set("co", co.ravel())
    me.loops.add(quads.size)
    me.loops.foreach_set("vertex_index", quads.ravel())
    me.polygons.add(len(quads))
    me.polygons.foreach_set("loop_start", np.arange(0, quads.size, 4, dtype=np.int32))
    me.update(calc_edges=True)
    obj = bpy.data.objects.new("Grid", me)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def click_top():
    c = bpy.context.scene.bsb.clicks.add()
    c.u, c.v, c.positive = 0.5, 0.9, True


def pump(timeout: float = 20.0) -> None:
    """Play the drain timer until the job is over (bounded)."""
    end = time.monotonic() + timeout
    while session.busy() and time.monotonic() < end:
        if bpy.app.timers.is_registered(session.drain):
            session.drain()
        time.sleep(0.02)
    assert not session.busy(), "the job did not finish"


def z_of(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)[:, 2]


def members(obj, name: str) -> set[int]:
    gi = obj.vertex_groups[name].index
    return {v.index for v in obj.data.vertices for g in v.groups if g.group == gi}


def test_match_in_the_gui_runs_on_a_thread_and_writes_a_new_group_each_time(gui):
    obj = sphere()
    for expected in ("Part 1", "Part 2"):
        click_top()
        assert bpy.ops.bsb.match() == {"FINISHED"}
        assert session.busy() and bpy.app.timers.is_registered(session.drain)
        pump()
        assert expected in obj.vertex_groups and members(obj, expected) == set(np.flatnonzero(z_of(obj) > 1e-6))
        assert len(bpy.context.scene.bsb.clicks) == 0  # the clicks went with that part
    item = bpy.context.scene.bsb.results["Part 2"]
    assert json.loads(item.image_clicks) == [[0.5, pytest.approx(0.9), 1]] and item.image.startswith("ref")
    assert json.loads(item.engine)["engine"] == "0.0-fake"
    assert not bpy.context.window_manager.bsb_job.busy and not gui


def test_file_load_mid_job_cancels_it_and_leaves_the_addon_usable(gui, tmp_path):
    session.use_client(fake_client(tmp_path, "--slow", "3"))
    name = sphere().name
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "other.blend"))
    click_top()
    assert bpy.ops.bsb.match() == {"FINISHED"} and session.busy()
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "other.blend"))  # File > Open during the job
    assert bpy.app.timers.is_registered(session.drain)  # persistent: survives the load
    pump()
    job = bpy.context.window_manager.bsb_job
    assert not job.busy and "a file was loaded" in job.message + job.error
    assert not bpy.data.objects[name].vertex_groups  # the loaded file's object got nothing
    # Usable again at once: a new job runs to the end.
    session.use_client(fake_client(tmp_path))
    reset_scene()
    obj = sphere()
    click_top()
    assert bpy.ops.bsb.match() == {"FINISHED"}
    pump()
    assert "Part 1" in obj.vertex_groups


def test_unflushed_edit_mode_edits_are_sent_and_edits_during_the_job_are_refused(gui, tmp_path):
    obj = sphere()
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    low = min(bm.verts, key=lambda v: v.co.z)
    low.co.z = 3.0  # the bottom pole jumps above everything; not flushed to obj.data yet
    bmesh.update_edit_mesh(obj.data)
    click_top()
    assert bpy.ops.bsb.match() == {"FINISHED"}
    pump()
    assert obj.mode == "EDIT"
    obj.update_from_editmode()
    z = z_of(obj)
    assert z.max() == pytest.approx(3.0)
    # Mid-height moved up with the edited pole: the part follows the edited mesh, not the stale one.
    assert members(obj, "Part 1") == set(np.flatnonzero(z > 0.5 * (z.min() + z.max())))
    bpy.ops.object.mode_set(mode="OBJECT")

    session.use_client(fake_client(tmp_path, "--slow", "1"))
    bpy.ops.object.mode_set(mode="EDIT")
    click_top()
    assert bpy.ops.bsb.match() == {"FINISHED"}
    bm = bmesh.from_edit_mesh(obj.data)
    next(iter(bm.verts)).co.x += 0.5  # edited in Edit Mode while the engine works
    bmesh.update_edit_mesh(obj.data)
    pump()
    job = bpy.context.window_manager.bsb_job
    assert "were moved" in job.error and "Internal error" not in job.error and job.fix == "NONE"
    assert "Part 2" not in obj.vertex_groups and ("ERROR", job.error) in gui
    bpy.ops.object.mode_set(mode="OBJECT")


def test_moved_vertices_and_deleted_objects_are_refused_with_plain_messages(gui, tmp_path):
    session.use_client(fake_client(tmp_path, "--slow", "0.6"))
    obj = sphere()
    click_top()
    bpy.ops.bsb.match()
    obj.data.vertices[3].co.z += 0.01  # a sculpt stroke: counts unchanged
    pump()
    assert "were moved" in bpy.context.window_manager.bsb_job.error and not obj.vertex_groups
    click_top()
    bpy.ops.bsb.match()
    bpy.data.objects.remove(obj)
    pump()
    error = bpy.context.window_manager.bsb_job.error
    assert "no longer exists" in error and "Internal error" not in error


def test_a_100k_vertex_selection_refines_as_a_small_request(gui, tmp_path):
    obj = big_grid()
    n = len(obj.data.vertices)
    assert n > 100_000
    obj.data.vertices.foreach_set("select", np.ones(n, bool))
    t0 = time.monotonic()
    assert bpy.ops.bsb.refine(positive=True) == {"FINISHED"}
    pump(timeout=60)
    assert not bpy.context.window_manager.bsb_job.error
    assert len(members(obj, "Part 1")) == n  # all positive clicks: the whole mesh
    clicks = json.loads(bpy.context.scene.bsb.results["Part 1"].refine_clicks)
    assert len(clicks) == jobs.MAX_VERTEX_CLICKS
    assert time.monotonic() - t0 < 45


def test_a_70_character_group_name_is_cut_to_fit_and_used_everywhere(gui):
    obj = sphere()
    name = "Dossier " + "é" * 62
    bpy.context.scene.bsb.group_name = name
    click_top()
    bpy.ops.bsb.match()
    pump()
    assert not bpy.context.window_manager.bsb_job.error
    written = [g.name for g in obj.vertex_groups]
    assert len(written) == 1 and name.startswith(written[0]) and len(written[0].encode()) <= 59
    assert obj.data.attributes.get("bsb_" + written[0]) is not None
    assert bpy.context.scene.bsb.results[0].name == written[0]
    assert bpy.ops.bsb.assign_material() == {"FINISHED"}
    assert written[0] in [m.name for m in obj.data.materials if m]


def test_a_mirror_modifier_is_matched_whole_and_mapped_back(gui):
    obj = sphere()
    bm = bmesh.new()
    bm.from_mesh(obj.data)
    bmesh.ops.delete(bm, geom=[v for v in bm.verts if v.co.x < -1e-4], context="VERTS")
    bm.to_mesh(obj.data)
    bm.free()
    obj.location.x = 0.0
    mod = obj.modifiers.new("mirror", "MIRROR")
    mod.use_clip = True
    click_top()
    bpy.ops.bsb.match()
    pump()
    assert not bpy.context.window_manager.bsb_job.error
    z = z_of(obj)
    assert members(obj, "Part 1") == set(np.flatnonzero(z > 1e-6))
    sent = np.load(sorted(session.user_dir("jobs").iterdir())[-1] / "vertices.npy")
    assert len(sent) > len(z) and sent[:, 0].min() < -0.5  # the mirrored half went to the engine


def test_each_result_is_its_own_undo_step(gui):
    obj = sphere()
    name = obj.name
    window = bpy.context.window_manager.windows[0]
    with bpy.context.temp_override(window=window):
        bpy.ops.ed.undo_push(message="before")
    click_top()
    bpy.ops.bsb.match()
    pump()
    with bpy.context.temp_override(window=window, active_object=bpy.data.objects[name],
                                   object=bpy.data.objects[name]):
        assert bpy.ops.bsb.assign_material("EXEC_DEFAULT", True) == {"FINISHED"}
        assert len(bpy.data.objects[name].data.materials) == 2
        bpy.ops.ed.undo()  # takes the material away, keeps the match
        obj = bpy.data.objects[name]
        assert not [m for m in obj.data.materials if m] and "Part 1" in obj.vertex_groups
        bpy.ops.ed.undo()  # then the match
        assert "Part 1" not in bpy.data.objects[name].vertex_groups


def test_results_and_their_image_masks_survive_save_and_reopen(gui, tmp_path):
    obj = sphere()
    click_top()
    bpy.ops.bsb.match()
    pump()
    mask_before = api.part_mask_for(obj.name, "Part 1")
    assert mask_before is not None and mask_before[:10].all() and not mask_before[10:].any()
    path = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    item = bpy.context.scene.bsb.results["Part 1"]
    assert item.image_clicks and json.loads(item.engine)["profile"] == "fake"
    assert np.array_equal(api.part_mask_for("Sphere", "Part 1"), mask_before)


def test_offline_weights_fail_fast_with_the_models_fix(addon, tmp_path, monkeypatch):
    """The real engine (cpu profile) with no weights anywhere: it never downloads, and says where to get them."""
    reset_scene()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    prefs = session.preferences()
    prefs.engine_python, prefs.profile, prefs.device, prefs.models_dir = sys.executable, "CPU", "CPU", str(tmp_path / "m")
    try:
        session.release()
        obj = sphere()
        with pytest.raises(RuntimeError):
            bpy.ops.bsb.prepare_mesh()
        job = bpy.context.window_manager.bsb_job
        assert "--offline" in ec.build_command(session.engine_config())
        assert job.fix == "PREFS" and "Models" in job.error, job.error
        assert not any((tmp_path / "m").rglob("*.part")) and not obj.vertex_groups
        # The Models section lists the same folder (shared with the CLI) and what is missing, with sizes...
        listing = ec.list_models(session.engine_config())
        assert listing["folder"] == str(tmp_path / "m") == str(session.models_folder())
        cpu = next(p for p in listing["profiles"] if p["name"] == "cpu")
        assert [(f["part"], f["present"], f["size_mb"] > 0) for f in cpu["files"]] == [("dino", False, True),
                                                                                     ("sam", False, True)]
        # ...and downloads only when Blender allows online access (off in this session).
        from bsb_addon import ops_models

        assert not bpy.app.online_access
        with pytest.raises(ec.EngineError, match="Allow Online Access"):
            ops_models.start_download("cpu")
        assert not ops_models.downloading()
    finally:
        session.release()
        prefs.engine_python, prefs.profile, prefs.device, prefs.models_dir = "", "CPU", "AUTO", ""
