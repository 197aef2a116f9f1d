"""Face id + perspective-correct barycentrics per pixel: the geometry every 2D->3D step reads.

Two backends give the same answer: a numba z-buffer (CPU default, parallel over views) and a
vectorised torch one (used on CUDA/MPS, selectable on CPU). The rasterizer is never differentiated:
geometry and cameras are fixed, and features are interpolated afterwards in torch (engine.interp).
Pixels are sampled at their centres (i + 0.5, j + 0.5); on equal depth the lower face index wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np
import torch

from engine.cameras import Camera, stack_cameras
from engine.errors import BsbError, Cancelled, MeshError

BACKENDS = ("auto", "numba", "torch")
NEAR = 1e-3  # faces with a vertex closer than this to the camera plane are skipped (no clipping)


@dataclass
class Raster:
    """Per-view, per-pixel geometry in host memory (numpy)."""

    face_id: np.ndarray  # (B, H, W) int32, -1 on background
    bary: np.ndarray  # (B, H, W, 3) float32, weights of faces[face_id] vertices, sum 1
    depth: np.ndarray  # (B, H, W) float32, distance along the view axis, inf on background
    normal: np.ndarray  # (B, H, W, 3) float32, world-space unit face normal facing the camera
    world_to_cam: np.ndarray | None = None  # (B, 4, 4) float64, the cameras (shading lights in camera space)

    @property
    def coverage(self) -> np.ndarray:
        """(B, H, W) bool: pixels that see the mesh."""
        return self.face_id >= 0


def rasterize(
    vertices,
    faces,
    cameras: Camera | list[Camera],
    width: int,
    height: int | None = None,
    backend: str = "auto",
    cull_backfaces: bool = False,
    device: str | torch.device | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Raster:
    """Rasterize a triangle mesh from each camera.

    `backend="auto"` uses torch when `device` (or a torch `vertices` tensor) is a GPU, numba otherwise.
    `cancel` is polled between views (a hundred views of a million faces take tens of seconds).
    """
    height = width if height is None else height
    if backend not in BACKENDS:
        raise BsbError(f"unknown rasterizer backend {backend!r}; use one of {', '.join(BACKENDS)}", "bad_request")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise BsbError(f"image {name} must be a positive integer, got {value!r}", "bad_request")
    width, height = int(width), int(height)
    if device is None and isinstance(vertices, torch.Tensor):
        device = vertices.device
    device = torch.device(device) if device is not None else torch.device("cpu")
    verts, tris = _check_geometry(vertices, faces)
    matrices, eyes, tan_half = stack_cameras(cameras)
    focal = (height / 2.0) / tan_half
    if backend == "auto":
        backend = "torch" if device.type != "cpu" else "numba"
    if backend == "numba":
        return _rasterize_numba(verts, tris, matrices, eyes, focal, width, height, cull_backfaces, cancel)
    return _rasterize_torch(verts, tris, matrices, eyes, focal, width, height, cull_backfaces, device, cancel)


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3) float64 unit normals by the right-hand rule (zero for degenerate faces)."""
    v = np.asarray(vertices, dtype=np.float64)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def _check_geometry(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(vertices, torch.Tensor):
        vertices = vertices.detach().cpu().numpy()
    if isinstance(faces, torch.Tensor):
        faces = faces.detach().cpu().numpy()
    verts = np.asarray(vertices, dtype=np.float64)
    tris = np.asarray(faces)
    if verts.ndim != 2 or verts.shape[1] != 3 or len(verts) == 0:
        raise MeshError(f"vertices must be a non-empty (V, 3) array, got shape {verts.shape}")
    if not np.isfinite(verts).all():
        raise MeshError("vertices contain NaN or infinite coordinates; load the mesh through engine.mesh")
    if tris.ndim != 2 or tris.shape[1] != 3 or len(tris) == 0:
        raise MeshError(f"faces must be a non-empty (F, 3) integer array of triangles, got shape {tris.shape}")
    if not np.issubdtype(tris.dtype, np.integer):
        raise MeshError(f"faces must hold integer vertex indices, got dtype {tris.dtype}")
    if tris.min() < 0 or tris.max() >= len(verts):
        raise MeshError(f"face indices must lie in [0, {len(verts) - 1}], got [{tris.min()}, {tris.max()}]")
    return np.ascontiguousarray(verts), np.ascontiguousarray(tris, dtype=np.int32)


def _empty(matrices: np.ndarray, height: int, width: int) -> Raster:
    batch = len(matrices)
    return Raster(
        world_to_cam=matrices.copy(),
        face_id=np.full((batch, height, width), -1, dtype=np.int32),
        bary=np.zeros((batch, height, width, 3), dtype=np.float32),
        depth=np.full((batch, height, width), np.inf, dtype=np.float32),
        normal=np.zeros((batch, height, width, 3), dtype=np.float32),
    )


# ----------------------------------------------------------------------------------------------- numba

@numba.njit(cache=True, inline="always")
def _edge_lambdas(x0, y0, x1, y1, x2, y2, inv_area, px, py):
    l0 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) * inv_area
    l1 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) * inv_area
    l2 = ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) * inv_area
    return l0, l1, l2


@numba.njit(cache=True, parallel=True)
def _numba_views(verts, tris, normals, matrices, eyes, focal, width, height, near, cull,
                 out_face, out_bary, out_depth, out_normal):
    """Z-buffer on 1/depth per view (parallel over views), then barycentrics for the winners only."""
    n_verts = verts.shape[0]
    n_faces = tris.shape[0]
    for b in numba.prange(matrices.shape[0]):
        m = matrices[b]
        fl = focal[b]
        sx = np.empty(n_verts)
        sy = np.empty(n_verts)
        iz = np.empty(n_verts)
        for k in range(n_verts):
            x, y, z = verts[k, 0], verts[k, 1], verts[k, 2]
            cx = x * m[0, 0] + y * m[0, 1] + z * m[0, 2] + m[0, 3]
            cy = x * m[1, 0] + y * m[1, 1] + z * m[1, 2] + m[1, 3]
            d = -(x * m[2, 0] + y * m[2, 1] + z * m[2, 2] + m[2, 3])
            if d > near:
                sx[k] = width * 0.5 + fl * cx / d
                sy[k] = height * 0.5 - fl * cy / d
                iz[k] = 1.0 / d
            else:
                iz[k] = -1.0  # marks "behind the near plane"
        zbuf = np.zeros((height, width))
        fbuf = out_face[b]
        for f in range(n_faces):
            a, c, e = tris[f, 0], tris[f, 1], tris[f, 2]
            iz0, iz1, iz2 = iz[a], iz[c], iz[e]
            if iz0 < 0.0 or iz1 < 0.0 or iz2 < 0.0:
                continue
            x0, y0, x1, y1, x2, y2 = sx[a], sy[a], sx[c], sy[c], sx[e], sy[e]
            area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
            if area == 0.0 or (cull and area > 0.0):
                continue
            inv_area = 1.0 / area
            i_lo = max(int(math.ceil(min(x0, x1, x2) - 0.5)), 0)
            i_hi = min(int(math.floor(max(x0, x1, x2) - 0.5)), width - 1)
            j_lo = max(int(math.ceil(min(y0, y1, y2) - 0.5)), 0)
            j_hi = min(int(math.floor(max(y0, y1, y2) - 0.5)), height - 1)
            for j in range(j_lo, j_hi + 1):
                py = j + 0.5
                for i in range(i_lo, i_hi + 1):
                    l0, l1, l2 = _edge_lambdas(x0, y0, x1, y1, x2, y2, inv_area, i + 0.5, py)
                    if l0 >= 0.0 and l1 >= 0.0 and l2 >= 0.0:
                        zz = l0 * iz0 + l1 * iz1 + l2 * iz2
                        if zz > zbuf[j, i]:
                            zbuf[j, i] = zz
                            fbuf[j, i] = f
        for j in range(height):
            for i in range(width):
                f = fbuf[j, i]
                if f < 0:
                    continue
                a, c, e = tris[f, 0], tris[f, 1], tris[f, 2]
                x0, y0, x1, y1, x2, y2 = sx[a], sy[a], sx[c], sy[c], sx[e], sy[e]
                area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
                l0, l1, l2 = _edge_lambdas(x0, y0, x1, y1, x2, y2, 1.0 / area, i + 0.5, j + 0.5)
                w0, w1, w2 = l0 * iz[a], l1 * iz[c], l2 * iz[e]
                zz = w0 + w1 + w2
                out_bary[b, j, i, 0] = w0 / zz
                out_bary[b, j, i, 1] = w1 / zz
                out_bary[b, j, i, 2] = w2 / zz
                out_depth[b, j, i] = 1.0 / zz
                nx, ny, nz = normals[f, 0], normals[f, 1], normals[f, 2]
                facing = ((eyes[b, 0] - verts[a, 0]) * nx + (eyes[b, 1] - verts[a, 1]) * ny
                          + (eyes[b, 2] - verts[a, 2]) * nz)
                s = -1.0 if facing < 0.0 else 1.0
                out_normal[b, j, i, 0] = s * nx
                out_normal[b, j, i, 1] = s * ny
                out_normal[b, j, i, 2] = s * nz


def _rasterize_numba(verts, tris, matrices, eyes, focal, width, height, cull, cancel) -> Raster:
    out = _empty(matrices, height, width)
    normals = face_normals(verts, tris)
    # numba's OpenMP threading layer sets the process-wide OpenMP thread count, which torch reads too: without
    # this, a process that limits torch's threads (the service, a benchmark) loses its limit at the first render.
    torch_threads = torch.get_num_threads()
    try:
        # One batch of views per round of threads, so a cancel is seen within about one view's time.
        step = max(1, numba.get_num_threads())
        for s in range(0, len(matrices), step):
            _check(cancel)
            e = s + step
            _numba_views(
                verts, tris, normals, matrices[s:e], eyes[s:e], focal[s:e], width, height, NEAR, cull,
                out.face_id[s:e], out.bary[s:e], out.depth[s:e], out.normal[s:e],
            )
    finally:
        torch.set_num_threads(torch_threads)
    return out


def _check(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled()


# ----------------------------------------------------------------------------------------------- torch

FRAGMENT_BUDGET = 1 << 22  # candidate (face, pixel) pairs per chunk: bounds the torch backend's memory


def _rasterize_torch(verts, tris, matrices, eyes, focal, width, height, cull, device, cancel) -> Raster:
    dt = torch.float64 if device.type != "mps" else torch.float32
    v = torch.as_tensor(verts, dtype=dt, device=device)
    f = torch.as_tensor(tris, dtype=torch.long, device=device)
    fn = torch.as_tensor(face_normals(verts, tris), dtype=dt, device=device)
    out = _empty(matrices, height, width)
    for b in range(len(matrices)):
        _check(cancel)
        m = torch.as_tensor(matrices[b], dtype=dt, device=device)
        eye = torch.as_tensor(eyes[b], dtype=dt, device=device)
        fid, bary, depth, normal = _torch_view(v, f, fn, m, eye, float(focal[b]), width, height, cull)
        out.face_id[b] = fid.cpu().numpy()
        out.bary[b] = bary.cpu().numpy()
        out.depth[b] = depth.cpu().numpy()
        out.normal[b] = normal.cpu().numpy()
    return out


def _screen(v, m, focal, width, height):
    """Vertex pixel x, y and inverse view depth, as the numba kernel computes them."""
    cx = v[:, 0] * m[0, 0] + v[:, 1] * m[0, 1] + v[:, 2] * m[0, 2] + m[0, 3]
    cy = v[:, 0] * m[1, 0] + v[:, 1] * m[1, 1] + v[:, 2] * m[1, 2] + m[1, 3]
    cz = v[:, 0] * m[2, 0] + v[:, 1] * m[2, 1] + v[:, 2] * m[2, 2] + m[2, 3]
    d = -cz
    safe = torch.where(d > NEAR, d, torch.ones_like(d))
    return width * 0.5 + focal * cx / safe, height * 0.5 - focal * cy / safe, 1.0 / safe, d


def _lambdas(x0, y0, x1, y1, x2, y2, area, px, py):
    inv_area = 1.0 / area
    l0 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) * inv_area
    l1 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) * inv_area
    l2 = ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) * inv_area
    return l0, l1, l2


def _torch_view(v, f, fn, m, eye, focal, width, height, cull):
    sx, sy, iz, d = _screen(v, m, focal, width, height)
    x0, x1, x2 = sx[f[:, 0]], sx[f[:, 1]], sx[f[:, 2]]
    y0, y1, y2 = sy[f[:, 0]], sy[f[:, 1]], sy[f[:, 2]]
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    ok = (d[f] > NEAR).all(dim=1) & (area != 0)
    if cull:
        ok &= area < 0  # front faces are counter-clockwise seen from the camera, clockwise in y-down pixels
    i_lo = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2) - 0.5).clamp(min=0)
    i_hi = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - 0.5).clamp(max=width - 1)
    j_lo = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2) - 0.5).clamp(min=0)
    j_hi = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - 0.5).clamp(max=height - 1)
    ok &= (i_hi >= i_lo) & (j_hi >= j_lo)
    faces_ok = torch.nonzero(ok).squeeze(1)
    i_lo, j_lo = i_lo[faces_ok].long(), j_lo[faces_ok].long()
    span_w = i_hi[faces_ok].long() - i_lo + 1
    counts = span_w * (j_hi[faces_ok].long() - j_lo + 1)

    best_iz = torch.zeros(height * width, dtype=v.dtype, device=v.device)
    best_face = torch.full((height * width,), torch.iinfo(torch.long).max, dtype=torch.long, device=v.device)
    ends = torch.cumsum(counts, 0)
    start = 0
    while start < len(faces_ok):
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, base + FRAGMENT_BUDGET, right=True))
        stop = max(stop, start + 1)
        sel = slice(start, stop)
        c = counts[sel]
        owner = torch.repeat_interleave(torch.arange(stop - start, device=v.device), c)
        offset = torch.arange(int(c.sum()), device=v.device) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        face = faces_ok[sel][owner]
        px = (i_lo[sel][owner] + offset % span_w[sel][owner]).to(v.dtype) + 0.5
        py = (j_lo[sel][owner] + offset // span_w[sel][owner]).to(v.dtype) + 0.5
        l0, l1, l2 = _lambdas(x0[face], y0[face], x1[face], y1[face], x2[face], y2[face], area[face], px, py)
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        z = l0 * iz[f[face, 0]] + l1 * iz[f[face, 1]] + l2 * iz[f[face, 2]]
        pix = (py.long() * width + px.long())[inside]
        z, face = z[inside], face[inside]
        old = best_iz[pix]
        best_iz.scatter_reduce_(0, pix, z, reduce="amax")
        win = (z == best_iz[pix]) & (z > old)
        best_face[pix[win]] = torch.iinfo(torch.long).max
        best_face.scatter_reduce_(0, pix[win], face[win], reduce="amin")
        start = stop

    covered = best_iz > 0
    pix = torch.nonzero(covered).squeeze(1)
    face = best_face[pix]
    px = (pix % width).to(v.dtype) + 0.5
    py = (pix // width).to(v.dtype) + 0.5
    l0, l1, l2 = _lambdas(x0[face], y0[face], x1[face], y1[face], x2[face], y2[face], area[face], px, py)
    w = torch.stack([l0 * iz[f[face, 0]], l1 * iz[f[face, 1]], l2 * iz[f[face, 2]]], dim=1)
    z = w.sum(dim=1)
    normal = fn[face]
    facing = ((eye - v[f[face, 0]]) * normal).sum(dim=1)
    normal = torch.where((facing < 0).unsqueeze(1), -normal, normal)

    face_id = torch.full((height * width,), -1, dtype=torch.int32, device=v.device)
    face_id[pix] = face.to(torch.int32)
    bary = torch.zeros((height * width, 3), dtype=torch.float32, device=v.device)
    bary[pix] = (w / z.unsqueeze(1)).float()
    depth = torch.full((height * width,), math.inf, dtype=torch.float32, device=v.device)
    depth[pix] = (1.0 / z).float()
    normals = torch.zeros((height * width, 3), dtype=torch.float32, device=v.device)
    normals[pix] = normal.float()
    return (
        face_id.view(height, width),
        bary.view(height, width, 3),
        depth.view(height, width),
        normals.view(height, width, 3),
    )
