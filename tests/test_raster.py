"""engine.raster (+ shading, preview): analytic scenes, ray-casting agreement, backend agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh
from PIL import Image

from engine.cameras import look_at, project, sphere_views
from engine.errors import BsbError, ImageError, MeshError
from engine.mesh import load_mesh, mesh_from_arrays
from engine.preview import contact_sheet, save_png
from engine.raster import rasterize
from engine.sample_meshes import mug
from engine.shading import ALBEDO, shade, shade_colors


@pytest.fixture(scope="module")
def sphere():
    s = trimesh.creation.icosphere(subdivisions=4)
    return np.asarray(s.vertices), np.asarray(s.faces, dtype=np.int32)


@pytest.fixture(scope="module")
def mug_mesh():
    v, f, labels, names = mug(subdivisions=0)
    return mesh_from_arrays(v, f), labels


def _rays(cam, width, height):
    """Unit world-space directions of the rays through every pixel centre, row-major."""
    jj, ii = np.mgrid[0:height, 0:width]
    f = cam.focal(height)
    d_cam = np.stack([(ii + 0.5 - width / 2) / f, -(jj + 0.5 - height / 2) / f, -np.ones_like(ii, float)], -1)
    rot = cam.world_to_cam[:3, :3]
    d = d_cam.reshape(-1, 3) @ rot
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _ray_cast(origin, dirs, verts, faces, chunk=1024):
    """Nearest hit face per ray from one origin (-1 if none): Moller-Trumbore, an independent reference.

    Candidate faces per ray come from a ray-vs-bounding-sphere test so the brute force stays fast.
    """
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    centre = (v0 + v1 + v2) / 3
    radius2 = np.max([((v - centre) ** 2).sum(1) for v in (v0, v1, v2)], axis=0) * (1 + 1e-6)
    rel = centre - origin
    out = np.full(len(dirs), -1)
    for s in range(0, len(dirs), chunk):
        d_all = dirs[s : s + chunk]
        along = d_all @ rel.T
        ray, face = np.nonzero(((rel**2).sum(1) - along**2 <= radius2) & (along > 0))
        d, a = d_all[ray], v0[face]
        e1, e2 = v1[face] - a, v2[face] - a
        p = np.cross(d, e2)
        det = (p * e1).sum(-1)
        ok = np.abs(det) > 1e-14
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        tvec = origin - a
        u = (tvec * p).sum(-1) * inv
        q = np.cross(tvec, e1)
        v = (d * q).sum(-1) * inv
        t = (e2 * q).sum(-1) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-9)
        ray, face, t = ray[hit], face[hit], t[hit]
        order = np.lexsort((face, t, ray))  # per ray: nearest first, lower face id on ties
        ray, face = ray[order], face[order]
        first = np.ones(len(ray), dtype=bool)
        first[1:] = ray[1:] != ray[:-1]
        out[s + ray[first]] = face[first]
    return out


def _surface_points(r, verts, faces, b):
    covered = r.face_id[b] >= 0
    tri = verts[faces[r.face_id[b][covered]]]
    return np.einsum("pk,pkc->pc", r.bary[b][covered].astype(np.float64), tri), covered


def test_sphere_analytic(sphere):
    verts, faces = sphere
    size, dist = 201, 3.0
    cam = look_at((0, 0, dist))
    r = rasterize(verts, faces, [cam], size)
    covered = r.face_id[0] >= 0
    # the unit sphere's silhouette is a disc of angular radius asin(1/d)
    radius_px = cam.focal(size) * math.tan(math.asin(1 / dist))
    assert covered.sum() == pytest.approx(math.pi * radius_px**2, rel=0.02)
    c = size // 2
    assert r.depth[0, c, c] == pytest.approx(dist - 1.0, abs=2e-3)
    assert np.isinf(r.depth[0][~covered]).all() and (r.bary[0][~covered] == 0).all()
    bary = r.bary[0][covered]
    np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-5)
    assert bary.min() >= -1e-6 and bary.max() <= 1 + 1e-6
    # the face under the centre pixel is the one the centre ray hits
    first = _ray_cast(np.array([0, 0, dist]), np.array([[0, 0, -1.0]]), verts, faces)
    assert r.face_id[0, c, c] == first[0]


def test_normals_and_depth_are_consistent_with_geometry(mug_mesh):
    mesh, _ = mug_mesh
    cams = sphere_views(3, mode="gaussian", seed=1)
    r = rasterize(mesh.vertices, mesh.faces, cams, 64)
    verts = mesh.vertices.astype(np.float64)
    for b, cam in enumerate(cams):
        points, covered = _surface_points(r, verts, mesh.faces, b)
        normal = r.normal[b][covered]
        np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-5)
        assert ((cam.eye - points) * normal).sum(1).min() > -1e-4  # every normal faces the camera
        # the interpolated surface point projects back into its own pixel, at the stored depth
        xy, depth = project(points, cam, 64, 64)
        jj, ii = np.nonzero(covered)
        np.testing.assert_allclose(xy, np.stack([ii + 0.5, jj + 0.5], 1), atol=1e-3)
        np.testing.assert_allclose(depth, r.depth[b][covered], rtol=1e-5)


def test_cube_face_on_is_the_expected_square():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    size, dist = 101, 3.0
    cam = look_at((0, 0, dist))
    r = rasterize(box.vertices, box.faces, [cam], size)
    half = cam.focal(size) * 0.5 / (dist - 0.5)  # the front face at depth 2.5 hides the sides
    centres = np.arange(size) + 0.5
    inside = np.abs(centres - size / 2) <= half
    expected = inside[:, None] & inside[None, :]
    np.testing.assert_array_equal(r.face_id[0] >= 0, expected)
    np.testing.assert_allclose(r.depth[0][expected], dist - 0.5, atol=1e-5)
    np.testing.assert_allclose(r.normal[0][expected], np.broadcast_to([0, 0, 1], (expected.sum(), 3)), atol=1e-6)


def test_agrees_with_ray_casting_on_a_psb_mesh(shared_data):
    mesh = load_mesh(shared_data / "psb" / "vase" / "367.off")
    size = 96
    cams = sphere_views(2, mode="gaussian", seed=5)
    r = rasterize(mesh.vertices, mesh.faces, cams, size)
    for b, cam in enumerate(cams):
        verts = mesh.vertices.astype(np.float64)
        ray_face = _ray_cast(cam.eye, _rays(cam, size, size), verts, mesh.faces).reshape(size, size)
        covered = (ray_face >= 0) | (r.face_id[b] >= 0)
        assert covered.sum() > 0.1 * size * size
        agree = (ray_face == r.face_id[b])[covered].mean()
        assert agree >= 0.99, f"view {b}: only {agree:.4f} of covered pixels agree with ray casting"


def test_numba_and_torch_backends_agree(mug_mesh):
    mesh, _ = mug_mesh
    cams = sphere_views(3)
    for cull in (False, True):
        a = rasterize(mesh.vertices, mesh.faces, cams, 80, 64, backend="numba", cull_backfaces=cull)
        b = rasterize(mesh.vertices, mesh.faces, cams, 80, 64, backend="torch", cull_backfaces=cull)
        assert a.face_id.shape == (3, 64, 80)
        same = a.face_id == b.face_id
        assert same.mean() >= 0.999
        both = same & (a.face_id >= 0)
        np.testing.assert_allclose(a.bary[both], b.bary[both], atol=1e-5)
        np.testing.assert_allclose(a.depth[both], b.depth[both], rtol=1e-6)
        np.testing.assert_allclose(a.normal[both], b.normal[both], atol=1e-6)


def test_a_numba_render_keeps_torchs_thread_count(mug_mesh):
    """numba's OpenMP layer sets the process-wide thread count; torch's limit must survive a render."""
    import numba
    import torch

    mesh, _ = mug_mesh
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rasterize(mesh.vertices, mesh.faces, sphere_views(4), 32, 32, backend="numba")
        assert torch.get_num_threads() == 1 or numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_backface_culling(sphere):
    verts, faces = sphere
    cams = sphere_views(2)
    plain = rasterize(verts, faces, cams, 48)
    culled = rasterize(verts, faces, cams, 48, cull_backfaces=True)
    np.testing.assert_array_equal(plain.face_id, culled.face_id)  # outward winding: nothing visible is culled
    # inward winding: culling keeps only the far hemisphere, seen from inside
    inverted = rasterize(verts, faces[:, ::-1].copy(), cams, 48, cull_backfaces=True)
    covered = plain.face_id >= 0
    assert (inverted.face_id >= 0).sum() == pytest.approx(covered.sum(), rel=0.02)
    assert (inverted.depth[covered] > plain.depth[covered]).mean() > 0.98
    assert inverted.depth[0, 24, 24] == pytest.approx(3.0, abs=1e-2) and plain.depth[0, 24, 24] == pytest.approx(1.0, abs=1e-2)


def test_near_plane_faces_are_skipped(sphere):
    verts, faces = sphere
    r = rasterize(verts, faces, [look_at((0, 0, 0.5))], 32)  # camera inside the sphere
    assert np.isfinite(r.depth[r.face_id >= 0]).all() and (r.depth[r.face_id >= 0] > 0).all()


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(width=0), BsbError, "positive integer"),
        (dict(width=32, height=2.5), BsbError, "positive integer"),
        (dict(width=32, backend="opengl"), BsbError, "unknown rasterizer backend"),
        (dict(width=32, faces=np.array([[0, 1, 99]])), MeshError, "face indices"),
        (dict(width=32, faces=np.array([[0.0, 1.0, 2.0]])), MeshError, "integer"),
        (dict(width=32, vertices=np.full((3, 3), np.nan)), MeshError, "NaN"),
        (dict(width=32, cameras=[]), BsbError, "cameras"),
    ],
)
def test_rasterize_input_errors(kwargs, error, needle):
    args = dict(vertices=np.eye(3), faces=np.array([[0, 1, 2]]), cameras=[look_at((0, 0, 2))])
    args.update(kwargs)
    with pytest.raises(error, match=needle):
        rasterize(**args)


def test_shading_is_readable(mug_mesh):
    mesh, labels = mug_mesh
    cams = sphere_views(2, mode="gaussian")
    r = rasterize(mesh.vertices, mesh.faces, cams, 64)
    img = shade(r)
    assert img.shape == (2, 64, 64, 3) and img.dtype == np.uint8
    covered = r.face_id >= 0
    assert (img[~covered] == 255).all() and (img[covered] < 250).all()
    assert img[covered][:, 0].std() > 5  # lighting varies over the surface
    grey = shade_colors(r, mesh.faces, np.full((len(mesh.vertices), 3), ALBEDO))
    assert np.abs(grey.astype(int) - img.astype(int)).max() <= 1
    colours = np.where(labels[:, None] == 1, [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    tinted = shade_colors(r, mesh.faces, colours)
    handle_px = covered & (labels[mesh.faces[r.face_id]].min(-1) == 1)
    assert handle_px.any()
    assert (tinted[handle_px][:, 0] > tinted[handle_px][:, 2]).all()


def test_headlight_brightens_faces_turned_to_the_camera():
    tilt = np.radians(70)
    # two squares side by side: one facing the camera, one turned away by 70 degrees
    a = np.array([[-1.0, -0.5, 0], [-0.1, -0.5, 0], [-0.1, 0.5, 0], [-1.0, 0.5, 0]])
    b = np.array([[0.1, -0.5, 0], [0.1 + 0.9 * math.cos(tilt), -0.5, -0.9 * math.sin(tilt)],
                  [0.1 + 0.9 * math.cos(tilt), 0.5, -0.9 * math.sin(tilt)], [0.1, 0.5, 0]])
    mesh = mesh_from_arrays(np.concatenate([a, b]), [[0, 1, 2, 3], [4, 5, 6, 7]], up="y")
    r = rasterize(mesh.vertices, mesh.faces, [look_at((0, 0, 2))], 64)
    img = shade(r)[0, :, :, 0].astype(int)
    left = img[r.face_id[0] // 2 == 0].mean()
    right = img[r.face_id[0] // 2 == 1].mean()
    assert left > right + 20


def test_contact_sheet_and_png(tmp_path):
    tiles = [np.full((4, 6, 3), k * 40, dtype=np.uint8) for k in range(5)]
    sheet = contact_sheet(tiles, columns=2, gap=1)
    assert sheet.shape == (3 * 4 + 2, 2 * 6 + 1, 3)
    assert (sheet[5:9, 7:13] == 120).all() and (sheet[10:14, 7:13] == 255).all()
    path = save_png(tmp_path / "sub" / "sheet.png", sheet)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), sheet)
    with pytest.raises(ImageError):
        contact_sheet([tiles[0], np.zeros((5, 6, 3), np.uint8)])
    with pytest.raises(ImageError):
        save_png(tmp_path / "x.png", sheet.astype(np.float32))
