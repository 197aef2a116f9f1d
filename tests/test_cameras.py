"""engine.cameras: look-at frames, pixel convention, view sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.cameras import look_at, project, sphere_views
from engine.errors import BsbError


def _rotation(cam):
    return cam.world_to_cam[:3, :3]


@pytest.mark.parametrize("eye", [(0, 0, 2), (1.5, 0.3, -1.0), (0, 2, 0), (0, -2, 1e-9), (2, 0, 0)])
def test_look_at_frame(eye):
    cam = look_at(eye)
    rot = _rotation(cam)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    # the eye is the camera origin and the target lies straight ahead on -Z
    np.testing.assert_allclose(cam.world_to_cam @ [*eye, 1.0], [0, 0, 0, 1], atol=1e-12)
    target_cam = cam.world_to_cam @ [0, 0, 0, 1.0]
    np.testing.assert_allclose(target_cam[:2], 0, atol=1e-12)
    assert target_cam[2] == pytest.approx(-np.linalg.norm(eye))
    # world up (+Y) never points down in the image unless the camera looks along it
    if abs(eye[1]) < 1.9:
        assert (rot @ [0, 1, 0])[1] > 0


def test_pole_camera_uses_z_hint():
    cam = look_at((0, 2, 0))
    rot = _rotation(cam)
    assert np.isfinite(rot).all()
    np.testing.assert_allclose(abs(rot[1] @ [0, 0, 1]), 1.0, atol=1e-12)  # image up is along +-Z


def test_project_pixel_convention():
    w, h = 200, 100
    cam = look_at((0, 0, 2))
    pts = np.array(
        [
            [0, 0, 0],  # image centre
            [0, 2 * math.tan(math.radians(30)), 0],  # top edge of the vertical field of view
            [0, -2 * math.tan(math.radians(30)), 0],  # bottom edge
            [2 * math.tan(math.radians(30)), 0, 0],  # as far right as the top edge is up: square pixels
            [0.1, 0.0, 1.0],  # nearer points move further for the same offset
        ]
    )
    xy, depth = project(pts, cam, w, h)
    np.testing.assert_allclose(xy[0], [w / 2, h / 2])
    np.testing.assert_allclose(xy[1], [w / 2, 0], atol=1e-9)
    np.testing.assert_allclose(xy[2], [w / 2, h], atol=1e-9)
    np.testing.assert_allclose(xy[3], [w / 2 + h / 2, h / 2], atol=1e-9)
    f = (h / 2) / math.tan(math.radians(30))
    np.testing.assert_allclose(xy[4], [w / 2 + f * 0.1 / 1.0, h / 2], atol=1e-9)
    np.testing.assert_allclose(depth, [2, 2, 2, 2, 1])


def test_project_rows_grow_downwards():
    cam = look_at((2, 0, 0))
    xy, _ = project(np.array([[0, 0.5, 0], [0, -0.5, 0]]), cam, 64, 64)
    assert xy[0, 1] < 32 < xy[1, 1]


def test_uniform_views_cover_the_sphere():
    cams = sphere_views(60)
    eyes = np.stack([c.eye for c in cams])
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=1), 2.0)
    assert eyes[:, 1].max() > 1.9 and eyes[:, 1].min() < -1.9
    dirs = np.random.default_rng(0).normal(size=(2000, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    cos_nearest = (dirs @ (eyes / 2).T).max(axis=1)
    # 60 evenly spread points: every direction within ~20 degrees of a camera (random would leave holes)
    assert np.degrees(np.arccos(cos_nearest.min())) < 20
    again = sphere_views(60)
    np.testing.assert_array_equal(eyes, np.stack([c.eye for c in again]))


def test_gaussian_views_follow_the_reference_distribution():
    cams = sphere_views(4000, mode="gaussian", seed=3)
    eyes = np.stack([c.eye for c in cams]) / 2.0
    elev = np.arcsin(np.clip(eyes[:, 1], -1, 1))
    assert abs(elev.mean()) < 0.05 and elev.std() == pytest.approx(math.pi / 4, rel=0.08)
    assert (eyes[:, 0] > 0).mean() > 0.6  # front-biased towards +X (azimuth 0)
    same = sphere_views(5, mode="gaussian", seed=3)
    np.testing.assert_array_equal([c.eye for c in same], [c.eye for c in cams[:5]])
    other = sphere_views(5, mode="gaussian", seed=4)
    assert not np.allclose([c.eye for c in same], [c.eye for c in other])


def test_view_argument_errors():
    with pytest.raises(BsbError, match="at least 1"):
        sphere_views(0)
    with pytest.raises(BsbError, match="unknown view mode"):
        sphere_views(3, mode="random")
    with pytest.raises(BsbError, match="coincide"):
        look_at((0, 0, 0))
