"""Procedural sample meshes with per-vertex part labels known by construction (redistributable).

Each part is built separately and the parts are concatenated without sharing vertices, so every vertex
has exactly one part. Geometry is Z-up (Blender's frame): pass it to `mesh_from_arrays(v, f)` with the
default `up="z"`. `subdivisions` splits every triangle into 4, that many times, for denser meshes.
"""

from __future__ import annotations

import numpy as np
import trimesh

SampleMesh = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]  # vertices, faces, labels, part names


def mug(subdivisions: int = 1, sections: int = 48) -> SampleMesh:
    """A mug: open cup (walls + floor) and a ring handle on the +X side."""
    walls = trimesh.creation.annulus(r_min=0.42, r_max=0.5, height=1.0, sections=sections)
    walls.apply_translation([0.0, 0.0, 0.5])
    floor = trimesh.creation.cylinder(radius=0.42, height=0.08, sections=sections)
    floor.apply_translation([0.0, 0.0, 0.04])
    handle = trimesh.creation.torus(major_radius=0.27, minor_radius=0.06, major_sections=sections, minor_sections=16)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1.0, 0.0, 0.0]))
    handle.apply_translation([0.58, 0.0, 0.5])
    return _assemble([("body", walls), ("body", floor), ("handle", handle)], subdivisions)


def chair(subdivisions: int = 2) -> SampleMesh:
    """A chair: seat, backrest and four legs (each leg its own part)."""
    parts = [("seat", _box((0.9, 0.9, 0.1), (0.0, 0.0, 0.55)))]
    parts.append(("back", _box((0.9, 0.08, 0.8), (0.0, 0.41, 1.0))))
    for name, x, y in (("leg_front_left", -1, -1), ("leg_front_right", 1, -1), ("leg_back_left", -1, 1), ("leg_back_right", 1, 1)):
        parts.append((name, _box((0.08, 0.08, 0.5), (0.39 * x, 0.39 * y, 0.25))))
    return _assemble(parts, subdivisions)


def _box(extents, center) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=extents)
    box.apply_translation(center)
    return box


def _assemble(parts: list[tuple[str, trimesh.Trimesh]], subdivisions: int) -> SampleMesh:
    names: list[str] = []
    verts, faces, labels, offset = [], [], [], 0
    for name, part in parts:
        v, f = np.asarray(part.vertices, dtype=np.float64), np.asarray(part.faces, dtype=np.int64)
        for _ in range(subdivisions):
            v, f = trimesh.remesh.subdivide(v, f)
        if name not in names:
            names.append(name)
        verts.append(v)
        faces.append(f + offset)
        labels.append(np.full(len(v), names.index(name), dtype=np.int32))
        offset += len(v)
    return np.concatenate(verts), np.concatenate(faces).astype(np.int32), np.concatenate(labels), names
