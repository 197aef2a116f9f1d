"""Adversarial inputs of issue 13 (items 2, 5, 8, 10, 12, 14, 16) and issue 12 item 9: mesh framing that no
stray vertex decides, exact mesh keys, files that are folders or unreadable, clicks and boxes that make no
sense, job folders and outputs, and cancel inside the rasterizer. Pure checks: no models, no engine."""

from __future__ import annotations

import os

import numpy as np
import pytest
import trimesh

from engine.cameras import sphere_views
from engine.errors import BsbError, Cancelled, ImageError, MeshError
from engine.images import load_image
from engine.mesh import load_mesh, mesh_from_arrays
from engine.raster import rasterize
from engine.sample_meshes import mug
from engine.service.inputs import JOB_MARKER, check_clicks, check_query, job_folder, require_file, require_writable


@pytest.fixture(scope="module")
def cup():
    v, f, _, _ = mug(0, 12)
    return np.asarray(v, np.float64), np.asarray(f)


def _coverage(mesh, size=48):
    raster = rasterize(mesh.vertices, mesh.faces, sphere_views(4, seed=0), size)
    return float(raster.coverage.mean())


def test_a_stray_vertex_does_not_decide_the_framing(cup):
    v, f = cup
    plain = mesh_from_arrays(v, f)
    far = np.array([[1e3, -2e3, 5e2]])
    unreferenced = mesh_from_arrays(np.concatenate([v, far]), f)  # in no face
    # referenced by one sliver face: a stray that the faces do use
    stray_face = np.concatenate([f, [[0, 1, len(v)]]])
    referenced = mesh_from_arrays(np.concatenate([v, far]), stray_face)
    for mesh in (unreferenced, referenced):
        np.testing.assert_allclose(mesh.center, plain.center, atol=1e-9)
        assert mesh.scale == pytest.approx(plain.scale)
        np.testing.assert_allclose(mesh.vertices[: len(v)], plain.vertices, atol=1e-6)
        assert np.linalg.norm(mesh.vertices[-1]) > 100  # outside the sphere, still a valid vertex
        np.testing.assert_allclose(mesh.to_source(mesh.vertices[-1:]), far, rtol=1e-5)
    assert _coverage(referenced) > 0.5 * _coverage(plain) > 0.02  # the real surface still fills the views


def test_framing_of_ordinary_meshes_is_the_bounding_box(cup):
    v, f = cup
    mesh = mesh_from_arrays(v, f)
    np.testing.assert_allclose(mesh.center, (v.min(0) + v.max(0)) / 2)
    assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    # a long thin part with few vertices is part of the object, not a stray
    tip = np.array([[0.0, 0.0, 3.0 * np.abs(v).max()]])
    spear = mesh_from_arrays(np.concatenate([v, tip]), np.concatenate([f, [[0, 1, len(v)]]]))
    assert np.linalg.norm(spear.vertices, axis=1).max() == pytest.approx(1.0, abs=1e-6)


def test_mesh_key_sees_a_small_edit_far_from_the_origin():
    box = trimesh.creation.box(extents=(20.0, 20.0, 20.0))
    v = np.asarray(box.vertices, np.float64) + 4e6
    edited = v.copy()
    edited[0, 0] += 0.1  # float32 cannot tell 4000010.0 from 4000010.1
    assert np.float32(v[0, 0]) == np.float32(edited[0, 0])
    assert mesh_from_arrays(v, box.faces).content_hash() != mesh_from_arrays(edited, box.faces).content_hash()
    assert mesh_from_arrays(v, box.faces).content_hash() == mesh_from_arrays(v.copy(), box.faces).content_hash()


def test_mesh_file_problems_are_named(tmp_path):
    (tmp_path / "zero.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n")
    with pytest.raises(MeshError, match="line 4: face index 0 is not valid"):
        load_mesh(tmp_path / "zero.obj")
    (tmp_path / "model.gltf").write_bytes(b"\x00\x01garbage{")
    with pytest.raises(MeshError) as info:
        load_mesh(tmp_path / "model.gltf")
    assert "model.gltf" in info.value.message and "GLTF" in info.value.message and "re-export" in info.value.message
    (tmp_path / "folder.obj").mkdir()
    with pytest.raises(MeshError, match="is a folder"):
        load_mesh(tmp_path / "folder.obj")
    (tmp_path / "mem.obj").symlink_to("/proc/self/mem")  # opens, then every read fails
    with pytest.raises(MeshError, match="cannot read mesh file .*mem.obj") as info:
        load_mesh(tmp_path / "mem.obj")
    assert info.value.code == "not_found"


def test_image_file_problems_are_named(tmp_path):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path / "folder.png")
    with pytest.raises(ImageError, match="cannot read image file /proc/self/mem"):
        load_image("/proc/self/mem")
    with pytest.raises(BsbError, match="is a folder, not a file"):
        require_file(tmp_path / "folder.png", "image")
    with pytest.raises(BsbError, match="does not exist"):
        require_file(tmp_path / "none.png", "image")
    with pytest.raises(BsbError, match="not a regular file"):
        require_file("/dev/null", "image")


def test_clicks_boxes_and_thresholds_are_checked_the_same_for_cli_and_protocol():
    size = (100, 80)
    assert check_query([[1, 2]], [1], [-50, -50, 10, 500], 0.5, size) == ([[1.0, 2.0]], [1], [0, 0, 10, 80], 0.5)
    bad = [
        ([[float("nan"), 3]], [1], None, None, "finite"),
        ([[200, 3]], [1], None, None, "outside the 100x80 image"),
        ([], [], [200, 200, 300, 300], None, "entirely outside"),
        ([], [], [-9, 5, -1, 9], None, "entirely outside"),
        ([[1, 1]], [1], [0, 0, float("inf"), 5], None, "finite"),
        ([[1, 1]], [1], None, float("nan"), "min_confidence"),
        ([[1, 1]], [1], None, -0.5, "min_confidence"),
        ([[1, 1]], [1, 0], None, None, "one label per point"),
        ([], [], None, None, "at least one"),
    ]
    for points, labels, box, threshold, words in bad:
        with pytest.raises(BsbError, match=words) as info:
            check_query(points, labels, box, threshold, size)
        assert info.value.code == "bad_request"
    assert check_clicks([(3, True), (4, False)]) == [(3, True), (4, False)]
    with pytest.raises(BsbError, match="positive"):
        check_clicks([(3, False)])


def test_job_folders_are_new_empty_or_ours(tmp_path):
    folder = job_folder(str(tmp_path / "jobs" / "a"))
    assert (folder / JOB_MARKER).exists()
    (folder / "weights.npy").write_bytes(b"x")
    assert job_folder(str(folder)) == folder  # ours: reused
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.txt").write_text("x")
    with pytest.raises(BsbError, match="did not write"):
        job_folder(str(home))
    with pytest.raises(BsbError, match="absolute"):
        job_folder("relative/dir")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BsbError, match=f"cannot use job folder {blocker}/j"):
        job_folder(str(blocker / "j"))
    assert os.listdir(home) == ["thesis.txt"]


def test_outputs_are_checked_before_any_work(tmp_path):
    assert require_writable(tmp_path / "new" / "out.npz", "--out") == tmp_path / "new" / "out.npz"
    assert not [p for p in (tmp_path / "new").iterdir()]  # the probe leaves nothing behind
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BsbError, match="cannot write --out"):
        require_writable(blocker / "out.npz", "--out")
    with pytest.raises(BsbError, match="is a folder"):
        require_writable(tmp_path, "--out")


def test_rasterizer_polls_cancel_between_views(cup):
    v, f = cup
    mesh = mesh_from_arrays(v, f)
    polls = []

    def cancel():
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(Cancelled):
        rasterize(mesh.vertices, mesh.faces, sphere_views(16, seed=0), 32, cancel=cancel)
    with pytest.raises(Cancelled):
        rasterize(mesh.vertices, mesh.faces, sphere_views(3, seed=0), 32, backend="torch", cancel=lambda: True)
    full = rasterize(mesh.vertices, mesh.faces, sphere_views(5, seed=0), 32, cancel=lambda: False)
    alone = rasterize(mesh.vertices, mesh.faces, sphere_views(5, seed=0), 32)
    np.testing.assert_array_equal(full.face_id, alone.face_id)
