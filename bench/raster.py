"""Rasterizer throughput (views/s) on procedural bumpy tori of 10k / 50k / 200k faces.

Usage: python bench/raster.py [--quick]. Prints a table, then one JSON object as the last line.
Wall-clock numbers depend on the machine's load (on a shared VM they are a lower bound); the CPU
time per view (summed over threads) is less sensitive to it: on an idle machine with n cores,
views/s is about n * 1000 / (cpu ms/view).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cameras import sphere_views  # noqa: E402
from engine.mesh import mesh_from_arrays  # noqa: E402
from engine.raster import rasterize  # noqa: E402

GRIDS = {"10k": (100, 50), "50k": (250, 100), "200k": (500, 200)}  # faces = 2 * major * minor


def bumpy_torus(n_major: int, n_minor: int):
    """A self-occluding torus with ripples: non-convex, like real meshes, with 2*n_major*n_minor faces."""
    u = np.linspace(0, 2 * math.pi, n_major, endpoint=False)[:, None]
    v = np.linspace(0, 2 * math.pi, n_minor, endpoint=False)[None, :]
    r = 0.3 * (1 + 0.15 * np.sin(7 * u) * np.cos(5 * v))
    x, y, z = (1 + r * np.cos(v)) * np.cos(u), r * np.sin(v), (1 + r * np.cos(v)) * np.sin(u)
    verts = np.stack([x, y, z], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n_major), np.arange(n_minor), indexing="ij")
    a, b = i * n_minor + j, ((i + 1) % n_major) * n_minor + j
    c, d = ((i + 1) % n_major) * n_minor + (j + 1) % n_minor, i * n_minor + (j + 1) % n_minor
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return mesh_from_arrays(verts, faces, up="y")


def views_per_second(mesh, size: int, views: int, backend: str, repeats: int) -> tuple[float, float, float]:
    """Best wall-clock views/s, CPU ms per view (all threads; insensitive to other load) and coverage."""
    cams = sphere_views(views, mode="gaussian", seed=0)
    rasterize(mesh.vertices, mesh.faces, cams[:2], size, backend=backend)  # JIT / warm-up
    best, best_cpu = math.inf, math.inf
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        r = rasterize(mesh.vertices, mesh.faces, cams, size, backend=backend)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return views / best, 1000 * best_cpu / views, float((r.face_id >= 0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer views and repeats (under a minute)")
    args = parser.parse_args()
    views = {224: 16, 512: 8} if args.quick else {224: 64, 512: 32}
    repeats = 1 if args.quick else 3
    results: dict[str, float] = {}
    print(f"{'backend':8} {'faces':>7} {'res':>5} {'views':>6} {'views/s':>9} {'ms/view':>8} {'cpu ms/view':>12} {'coverage':>9}")
    cases = [("numba", name, size) for name in GRIDS for size in (224, 512)]
    cases.append(("torch", "50k", 224))
    meshes = {name: bumpy_torus(*grid) for name, grid in GRIDS.items()}
    for backend, name, size in cases:
        n = views[size] if backend == "numba" else max(2, views[size] // 8)
        rate, cpu_ms, coverage = views_per_second(meshes[name], size, n, backend, repeats)
        suffix = "" if backend == "numba" else "_torch"
        results[f"raster_{size}_{name}_views_per_s{suffix}"] = round(rate, 1)
        results[f"raster_{size}_{name}_cpu_ms_per_view{suffix}"] = round(cpu_ms, 2)
        print(
            f"{backend:8} {len(meshes[name].faces):>7} {size:>5} {n:>6} {rate:>9.1f} {1000 / rate:>8.2f} "
            f"{cpu_ms:>12.2f} {coverage:>9.2f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
