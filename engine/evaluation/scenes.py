"""Test images made from labelled meshes: a coloured, textured render of one held-out view.

Stands in for the paper's ControlNet photos: each part gets its own colour, the surface a low-frequency
texture and pixel noise, the object sits on a noisy gradient background, and one "decal" (a striped patch
painted onto a part in the image only) gives a click with no corresponding mesh part. Alongside the
image, the scene keeps the ground truth an oracle needs: the part under every pixel and the decal mask.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from engine.cameras import Camera, look_at, project
from engine.evaluation.data import LabelledMesh
from engine.raster import rasterize
from engine.shading import shade_colors

DECAL_REGION = 1 << 20  # region id of the decal in `Scene.region_map` (no part label comes near it)
DEPTH_TOLERANCE = 0.02  # unit-sphere units: a vertex this close to the z-buffer surface counts as seen


@dataclass(frozen=True)
class Scene:
    """One rendered test image and its per-pixel ground truth (all arrays at the image's resolution)."""

    camera: Camera
    image: np.ndarray  # (H, W, 3) uint8
    part_map: np.ndarray  # (H, W) int32 part label under each pixel, -1 on the background
    decal: np.ndarray  # (H, W) bool: pixels of the painted decal (no mesh part corresponds)
    depth: np.ndarray  # (H, W) float32 view-axis depth, inf on the background

    @property
    def size(self) -> tuple[int, int]:
        """(W, H)."""
        return self.image.shape[1], self.image.shape[0]

    def region_map(self) -> np.ndarray:
        """What a perfect segmenter sees: part labels, with the decal as one extra region `DECAL_REGION`."""
        regions = self.part_map.copy()
        regions[self.decal] = DECAL_REGION
        return regions


def evaluation_views(n: int, seed: int) -> list[Camera]:
    """`n` random viewpoints on the radius-2 sphere, away from the Fibonacci views used for preparation.

    Random directions from their own seed hit a preparation view with probability zero; elevations are
    kept within +-60 degrees so the images look like ordinary photos of the object.
    """
    rng = np.random.default_rng(seed)
    views = []
    while len(views) < n:
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        if abs(d[1]) <= np.sin(np.radians(60.0)):
            views.append(look_at(2.0 * d))
    return views


def palette(n: int, seed: int) -> np.ndarray:
    """`n` well-separated, moderately saturated colours (float RGB in [0, 1]), shuffled by `seed`."""
    hues = (np.arange(n) * 0.618034) % 1.0
    rng = np.random.default_rng(seed)
    rng.shuffle(hues)
    sats = rng.uniform(0.35, 0.75, size=n)
    vals = rng.uniform(0.6, 0.95, size=n)
    return np.array([colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sats, vals)], dtype=np.float32)


def smooth_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upsampled to `shape`."""
    h, w = shape
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    ys = np.linspace(0, cells, h, endpoint=False) + 0.5 * cells / h
    xs = np.linspace(0, cells, w, endpoint=False) + 0.5 * cells / w
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    ty, tx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
    bottom = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
    return (top * (1 - ty) + bottom * ty).astype(np.float32)


def visible_vertices(lm: LabelledMesh, camera: Camera, part_map: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices seen in the view, on a pixel of one of their own parts, and their projected pixels (x, y)."""
    h, w = part_map.shape
    xy, z = project(lm.mesh.vertices, camera, w, h)
    col, row = np.floor(xy[:, 0]), np.floor(xy[:, 1])
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & np.isfinite(z)
    idx = np.flatnonzero(inside)
    c, r = col[idx].astype(int), row[idx].astype(int)
    label = part_map[r, c]
    seen = (label >= 0) & (np.abs(z[idx] - depth[r, c]) < DEPTH_TOLERANCE)
    seen &= lm.vertex_parts[idx, np.maximum(label, 0)]
    idx = idx[seen]
    return idx, xy[idx]


def _paint_decal(lm: LabelledMesh, camera: Camera, part_map: np.ndarray, depth: np.ndarray,
                 rng: np.random.Generator, radius: float) -> np.ndarray:
    """A disk on one part (at a visible interior vertex) that stays inside that part's region."""
    h, w = part_map.shape
    vertices, xy = visible_vertices(lm, camera, part_map, depth)
    interior = lm.vertex_parts[vertices].sum(axis=1) == 1
    vertices, xy = vertices[interior], xy[interior]
    rows, cols = np.mgrid[0:h, 0:w]
    order = rng.permutation(len(vertices))[:48]
    for r in (radius, 0.7 * radius, 0.5 * radius):  # thin parts only take a smaller decal
        for i in order:
            part = int(np.argmax(lm.vertex_parts[vertices[i]]))
            cx, cy = xy[i]
            disk = (cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 <= r ** 2
            on_part = disk & (part_map == part)
            if on_part.sum() >= 0.8 * disk.sum():
                return on_part
    return np.zeros((h, w), dtype=bool)


def render_scene(lm: LabelledMesh, camera: Camera, size: int = 224, seed: int = 0,
                 decal_radius: float = 0.07) -> Scene:
    """Render `lm` from `camera` as a coloured, textured, noisy test image with one decal (if one fits).

    `decal_radius` is a fraction of the image width; the decal is skipped when no part is big enough.
    """
    rng = np.random.default_rng(seed)
    raster = rasterize(lm.mesh.vertices, lm.mesh.faces, [camera], size, size)
    face_id = np.asarray(raster.face_id[0])
    depth = np.asarray(raster.depth[0], dtype=np.float32)
    covered = face_id >= 0
    part_map = np.where(covered, lm.face_labels[np.maximum(face_id, 0)], -1).astype(np.int32)

    # Flat per-part colours through the shared shader: every face gets its own three corners.
    colours = palette(lm.n_parts + 1, seed)
    n_faces = len(lm.mesh.faces)
    corner_faces = np.arange(3 * n_faces, dtype=np.int64).reshape(n_faces, 3)
    corner_colours = np.repeat(colours[lm.face_labels], 3, axis=0)
    lit = shade_colors(raster, corner_faces, corner_colours)[0].astype(np.float32) / 255.0

    texture = 1.0 + 0.18 * smooth_noise((size, size), 12, rng)[..., None]
    grain = rng.normal(0.0, 0.04, size=(size, size, 3)).astype(np.float32)
    fg = lit * texture + grain

    decal = (_paint_decal(lm, camera, part_map, depth, rng, decal_radius * size) if decal_radius > 0
             else np.zeros_like(covered))
    if decal.any():
        rows, cols = np.mgrid[0:size, 0:size]
        stripes = ((rows + cols) // 3) % 2 == 0
        ink = np.where(stripes[..., None], colours[-1], 1.0 - colours[-1])
        fg[decal] = ink[decal] * (0.7 + 0.3 * lit[decal].mean(axis=-1, keepdims=True))

    top, bottom = rng.uniform(0.3, 0.95, size=(2, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    bg = top * (1 - ramp) + bottom * ramp + 0.08 * smooth_noise((size, size), 6, rng)[..., None]
    bg += rng.normal(0.0, 0.04, size=(size, size, 3)).astype(np.float32)

    image = np.where(covered[..., None], fg, bg)
    image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Scene(camera=camera, image=image, part_map=part_map, decal=decal, depth=depth)
