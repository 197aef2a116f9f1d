"""Writing results where people and other tools can use them: .npz arrays, a coloured PLY, PNG previews.

Everything written here is in the caller's frames: PLY vertices in the source mesh's units and axes, masks
in the original image's pixels. A result made with random weights is labelled as such in every file.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.bsb.result import MatchResult
from engine.errors import io_error
from engine.mesh import Mesh

PART_COLOR = (235, 110, 40)
BASE_COLOR = (190, 190, 190)
RANDOM_NOTE = "RANDOM WEIGHTS (plumbing check, not a real result)"


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) bool -> (H, W) bool for size (W, H), nearest neighbour (pixel centres map to pixel centres)."""
    mask = np.asarray(mask, dtype=bool)
    W, H = int(size[0]), int(size[1])
    if mask.shape == (H, W):
        return mask
    rows = np.minimum(((np.arange(H) + 0.5) * mask.shape[0] / H).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * mask.shape[1] / W).astype(np.int64), mask.shape[1] - 1)
    return mask[rows][:, cols]


@contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """Create the folder of `path` and turn any I/O failure while writing it into a message naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
    except OSError as exc:
        raise io_error(exc, "write", "result file", path, "pick a writable folder with free space",
                       "bad_request") from None


def match_arrays(match: MatchResult, n_vertices: int, original_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The arrays of a match: per-vertex weights/mask (zeros when nothing was found), masks in original pixels."""
    W, H = original_size
    weights = match.weights if match.weights is not None else np.zeros(n_vertices, np.float32)
    mask = match.vertex_mask if match.vertex_mask is not None else np.zeros(n_vertices, bool)
    empty = np.zeros((H, W), bool)
    return {
        "weights": np.asarray(weights, np.float32),
        "mask": np.asarray(mask, bool),
        "part_mask": empty if match.part_mask is None else resize_mask(match.part_mask, original_size),
        "object_mask": empty if match.object_mask is None else resize_mask(match.object_mask, original_size),
        "candidate_vertices": np.array([c.vertex for c in match.candidates], np.int64),
        "candidate_similarity": np.array([c.similarity for c in match.candidates], np.float32),
        "candidate_valid": np.array([c.valid for c in match.candidates], bool),
        "candidate_iou": np.array([np.nan if c.iou is None else c.iou for c in match.candidates], np.float32),
    }


def write_match_npz(path: Path, match: MatchResult, n_vertices: int, original_size: tuple[int, int],
                    random_weights: bool) -> Path:
    arrays = match_arrays(match, n_vertices, original_size)
    with _writing(path) as path:
        np.savez_compressed(
            path, **arrays, found=np.bool_(match.found), confidence=np.float32(match.confidence),
            scores=np.array([match.confidence], np.float32),
            winner_vertex=np.int64(-1 if match.winner_vertex is None else match.winner_vertex),
            winner_pixel=np.array(match.winner_pixel if match.winner_pixel is not None else (np.nan, np.nan),
                                  np.float32),
            reason=np.str_(match.reason or ""), random_weights=np.bool_(random_weights))
    return path


def write_segment_npz(path: Path, weights: np.ndarray, mask: np.ndarray, clicks: list[tuple[int, bool]],
                      random_weights: bool) -> Path:
    with _writing(path) as path:
        np.savez_compressed(path, weights=np.asarray(weights, np.float32), mask=np.asarray(mask, bool),
                            scores=np.asarray(weights, np.float32),
                            clicks=np.array([[v, int(p)] for v, p in clicks], np.int64).reshape(-1, 2),
                            random_weights=np.bool_(random_weights))
    return path


def write_colored_ply(path: Path, mesh: Mesh, mask: np.ndarray | None, color=PART_COLOR, base=BASE_COLOR) -> Path:
    """Binary PLY of the mesh in its source frame, the selected vertices in `color`, the rest in `base`."""
    n = mesh.num_vertices
    colors = np.tile(np.array(base, np.uint8), (n, 1))
    if mask is not None:
        colors[np.asarray(mask, bool)] = np.array(color, np.uint8)
    vertex = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    points = mesh.to_source(mesh.vertices).astype(np.float32)
    vertex["x"], vertex["y"], vertex["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    face = np.empty(mesh.num_faces, dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face["n"], face["v"] = 3, mesh.faces
    header = ("ply\nformat binary_little_endian 1.0\ncomment bsb-engine result\n"
              f"element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {mesh.num_faces}\nproperty list uchar int vertex_indices\nend_header\n")
    with _writing(path) as path, open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(vertex.tobytes())
        fh.write(face.tobytes())
    return path


# ----------------------------------------------------------------------------------------------------
# Previews

def render_highlight(mesh: Mesh, mask: np.ndarray | None, size: int = 384, eye: np.ndarray | None = None) -> np.ndarray:
    """A shaded render with the selected vertices coloured, seen from where the selection faces the camera."""
    from engine.cameras import look_at
    from engine.raster import rasterize
    from engine.shading import shade_colors

    if eye is None:
        eye = np.array([0.6, 0.5, 1.6])
        if mask is not None and np.any(mask):
            centroid = mesh.vertices[np.asarray(mask, bool)].mean(axis=0)
            if np.linalg.norm(centroid) > 0.15:
                eye = centroid / np.linalg.norm(centroid) * 2.0 + np.array([0.0, 0.3, 0.0])
    eye = np.asarray(eye, np.float64)
    eye = eye / np.linalg.norm(eye) * 2.0
    camera = look_at(eye, up=(0.0, 0.0, 1.0) if abs(eye[1]) > 1.9 else (0.0, 1.0, 0.0))
    raster = rasterize(mesh.vertices, mesh.faces, [camera], size)
    colors = np.tile(np.array(BASE_COLOR, np.uint8), (mesh.num_vertices, 1))
    if mask is not None:
        colors[np.asarray(mask, bool)] = np.array(PART_COLOR, np.uint8)
    return shade_colors(raster, mesh.faces, colors)[0]


def overlay(rgb: np.ndarray, part_mask: np.ndarray | None, object_mask: np.ndarray | None,
            points: list[tuple[float, float, int]] = ()) -> np.ndarray:
    """The image with the object mask tinted blue, the part orange, and clicks as green (+) / red (-) dots."""
    from PIL import Image, ImageDraw

    out = np.asarray(rgb, np.float32).copy()
    for mask, color, alpha in ((object_mask, (60, 120, 255), 0.3), (part_mask, PART_COLOR, 0.55)):
        if mask is not None:
            m = resize_mask(mask, (out.shape[1], out.shape[0]))
            out[m] = (1 - alpha) * out[m] + alpha * np.array(color, np.float32)
    im = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(im)
    r = max(3, round(min(im.size) / 80))
    for x, y, label in points:
        fill = (0, 200, 0) if label else (220, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255), width=max(1, r // 3))
    return np.asarray(im)


def fit(rgb: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    rgb = np.asarray(rgb)
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def titled(panels: list[np.ndarray], title: str, lines: list[str] = (), height: int = 384) -> np.ndarray:
    """Panels side by side at one height, under a title band (with optional extra lines)."""
    from PIL import Image, ImageDraw

    tiles = [fit(p, height) for p in panels]
    gap = 8
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) + 1)
    band = 28 + 18 * len(lines)
    canvas = Image.new("RGB", (max(width, 8 * len(title) + 20), height + band + gap), (255, 255, 255))
    x = gap
    for t in tiles:
        canvas.paste(Image.fromarray(t), (x, band))
        x += t.shape[1] + gap
    draw = ImageDraw.Draw(canvas)
    red = RANDOM_NOTE in title
    draw.text((gap, 6), title, fill=(200, 0, 0) if red else (0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((gap, 26 + 18 * i), line, fill=(60, 60, 60))
    return np.asarray(canvas)


def preview_title(text: str, random_weights: bool) -> str:
    return f"{text} - {RANDOM_NOTE}" if random_weights else text


def match_preview(mesh: Mesh, image_rgb: np.ndarray, match: MatchResult, points: list[tuple[float, float, int]],
                  image_scale: float, random_weights: bool, size: int = 384) -> np.ndarray:
    """The image with the query masks and clicks, beside the mesh with the matched part highlighted."""
    work_points = [(x * image_scale, y * image_scale, label) for x, y, label in points]
    left = overlay(image_rgb, match.part_mask, match.object_mask, work_points)
    right = render_highlight(mesh, match.vertex_mask, size)
    verdict = (f"found: {match.n_selected} vertices, confidence {match.confidence:.2f}" if match.found
               else f"no corresponding part: {match.reason}")
    lines = [verdict, f"{match.n_valid} of {match.n_candidates} candidates valid; winner vertex {match.winner_vertex}"]
    return titled([left, right], preview_title("BSB match: image click -> mesh part", random_weights), lines, size)


def describe_match(match: MatchResult, n_vertices: int) -> str:
    if not match.found:
        return f"no corresponding part ({match.reason}); {match.n_valid}/{match.n_candidates} candidates valid"
    return (f"matched {match.n_selected} of {n_vertices} vertices, confidence {match.confidence:.2f}, "
            f"winner vertex {match.winner_vertex}, {match.n_valid}/{match.n_candidates} candidates valid")
