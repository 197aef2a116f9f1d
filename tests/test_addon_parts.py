"""Split Into Parts and Find Part in the add-on: the bpy-free helpers directly, then the operators on the GUI
path driven headless (worker thread, the drain timer fired by hand, `apply_result` as the undo step).

The fake engine's planted rules give exact answers (segment_all: height bands, 2 below granularity 0.5 and
3 above; find_part: "top" is the upper half, any other name is not found); the last test runs the real
engine on the tiny profile (random weights: the plumbing, not the answer).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import bmesh  # noqa: E402
from test_addon_gui import addon, fake_client, gui, members, pump, reset_scene, sphere, z_of  # noqa: E402,F401 (fixtures)

from bsb_addon import meshmath, parts, session  # noqa: E402
from bsb_addon.errors import InputError  # noqa: E402
from bsb_addon.jobs import MeshFiles, ResultError  # noqa: E402

pytestmark = pytest.mark.blender


# -- bpy-free helpers --------------------------------------------------------------------------------

def test_split_names_sort_in_part_order_fit_blender_and_are_recognised():
    assert parts.split_names("Split", 3) == ["Split 01", "Split 02", "Split 03"]
    assert parts.split_names("Split", 120)[-1] == "Split 120"
    long = parts.split_names("é" * 40, 12)
    assert all(len(n.encode()) <= meshmath.NAME_BYTES for n in long) and long[0] != long[1]
    assert all(parts.is_split_name(n, "é" * 40) for n in long)
    assert parts.is_split_name("Split 7", "Split") and not parts.is_split_name("Split 7b", "Split")
    assert not parts.is_split_name("Splitter 01", "Split") and not parts.is_split_name("Part 1", "Split")
    with pytest.raises(InputError, match="prefix is empty"):
        parts.split_names("  ", 2)


def test_colours_are_scene_linear_and_labels_follow_modifier_copies():
    rgba = parts.linear_rgba(np.array([[255, 0, 188]], np.uint8))
    assert rgba.shape == (1, 4) and rgba[0, 0] == pytest.approx(1.0) and rgba[0, 1] == 0 and rgba[0, 3] == 1
    assert rgba[0, 2] == pytest.approx(0.5, abs=0.01)          # sRGB 188 is about half the light
    mesh = MeshFiles("v", "f", 5, "m", copies=np.array([0, 1, 2, 1, 0]), n_base=3)   # a mirror's copies
    assert parts.labels_to_base(np.array([4, 5, 6, 7, 8]), mesh).tolist() == [4, 5, 6]
    holes = MeshFiles("v", "f", 2, "m", copies=np.array([0, 2]), n_base=3)
    with pytest.raises(ResultError, match="no counterpart"):
        parts.labels_to_base(np.array([0, 1]), holes)


def test_a_split_result_that_does_not_fit_the_mesh_is_refused(tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.array([0, 1, 1, 0], np.int32))
    good = {"labels": str(labels), "n_parts": 2, "granularity": 0.5,
            "parts": [{"color": [1, 2, 3]}, {"color": [4, 5, 6]}]}
    split = parts.split_from_data(good, MeshFiles("v", "f", 4, "m"), False)
    assert split.n_parts == 2 and split.labels.tolist() == [0, 1, 1, 0] and split.colors.dtype == np.uint8
    for bad, words in (({"n_parts": 3}, "says 3"), ({"parts": [{"color": [1, 2, 3]}, {"color": [1, 2]}]}, "colour"),
                       ({"parts": [{"color": [1, 2, 3]}], "n_parts": 1}, "outside")):
        with pytest.raises(ResultError, match=words):
            parts.split_from_data({**good, **bad}, MeshFiles("v", "f", 4, "m"), False)
    with pytest.raises(ResultError, match="5 vertices"):
        parts.split_from_data(good, MeshFiles("v", "f", 5, "m"), False)


def test_part_text_is_one_trimmed_line():
    assert parts.check_part_text("  left\n wing ") == "left wing"
    with pytest.raises(InputError, match="Type the name"):
        parts.check_part_text(" \t")
    with pytest.raises(InputError, match="200"):
        parts.check_part_text("x" * 201)


# -- the operators, headless on the GUI path -----------------------------------------------------------

def split_groups(obj) -> list[str]:
    return sorted(g.name for g in obj.vertex_groups if parts.is_split_name(g.name, "Split"))


def colours(obj) -> np.ndarray:
    attr = obj.data.attributes[parts.COLOR_ATTRIBUTE]
    out = np.empty(len(obj.data.vertices) * 4, np.float32)
    attr.data.foreach_get("color", out)
    return out.reshape(-1, 4)


def run(op, **kw) -> None:
    assert op(**kw) == {"FINISHED"}
    assert session.busy() and bpy.app.timers.is_registered(session.drain)  # a job, not a blocking call
    pump()


def test_split_writes_one_group_and_one_colour_per_part_in_one_undo_step(gui):
    obj = sphere()
    name = obj.name
    window = bpy.context.window_manager.windows[0]
    with bpy.context.temp_override(window=window):
        bpy.ops.ed.undo_push(message="before")
    bpy.context.scene.bsb.granularity = 1.0
    run(bpy.ops.bsb.split_parts)
    obj = bpy.data.objects[name]
    assert not bpy.context.window_manager.bsb_job.error and not gui
    assert split_groups(obj) == ["Split 01", "Split 02", "Split 03"]
    z = z_of(obj)
    groups = [members(obj, g) for g in split_groups(obj)]
    assert sum(len(g) for g in groups) == len(z) and set().union(*groups) == set(range(len(z)))  # a partition
    assert max(z[list(groups[0])]) <= min(z[list(groups[1])]) <= max(z[list(groups[1])]) <= min(z[list(groups[2])])
    col = colours(obj)
    expected = parts.linear_rgba(np.array([[200, 40 * i, 255 - 60 * i] for i in range(3)], np.uint8))
    for i, g in enumerate(groups):
        assert np.allclose(col[list(g)], expected[i], atol=1e-3)
    assert obj.data.color_attributes.active_color.name == parts.COLOR_ATTRIBUTE
    assert "3 parts: Split 01 .. Split 03" in bpy.context.window_manager.bsb_job.message
    assert not any(g.name.startswith("bsb_tmp") for g in obj.vertex_groups)

    # Coarser: the last split's groups are replaced, not added to; other groups stay.
    obj.vertex_groups.new(name="Mine")
    bpy.context.scene.bsb.granularity = 0.2
    run(bpy.ops.bsb.split_parts)
    obj = bpy.data.objects[name]
    assert split_groups(obj) == ["Split 01", "Split 02"] and "Mine" in obj.vertex_groups

    with bpy.context.temp_override(window=window, active_object=obj, object=obj):
        bpy.ops.ed.undo()   # the coarse split goes whole: the fine one is back
        obj = bpy.data.objects[name]
        assert split_groups(obj) == ["Split 01", "Split 02", "Split 03"] and "Mine" not in obj.vertex_groups
        bpy.ops.ed.undo()   # then the fine one, groups and colours together
        obj = bpy.data.objects[name]
        assert not obj.vertex_groups and obj.data.attributes.get(parts.COLOR_ATTRIBUTE) is None


def test_a_split_that_fails_while_writing_leaves_the_last_split_as_it_was(gui, monkeypatch):
    obj = sphere()
    run(bpy.ops.bsb.split_parts)
    before = {g: members(obj, g) for g in split_groups(obj)}
    colours_before = colours(obj).copy()

    def broken(colors):
        raise MemoryError("planted failure after the groups were built")

    monkeypatch.setattr(parts, "linear_rgba", broken)
    bpy.context.scene.bsb.granularity = 0.1
    run(bpy.ops.bsb.split_parts)
    job = bpy.context.window_manager.bsb_job
    assert "MemoryError" in job.error and ("ERROR", job.error) in gui      # said in the status bar
    assert {g: members(obj, g) for g in split_groups(obj)} == before
    assert np.array_equal(colours(obj), colours_before)
    assert not [g.name for g in obj.vertex_groups if g.name.startswith("bsb_tmp")]
    assert not [a.name for a in obj.data.attributes if a.name.startswith("bsb_tmp")]


def test_split_sends_unflushed_edit_mode_edits_and_refuses_edits_made_during_the_job(gui, tmp_path):
    obj = sphere()
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    low = min(bm.verts, key=lambda v: v.co.z)
    low.co.z = 3.0  # the bottom pole jumps above everything; not flushed to obj.data yet
    bmesh.update_edit_mesh(obj.data)
    run(bpy.ops.bsb.split_parts)
    assert obj.mode == "EDIT"
    obj.update_from_editmode()
    z = z_of(obj)
    top = members(obj, split_groups(obj)[-1])
    assert int(np.argmax(z)) in top and z.max() == pytest.approx(3.0)   # the edited pole is in the top band

    session.use_client(fake_client(tmp_path, "--slow", "1"))
    before = split_groups(obj)
    bpy.context.scene.bsb.granularity = 0.0
    assert bpy.ops.bsb.split_parts() == {"FINISHED"}
    bm = bmesh.from_edit_mesh(obj.data)
    next(iter(bm.verts)).co.x += 0.5  # edited while the engine works
    bmesh.update_edit_mesh(obj.data)
    pump()
    job = bpy.context.window_manager.bsb_job
    assert "were moved" in job.error and split_groups(obj) == before and ("ERROR", job.error) in gui
    bpy.ops.object.mode_set(mode="OBJECT")


def test_find_part_selects_the_named_part_or_says_not_found(gui):
    obj = sphere()
    s = bpy.context.scene.bsb
    s.part_text = "top"
    run(bpy.ops.bsb.find_part)
    assert members(obj, "top") == set(np.flatnonzero(z_of(obj) > 1e-6))
    assert s.results[s.active_result].name == "top" and not gui
    assert "'top' found" in bpy.context.window_manager.bsb_job.message

    s.part_text = "propeller"
    run(bpy.ops.bsb.find_part)
    message = bpy.context.window_manager.bsb_job.message
    assert message.startswith("'propeller' not found") and ("WARNING", message) in gui
    assert "propeller" not in obj.vertex_groups and not bpy.context.window_manager.bsb_job.error

    s.part_text = "   "
    with pytest.raises(RuntimeError, match="Type the name"):
        bpy.ops.bsb.find_part()
    assert not session.busy()


def test_split_and_find_through_the_real_engine_on_the_tiny_profile(gui, tmp_path):
    """`python -m engine serve --profile tiny` (random weights), so what is checked is that every vertex
    lands in exactly one group, with one colour per group, and that find_part answers either way. It runs
    from the repository root, so `-m engine` is this tree's engine whatever the environment installed."""
    from pathlib import Path

    from bsb_addon import engine_client as ec

    session.release()
    config = ec.EngineConfig(python=sys.executable, profile="tiny", device="cpu", models=str(tmp_path / "models"),
                             cache=str(tmp_path / "cache"), log_path=str(tmp_path / "engine.log"), start_timeout=120)
    config = ec.EngineConfig(command=ec.build_command(config), workdir=str(Path(__file__).resolve().parents[1]),
                             log_path=config.log_path, start_timeout=120)
    client = ec.EngineClient(config)
    client.start()
    session.use_client(client)
    obj = sphere(24, 12)
    run_real(bpy.ops.bsb.split_parts)
    job = bpy.context.window_manager.bsb_job
    assert not job.error, job.error
    names = split_groups(obj)
    groups = [members(obj, g) for g in names]
    assert names and sum(len(g) for g in groups) == len(obj.data.vertices)
    assert "plumbing check" in job.message
    assert all(len({tuple(c) for c in np.round(colours(obj)[list(g)], 4)}) == 1 for g in groups if g)
    bpy.context.scene.bsb.part_text = "handle"
    run_real(bpy.ops.bsb.find_part)
    job = bpy.context.window_manager.bsb_job
    assert not job.error, job.error
    assert ("handle" in obj.vertex_groups) == job.message.startswith("'handle' found"), job.message


def run_real(op) -> None:
    assert op() == {"FINISHED"}
    pump(timeout=240)
