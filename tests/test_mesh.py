"""engine.mesh: validation, normalisation, up axis, hashing, vertex order, file formats."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from engine.errors import MeshError
from engine.mesh import load_mesh, mesh_from_arrays
from engine.sample_meshes import chair, mug

TETRA_V = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 6.0]])
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


@pytest.mark.parametrize(
    "vertices, faces, needle",
    [
        (np.zeros((0, 3)), TETRA_F, "no vertices"),
        (TETRA_V, np.zeros((0, 3), dtype=int), "no faces"),
        (TETRA_V[:, :2], TETRA_F, "shape (V, 3)"),
        (TETRA_V, TETRA_F[:, :2], "(F, 3)"),
        (np.where(np.arange(12).reshape(4, 3) == 4, np.nan, TETRA_V), TETRA_F, "NaN"),
        (np.where(np.arange(12).reshape(4, 3) == 7, np.inf, TETRA_V), TETRA_F, "NaN or infinite"),
        (TETRA_V, TETRA_F + 1, "[0, 3]"),
        (TETRA_V, TETRA_F - 1, "[0, 3]"),
        (TETRA_V, TETRA_F + 0.5, "integers"),
        (TETRA_V, [[0, 1, 2], [0, 1]], "at least 3"),
        (np.ones((4, 3)), TETRA_F, "same point"),
        (TETRA_V, [[0, 0, 1], [1, 2, 2]], "degenerate"),
        (np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]), [[0, 1, 2]], "degenerate"),
    ],
)
def test_bad_input_raises_mesh_error(vertices, faces, needle):
    with pytest.raises(MeshError) as info:
        mesh_from_arrays(vertices, faces)
    assert needle in str(info.value)
    assert info.value.code == "bad_mesh"


def test_unknown_up_axis():
    with pytest.raises(MeshError, match="up axis"):
        mesh_from_arrays(TETRA_V, TETRA_F, up="x")


def test_unit_sphere_normalisation_and_round_trip():
    rng = np.random.default_rng(1)
    verts = rng.normal(size=(50, 3)) * [3.0, 1.0, 0.5] + [10.0, -4.0, 2.0]
    faces = rng.integers(0, 50, size=(80, 3))
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    for up in ("y", "z"):
        mesh = mesh_from_arrays(verts, faces, up=up)
        assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
        radius = np.linalg.norm(mesh.vertices, axis=1)
        assert radius.max() == pytest.approx(1.0, abs=1e-6)
        box_centre = (mesh.vertices.min(0) + mesh.vertices.max(0)) / 2
        np.testing.assert_allclose(box_centre, 0.0, atol=1e-6)
        np.testing.assert_allclose(mesh.to_source(mesh.vertices), verts, atol=1e-5 * mesh.scale)


def test_z_up_maps_to_internal_y_up_right_handed():
    # Source points along +X, +Y, +Z (Z-up) and the origin, so the centre is at 0.5 * (1, 1, 1).
    verts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    mesh = mesh_from_arrays(verts, TETRA_F, up="z")
    d = mesh.vertices.astype(np.float64) - mesh.vertices[0]
    np.testing.assert_allclose(d[1] / np.linalg.norm(d[1]), [1, 0, 0], atol=1e-6)  # x stays x
    np.testing.assert_allclose(d[2] / np.linalg.norm(d[2]), [0, 0, -1], atol=1e-6)  # y -> -z
    np.testing.assert_allclose(d[3] / np.linalg.norm(d[3]), [0, 1, 0], atol=1e-6)  # z -> up
    same = mesh_from_arrays(verts, TETRA_F, up="y")
    e = same.vertices[3] - same.vertices[0]
    np.testing.assert_allclose(e / np.linalg.norm(e), [0, 0, 1], atol=1e-6)  # Y-up: unchanged


def test_vertex_order_and_count_preserved_with_unreferenced_vertices():
    rng = np.random.default_rng(2)
    verts = rng.normal(size=(30, 3))
    faces = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])  # vertices 9.. are unreferenced
    mesh = mesh_from_arrays(verts, faces, up="y")
    assert mesh.vertices.shape == (30, 3)
    expected = (verts - mesh.center) / mesh.scale
    np.testing.assert_allclose(mesh.vertices, expected, atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, faces)


def test_polygons_fan_triangulated_and_degenerates_dropped():
    verts = np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 2, 0], [3, 3, 3]])
    polys = [[0, 1, 2, 3], [3, 2, 4], [0, 0, 5], [0, 1, 2, 4, 3]]
    mesh = mesh_from_arrays(verts, polys, up="y")
    expected = [[0, 1, 2], [0, 2, 3], [3, 2, 4], [0, 1, 2], [0, 2, 4], [0, 4, 3]]
    np.testing.assert_array_equal(mesh.faces, expected)
    np.testing.assert_array_equal(mesh.face_source, [0, 0, 1, 3, 3, 3])
    quads = mesh_from_arrays(verts, np.array([[0, 1, 2, 3]]), up="y")
    np.testing.assert_array_equal(quads.faces, [[0, 1, 2], [0, 2, 3]])


def test_content_hash_stable_and_sensitive():
    mesh = mesh_from_arrays(TETRA_V, TETRA_F)
    assert mesh.content_hash() == mesh_from_arrays(TETRA_V.copy(), TETRA_F.copy()).content_hash()
    assert len(mesh.content_hash()) == 64 and int(mesh.content_hash(), 16) >= 0
    moved = TETRA_V.copy()
    moved[2, 1] += 1e-4
    assert mesh_from_arrays(moved, TETRA_F).content_hash() != mesh.content_hash()
    assert mesh_from_arrays(TETRA_V, TETRA_F, up="y").content_hash() != mesh.content_hash()
    assert mesh_from_arrays(TETRA_V, TETRA_F[:, [0, 2, 1]]).content_hash() != mesh.content_hash()


def test_obj_with_normals_keeps_position_vertices(shared_data):
    mesh = load_mesh(shared_data / "classic" / "spot.obj")
    assert mesh.vertices.shape == (11533, 3)
    assert mesh.faces.shape == (23062, 3)
    assert mesh.faces.max() < 11533


def test_off_keeps_file_vertices_and_faces(shared_data):
    path = shared_data / "psb" / "bearing" / "341.off"
    mesh = load_mesh(path)
    assert mesh.vertices.shape == (1663, 3) and mesh.faces.shape == (3322, 3)
    raw = trimesh.load(path, process=False)
    np.testing.assert_allclose(mesh.to_source(mesh.vertices), raw.vertices, atol=1e-4 * mesh.scale)
    np.testing.assert_array_equal(mesh.faces, raw.faces)


def test_hand_written_obj_with_negative_indices_and_quads(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\nf -4//1 -3//1 -2//1 -1//1\nf 1/1 2/2 4/4\n"
    path = tmp_path / "quad.obj"
    path.write_text(text)
    mesh = load_mesh(path)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 3]])


def test_off_with_mixed_polygons_keeps_file_face_order(tmp_path):
    path = tmp_path / "mixed.off"
    path.write_text("OFF\n# comment\n5 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n0.5 2 0\n4 0 1 2 3\n3 3 2 4\n")
    mesh = load_mesh(path)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [3, 2, 4]])
    np.testing.assert_array_equal(mesh.face_source, [0, 0, 1])
    path.write_text("OFF\n5 2 0\n0 0 0\n1 0 0\n")
    with pytest.raises(MeshError, match="shorter|malformed"):
        load_mesh(path)


@pytest.mark.parametrize("suffix", [".ply", ".stl", ".glb"])
def test_other_formats_round_trip(tmp_path, suffix):
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    path = tmp_path / f"box{suffix}"
    if suffix == ".glb":
        scene = trimesh.Scene()
        scene.add_geometry(box, node_name="a")
        scene.add_geometry(box.copy(), node_name="b", transform=trimesh.transformations.translation_matrix([5, 0, 0]))
        scene.export(path)
    else:
        box.export(path)
    mesh = load_mesh(path, up="y")
    source = mesh.to_source(mesh.vertices)
    if suffix == ".glb":
        assert len(mesh.faces) == 24
        assert source[:, 0].max() == pytest.approx(5.5, abs=1e-4)  # the second box was moved by its node
    else:
        assert len(mesh.faces) == 12
        np.testing.assert_allclose(source.max(0), [0.5, 1.0, 1.5], atol=1e-5)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(MeshError, match="not found"):
        load_mesh(tmp_path / "nope.obj")
    (tmp_path / "a.xyz").write_text("1 2 3\n")
    with pytest.raises(MeshError, match="unsupported"):
        load_mesh(tmp_path / "a.xyz")
    (tmp_path / "points.obj").write_text("v 0 0 0\nv 1 0 0\n")
    with pytest.raises(MeshError, match="no faces"):
        load_mesh(tmp_path / "points.obj")


@pytest.mark.parametrize("builder", [mug, chair])
def test_sample_meshes_have_labelled_parts(builder):
    verts, faces, labels, names = builder()
    assert labels.shape == (len(verts),) and set(np.unique(labels)) == set(range(len(names)))
    mesh = mesh_from_arrays(verts, faces)  # Z-up; must load cleanly
    assert len(mesh.faces) == len(faces)
    # parts do not share vertices: every face lies within one part
    assert (labels[faces] == labels[faces][:, :1]).all()
    if builder is mug:
        handle = labels == names.index("handle")
        assert verts[handle, 0].min() > 0.2 and verts[~handle, 0].max() <= 0.5 + 1e-9
