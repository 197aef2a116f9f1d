"""Shaded renders: what the 2D models (SAM, DINOv2) see, so parts must read clearly.

Flat face normals lit in camera space by a key light from the upper left plus a headlight, on an
ambient floor, over a white background. Flat shading makes creases and part boundaries visible.
"""

from __future__ import annotations

import numpy as np

from engine.errors import BsbError
from engine.raster import Raster

ALBEDO = 2.0 / 3.0
AMBIENT = 0.45
KEY_LIGHT = np.array([-0.45, 0.6, 0.66])  # camera space: upper left, towards the viewer
KEY_WEIGHT = 0.5
HEAD_WEIGHT = 0.4


def lighting(raster: Raster) -> np.ndarray:
    """(B, H, W) float32 light factor in [AMBIENT, AMBIENT + KEY_WEIGHT + HEAD_WEIGHT]."""
    if raster.world_to_cam is None:
        raise BsbError("this Raster has no cameras (world_to_cam); rasterize with engine.raster.rasterize", "bad_request")
    rot = raster.world_to_cam[:, :3, :3].astype(np.float32)
    n_cam = np.einsum("bij,bhwj->bhwi", rot, raster.normal)
    key = (KEY_LIGHT / np.linalg.norm(KEY_LIGHT)).astype(np.float32)
    diffuse = KEY_WEIGHT * np.clip(n_cam @ key, 0.0, None) + HEAD_WEIGHT * np.clip(n_cam[..., 2], 0.0, None)
    return (AMBIENT + diffuse).astype(np.float32)


def shade(raster: Raster) -> np.ndarray:
    """(B, H, W, 3) uint8 grey Lambert images on white."""
    value = np.clip(ALBEDO * lighting(raster), 0.0, 1.0)
    grey = np.where(raster.face_id >= 0, value, 1.0)
    return np.repeat(_to_uint8(grey)[..., None], 3, axis=-1)


def shade_colors(raster: Raster, faces: np.ndarray, vertex_colors: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8: per-vertex colours (float in [0, 1], or uint8) interpolated and lit."""
    colors = np.asarray(vertex_colors)
    scale = 255.0 if colors.dtype == np.uint8 else 1.0
    colors = colors.astype(np.float32) / scale
    faces = np.asarray(faces)
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise BsbError(f"vertex_colors must have shape (V, 3), got {colors.shape}", "bad_request")
    if faces.size and faces.max() >= len(colors):
        raise BsbError(f"vertex_colors has {len(colors)} rows but faces index vertex {faces.max()}", "bad_request")
    covered = raster.face_id >= 0
    fid = raster.face_id[covered]
    albedo = np.einsum("pk,pkc->pc", raster.bary[covered], colors[faces[fid]])
    out = np.ones(raster.face_id.shape + (3,), dtype=np.float32)
    out[covered] = np.clip(albedo * lighting(raster)[covered][:, None], 0.0, 1.0)
    return _to_uint8(out)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(values * 255.0).astype(np.uint8)
