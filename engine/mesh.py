"""Meshes in the engine's frame: unit sphere, +Y up, vertex order exactly as the caller gave it.

Per-vertex results are written straight back into the caller's vertex array (a Blender vertex group),
so nothing here may merge, reorder or drop vertices. Faces are triangulated (fan) and degenerate
triangles are dropped; `face_source` remembers which input face each triangle came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import MeshError, os_reason

UP_AXES = ("y", "z")
OUTLIER_FACTOR = 4.0  # a used vertex this many 99th-percentile distances from the median is a stray
MESH_SUFFIXES = (".obj", ".ply", ".off", ".glb", ".gltf", ".stl")

# Source -> internal rotation. "z": (x, y, z) -> (x, z, -y), a right-handed rotation about +X.
_ROTATIONS = {
    "y": np.eye(3),
    "z": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh normalised into the unit sphere (+Y up), with the way back to the source frame."""

    vertices: np.ndarray  # (V, 3) float32; the framing vertices (`frame`) fill the unit sphere, strays may lie outside
    faces: np.ndarray  # (F, 3) int32
    center: np.ndarray  # (3,) float64, bounding-box centre of the framing vertices in the source frame
    scale: float  # source units per internal unit
    up: str  # the source's up axis, "y" or "z"
    face_source: np.ndarray | None = None  # (F,) int64: input polygon each triangle comes from
    _hash: str = ""

    def content_hash(self) -> str:
        """sha256 of the input geometry and up axis: the key of every per-mesh cache."""
        if self._hash:
            return self._hash
        return _hash_geometry(self.vertices, self.faces, self.up)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """Internal-frame points (N, 3) back to the caller's frame and units."""
        points = np.asarray(points, dtype=np.float64)
        return points * self.scale @ _ROTATIONS[self.up] + self.center

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


def mesh_from_arrays(vertices, faces, up: str = "z") -> Mesh:
    """Build a Mesh from caller arrays (Blender sends Z-up); `faces` is (F, k>=3) or a list of polygons."""
    if up not in UP_AXES:
        raise MeshError(f"unknown up axis {up!r}; use 'y' (most OBJ files) or 'z' (Blender)")
    verts = _check_vertices(vertices)
    tris, source = _triangulate(faces, len(verts))
    digest = _hash_geometry(verts, tris, up)
    center, scale = frame(verts, tris)
    internal = ((verts - center) @ _ROTATIONS[up].T) / scale
    keep = _non_degenerate(internal, tris)
    if not keep.any():
        raise MeshError("every face is degenerate (repeated vertex or zero area); the mesh has no surface to render")
    return Mesh(
        vertices=np.ascontiguousarray(internal, dtype=np.float32),
        faces=np.ascontiguousarray(tris[keep], dtype=np.int32),
        center=center,
        scale=scale,
        up=up,
        face_source=source[keep],
        _hash=digest,
    )


def frame(vertices: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale of the unit-sphere frame: the bounding box of the vertices the faces use, leaving out
    strays (vertices farther from the median than OUTLIER_FACTOR times the 99th percentile distance).

    Why: the frame decides what every rendered view shows. One stray vertex far away (or an unreferenced
    one) would shrink the real surface to a few pixels; left outside the sphere, it still gets a value."""
    used = vertices[np.unique(tris)]
    distance = np.linalg.norm(used - np.median(used, axis=0), axis=1)
    typical = float(np.percentile(distance, 99))
    core = used[distance <= OUTLIER_FACTOR * typical] if typical > 0 else used
    center = (core.min(axis=0) + core.max(axis=0)) / 2.0
    scale = float(np.linalg.norm(core - center, axis=1).max())
    if not np.isfinite(scale) or scale <= 0.0:
        raise MeshError("all vertices of the faces are at the same point; the mesh has no extent to segment")
    return center, scale


def load_mesh(path: str | Path, up: str = "y") -> Mesh:
    """Load OBJ/PLY/OFF/GLB/GLTF/STL keeping the file's own vertex list (positions only).

    OBJ and OFF are parsed here so faces keep the file's order (per-face label files index them).
    """
    path = Path(path)
    if path.is_dir():
        raise MeshError(f"mesh path {path} is a folder, not a file; give the mesh file itself")
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}", code="not_found")
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise MeshError(f"unsupported mesh format {suffix or '(none)'!r} for {path.name}; use one of {', '.join(MESH_SUFFIXES)}")
    try:
        if suffix == ".obj":
            vertices, faces = _read_obj(path)
        elif suffix == ".off":
            vertices, faces = _read_off(path)
        else:
            vertices, faces = _read_with_trimesh(path)
    except OSError as exc:
        raise MeshError(f"cannot read mesh file {path}: {os_reason(exc)}; check that it is readable",
                        code="not_found") from None
    return mesh_from_arrays(vertices, faces, up=up)


def _check_vertices(vertices) -> np.ndarray:
    try:
        verts = np.asarray(vertices, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MeshError(f"vertices must be a numeric (V, 3) array: {exc}") from None
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise MeshError(f"vertices must have shape (V, 3), got {verts.shape}")
    if len(verts) == 0:
        raise MeshError("the mesh has no vertices")
    if not np.isfinite(verts).all():
        bad = int((~np.isfinite(verts).all(axis=1)).sum())
        raise MeshError(f"{bad} vertices have NaN or infinite coordinates; fix or delete them before segmenting")
    return verts


def _triangulate(faces, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Fan-triangulate polygons; returns (T, 3) int64 triangles and (T,) source polygon index."""
    if isinstance(faces, np.ndarray) or _is_rectangular(faces):
        try:
            arr = np.asarray(faces)
        except (TypeError, ValueError) as exc:
            raise MeshError(f"faces must be an integer array or a list of polygons: {exc}") from None
        if arr.size == 0:
            raise MeshError("the mesh has no faces")
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise MeshError(f"faces must have shape (F, 3) or (F, k>=3), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
                raise MeshError("face indices must be integers")
        arr = arr.astype(np.int64)
        _check_range(arr, num_vertices)
        k = arr.shape[1]
        tris = np.concatenate([np.stack([arr[:, 0], arr[:, i], arr[:, i + 1]], axis=1) for i in range(1, k - 1)])
        # Fan triangles of one polygon stay together, in input order.
        tris = tris.reshape(k - 2, -1, 3).transpose(1, 0, 2).reshape(-1, 3)
        source = np.repeat(np.arange(len(arr), dtype=np.int64), k - 2)
        return tris, source
    polys = list(faces)
    if not polys:
        raise MeshError("the mesh has no faces")
    tris, source = [], []
    for index, poly in enumerate(polys):
        poly = np.asarray(poly, dtype=np.int64).ravel()
        if len(poly) < 3:
            raise MeshError(f"face {index} has {len(poly)} vertices; every face needs at least 3")
        for i in range(1, len(poly) - 1):
            tris.append((poly[0], poly[i], poly[i + 1]))
            source.append(index)
    tris_arr = np.asarray(tris, dtype=np.int64)
    _check_range(tris_arr, num_vertices)
    return tris_arr, np.asarray(source, dtype=np.int64)


def _is_rectangular(faces) -> bool:
    try:
        lengths = {len(f) for f in faces}
    except TypeError:
        return True  # let np.asarray report the problem
    return len(lengths) <= 1


def _check_range(tris: np.ndarray, num_vertices: int) -> None:
    if tris.size and (tris.min() < 0 or tris.max() >= num_vertices):
        raise MeshError(
            f"face indices must lie in [0, {num_vertices - 1}] but range over [{tris.min()}, {tris.max()}]; "
            "the face list does not belong to this vertex list"
        )


def _non_degenerate(vertices: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Faces with three distinct vertices and non-zero area (in the unit-sphere frame)."""
    distinct = (tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])
    v0, v1, v2 = vertices[tris[:, 0]], vertices[tris[:, 1]], vertices[tris[:, 2]]
    area2 = np.linalg.norm(np.cross(v1 - v0, v2 - v0), axis=1)
    return distinct & (area2 > 1e-14)


def _hash_geometry(vertices: np.ndarray, tris: np.ndarray, up: str) -> str:
    digest = hashlib.sha256()
    # The source coordinates in full (float64): float32 would hide a real edit far from the origin.
    digest.update(f"bsb-mesh-v2|up={up}|V={len(vertices)}|T={len(tris)}|".encode())
    digest.update(np.ascontiguousarray(vertices, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(tris, dtype="<i4").tobytes())
    return digest.hexdigest()


def _read_obj(path: Path) -> tuple[np.ndarray, list[Sequence[int]]]:
    """Positions and polygons of an OBJ, ignoring uv/normal indices (which make trimesh split vertices)."""
    vertices: list[list[float]] = []
    polys: list[list[int]] = []
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.startswith("v "):
                parts = line.split()
                try:
                    vertices.append([float(parts[1]), float(parts[2]), float(parts[3])])
                except (IndexError, ValueError):
                    raise MeshError(f"{path.name} line {line_no}: a vertex needs 3 numbers: {line.strip()!r}") from None
            elif line.startswith("f "):
                poly = []
                for token in line.split()[1:]:
                    try:
                        index = int(token.split("/", 1)[0])
                    except ValueError:
                        raise MeshError(f"{path.name} line {line_no}: bad face index {token!r}") from None
                    # OBJ is 1-based; negative indices count back from the vertices read so far.
                    if index == 0:
                        raise MeshError(f"{path.name} line {line_no}: face index 0 is not valid in OBJ "
                                        "(indices start at 1); re-export the file")
                    poly.append(index - 1 if index > 0 else len(vertices) + index)
                polys.append(poly)
    if not vertices:
        raise MeshError(f"{path.name} has no vertices ('v' lines)")
    if not polys:
        raise MeshError(f"{path.name} has no faces ('f' lines); point clouds cannot be segmented")
    return np.asarray(vertices, dtype=np.float64), polys


def _read_off(path: Path) -> tuple[np.ndarray, list[Sequence[int]]]:
    """ASCII OFF in file order (trimesh groups faces by size, which would break per-face label files)."""
    lines = []
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    if not lines or not lines[0].split()[0].endswith("OFF"):
        raise MeshError(f"{path.name} is not an ASCII OFF file (first line should be 'OFF')")
    header = lines[0].split()[1:] or lines.pop(1).split()
    lines = lines[1:]
    try:
        n_verts, n_faces = int(header[0]), int(header[1])
        vertices = np.array([[float(t) for t in line.split()[:3]] for line in lines[:n_verts]], dtype=np.float64)
        polys = []
        for line in lines[n_verts : n_verts + n_faces]:
            tokens = line.split()
            polys.append([int(t) for t in tokens[1 : 1 + int(tokens[0])]])
    except (IndexError, ValueError) as exc:
        raise MeshError(f"{path.name}: malformed OFF file ({exc})") from None
    if len(vertices) != n_verts or len(polys) != n_faces:
        raise MeshError(f"{path.name}: header promises {n_verts} vertices and {n_faces} faces but the file is shorter")
    return vertices.reshape(-1, 3), polys


def _read_with_trimesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions and triangles via trimesh without processing; a scene's meshes are concatenated."""
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False, force="scene")
    except OSError:
        raise
    except Exception as exc:  # trimesh raises many types for malformed files, some with bare messages
        raise MeshError(f"could not read {path} as a {path.suffix.lower().lstrip('.').upper()} file "
                        f"({type(exc).__name__}: {exc}); the file may be damaged or in another format; "
                        "re-export it (OBJ, PLY or GLB)") from None
    verts, faces, offset = [], [], 0
    for node in loaded.graph.nodes_geometry:
        transform, name = loaded.graph[node]
        geom = loaded.geometry[name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        v = np.asarray(geom.vertices, dtype=np.float64)
        v = v @ transform[:3, :3].T + transform[:3, 3]
        verts.append(v)
        faces.append(np.asarray(geom.faces, dtype=np.int64) + offset)
        offset += len(v)
    if not verts:
        raise MeshError(f"{path.name} contains no triangle mesh")
    return np.concatenate(verts), np.concatenate(faces)
