"""Look-at pinhole cameras around the unit sphere, and projection to pixel coordinates.

Camera space looks down -Z with +X right and +Y up. Pixel coordinates follow the project convention:
x = column, y = row from the top, pixel (i, j) covers [i, i+1) x [j, j+1), so the image centre is
(W/2, H/2). The field of view is vertical; pixels are square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.errors import BsbError

VIEW_MODES = ("uniform", "gaussian")


@dataclass(frozen=True, eq=False)
class Camera:
    eye: np.ndarray  # (3,) float64, world position
    world_to_cam: np.ndarray  # (4, 4) float64
    fov_deg: float = 60.0  # vertical field of view

    def focal(self, height: int) -> float:
        """Focal length in pixels for an image `height` rows tall."""
        return (height / 2.0) / math.tan(math.radians(self.fov_deg) / 2.0)


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0), fov_deg: float = 60.0) -> Camera:
    """A camera at `eye` looking at `target`; near the up axis it falls back to +Z as the up hint."""
    eye = np.asarray(eye, dtype=np.float64).reshape(3)
    target = np.asarray(target, dtype=np.float64).reshape(3)
    up_hint = np.asarray(up, dtype=np.float64).reshape(3)
    forward = target - eye
    dist = np.linalg.norm(forward)
    if not np.isfinite(dist) or dist <= 1e-12:
        raise BsbError("camera eye and target coincide; put the camera away from what it looks at", "bad_request")
    forward /= dist
    right = np.cross(forward, up_hint)
    if np.linalg.norm(right) < 1e-6 * max(np.linalg.norm(up_hint), 1e-12):
        right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    rotation = np.stack([right, true_up, -forward])
    world_to_cam = np.eye(4)
    world_to_cam[:3, :3] = rotation
    world_to_cam[:3, 3] = -rotation @ eye
    return Camera(eye=eye, world_to_cam=world_to_cam, fov_deg=float(fov_deg))


def sphere_views(n: int, mode: str = "uniform", seed: int = 0, radius: float = 2.0, fov_deg: float = 60.0) -> list[Camera]:
    """`n` cameras on a sphere looking at the origin.

    uniform: a Fibonacci sphere (even coverage, both poles' caps included), deterministic.
    gaussian: iSeg's front-biased sampling, elevation ~ N(0, (pi/4)^2), azimuth ~ N(0, (pi/2)^2).
    """
    if n < 1:
        raise BsbError(f"the number of views must be at least 1, got {n}", "bad_request")
    if mode == "uniform":
        i = np.arange(n, dtype=np.float64)
        y = 1.0 - 2.0 * (i + 0.5) / n
        ring = np.sqrt(np.clip(1.0 - y * y, 0.0, None))
        azim = i * math.pi * (3.0 - math.sqrt(5.0))
        points = np.stack([ring * np.cos(azim), y, ring * np.sin(azim)], axis=1)
    elif mode == "gaussian":
        rng = np.random.default_rng(seed)
        # one (elevation, azimuth) pair per view, so the first k of n views equal sphere_views(k, ...)
        elev, azim = (rng.normal(size=(n, 2)) * [math.pi / 4.0, math.pi / 2.0]).T
        points = np.stack([np.cos(elev) * np.cos(azim), np.sin(elev), np.cos(elev) * np.sin(azim)], axis=1)
    else:
        raise BsbError(f"unknown view mode {mode!r}; use one of {', '.join(VIEW_MODES)}", "bad_request")
    return [look_at(radius * p, fov_deg=fov_deg) for p in points]


def project(points, camera: Camera, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> pixel coordinates (N, 2) (x=column, y=row) and view-axis depth (N,)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cam = points @ camera.world_to_cam[:3, :3].T + camera.world_to_cam[:3, 3]
    depth = -cam[:, 2]
    f = camera.focal(height)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = width / 2.0 + f * cam[:, 0] / depth
        y = height / 2.0 - f * cam[:, 1] / depth
    return np.stack([x, y], axis=1), depth


def stack_cameras(cameras) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, 4, 4) world_to_cam, (B, 3) eyes and (B,) tan(fov/2) of a list of cameras."""
    if isinstance(cameras, Camera):
        cameras = [cameras]
    cameras = list(cameras)
    if not cameras or not all(isinstance(c, Camera) for c in cameras):
        raise BsbError("cameras must be a non-empty list of engine.cameras.Camera", "bad_request")
    matrices = np.stack([np.asarray(c.world_to_cam, dtype=np.float64) for c in cameras])
    eyes = np.stack([np.asarray(c.eye, dtype=np.float64) for c in cameras])
    tan_half = np.array([math.tan(math.radians(c.fov_deg) / 2.0) for c in cameras])
    return matrices, eyes, tan_half
