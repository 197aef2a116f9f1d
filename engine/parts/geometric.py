"""The geometric baseline artists already have: faces grow into regions across edges that are not sharp.

Like Blender's "Face Sets from Normals": two faces sharing an edge join when their normals differ by
less than `angle_deg`; each region of faces is a part. A vertex takes the part of most of its faces.
"""

from __future__ import annotations

import numpy as np

from engine.parts.graph import components
from engine.raster import face_normals


def face_adjacency(faces: np.ndarray) -> np.ndarray:
    """(E, 2) pairs of faces sharing an edge (an edge with more than two faces links them in sequence)."""
    f = np.asarray(faces, np.int64)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(f)), 3)
    order = np.lexsort((e[:, 1], e[:, 0]))
    e, owner = e[order], owner[order]
    same = np.all(e[1:] == e[:-1], axis=1)
    return np.stack([owner[:-1][same], owner[1:][same]], 1)


def normal_regions(vertices: np.ndarray, faces: np.ndarray, angle_deg: float = 30.0) -> np.ndarray:
    """(F,) region id of each face: components of the face graph cut at edges sharper than `angle_deg`."""
    pairs = face_adjacency(faces)
    n = face_normals(vertices, faces)
    cos = np.einsum("ij,ij->i", n[pairs[:, 0]], n[pairs[:, 1]])
    smooth = cos >= np.cos(np.radians(angle_deg))
    return components(len(faces), pairs[smooth])


def faces_to_vertices(faces: np.ndarray, face_labels: np.ndarray, n_vertices: int) -> np.ndarray:
    """(V,) the most frequent label among each vertex's faces (-1 for a vertex in no face)."""
    f = np.asarray(faces, np.int64).reshape(-1)
    lab = np.repeat(np.asarray(face_labels, np.int64), 3)
    order = np.lexsort((lab, f))
    f, lab = f[order], lab[order]
    start = np.r_[True, (f[1:] != f[:-1]) | (lab[1:] != lab[:-1])]
    idx = np.nonzero(start)[0]
    counts = np.diff(np.r_[idx, len(f)])
    fv, lv = f[idx], lab[idx]
    best = np.lexsort((-counts, fv))  # per vertex, its most frequent label first
    fv, lv = fv[best], lv[best]
    first = np.r_[True, fv[1:] != fv[:-1]]
    out = np.full(n_vertices, -1, np.int64)
    out[fv[first]] = lv[first]
    return out
