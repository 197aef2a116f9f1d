"""`--blend`: one .blend per asset, the mesh plus one vertex group (and `bsb_<group>` attribute) per part.

The writing is the add-on's own `bsb_addon.meshio.write_part`, run through the bpy wheel in a child
process (`engine.batch.blend_writer`): the engine never imports bpy, and bpy's bundled libraries never
share a process with torch's. The mesh is written as the engine sees it (triangles, degenerate ones
dropped, vertex order unchanged) and turned Z-up like Blender's own importers do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.errors import BsbError
from engine.mesh import Mesh

EXIT_NO_BPY = 4
TIMEOUT_S = 600


def blender_vertices(mesh: Mesh) -> np.ndarray:
    """Source-frame vertices in Blender's Z-up frame ((x, y, z) -> (x, -z, y) for a Y-up source)."""
    points = mesh.to_source(mesh.vertices)
    if mesh.up == "y":
        points = np.stack([points[:, 0], -points[:, 2], points[:, 1]], axis=1)
    return points.astype(np.float32)


def write_blend(path: Path, mesh: Mesh, parts: list[tuple[str, np.ndarray, np.ndarray]], name: str | None = None) -> Path:
    """Write `path` with the mesh as object `name` (default: the file's stem) and each (group, weights, mask)."""
    path = Path(path).resolve()
    root = Path(__file__).resolve().parents[2]  # the checkout: engine/ and bsb_addon/ side by side
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    n = mesh.num_vertices
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "parts.npz"
        np.savez(data, vertices=blender_vertices(mesh), faces=mesh.faces.astype(np.int32),
                 names=np.array([p[0] for p in parts], dtype=str), name=np.str_(name or path.stem),
                 weights=np.array([np.asarray(p[1], np.float32) for p in parts]).reshape(len(parts), n),
                 masks=np.array([np.asarray(p[2], bool) for p in parts]).reshape(len(parts), n))
        try:
            proc = subprocess.run([sys.executable, "-m", "engine.batch.blend_writer", str(data), str(path)],
                                  env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BsbError(f"writing {path.name} took over {TIMEOUT_S} s; the bpy writer was stopped",
                           "blend_failed") from None
    if proc.returncode == EXIT_NO_BPY:
        raise BsbError(proc.stderr.strip().splitlines()[-1], "missing_dependency")
    if proc.returncode != 0 or not path.is_file():
        lines = proc.stderr.strip().splitlines()
        raise BsbError(f"writing {path.name} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}",
                       "blend_failed")
    return path
