"""Split Into Parts and Find Part without bpy: the protocol sequences, result checks, part names and colours.

Why apart from the writers: everything here can be checked against plain arrays (tests/test_addon_parts.py
calls it directly); the bpy side (ops_parts.py) only reads the mesh and writes what this module validated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import meshmath
from .engine_client import CancelFn, EngineClient, EngineError, ProgressFn
from .errors import InputError
from .jobs import MeshFiles, PartResult, ResultError, _load, _steps, part_from_data, prepare, provenance

# The point colour attribute a split writes (one colour per part). Not "bsb_...": those are the twin
# attributes of vertex groups (meshio.attribute_name), and a group named "parts" must not collide with it.
COLOR_ATTRIBUTE = "bsb part colours"
MAX_DIGITS = 4  # part numbers get at most this many digits (segment_all makes a few dozen parts)


@dataclass
class Split:
    """A validated segment_all answer on the base mesh: `labels (V,)` part index per vertex, one sRGB
    colour (0-255) per part, and the engine's per-part listing."""

    labels: np.ndarray
    colors: np.ndarray  # (P, 3) uint8
    parts: list[dict]
    granularity: float
    reused: bool
    random_weights: bool
    provenance: dict

    @property
    def n_parts(self) -> int:
        return len(self.colors)


def split_prefix(prefix: str) -> str:
    """The prefix of the part groups, cut so that a space and the part number still fit Blender's limit."""
    fitted = meshmath.fit_name(prefix, meshmath.NAME_BYTES - 1 - MAX_DIGITS)
    if not fitted:
        raise InputError("The parts prefix is empty; type a name such as 'Split' for the part groups.")
    return fitted


def split_names(prefix: str, n: int) -> list[str]:
    """`prefix 01` ... `prefix NN` (zero-padded so they sort in part order), each within Blender's name limit."""
    prefix = split_prefix(prefix)
    width = max(2, len(str(n)))
    if width > MAX_DIGITS:
        raise ResultError(f"The engine split the mesh into {n} parts; at most {10 ** MAX_DIGITS - 1} are written.")
    return [f"{prefix} {i + 1:0{width}d}" for i in range(n)]


def is_split_name(name: str, prefix: str) -> bool:
    """A group an earlier split with this prefix wrote (`prefix` + space + digits): a new split replaces those."""
    prefix = meshmath.fit_name(prefix, meshmath.NAME_BYTES - 1 - MAX_DIGITS)
    return bool(prefix) and re.fullmatch(re.escape(prefix) + r" \d+", name) is not None


def linear_rgba(colors: np.ndarray) -> np.ndarray:
    """(P, 3) sRGB bytes -> (P, 4) scene-linear floats with alpha 1, as colour attributes store them."""
    rgb = meshmath.srgb_to_linear(np.asarray(colors, np.float64) / 255.0)
    return np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1).astype(np.float32)


def labels_to_base(labels: np.ndarray, mesh: MeshFiles) -> np.ndarray:
    """Part labels of the engine's vertices -> of the base mesh's (a base vertex takes its first copy's)."""
    if mesh.copies is None:
        return labels
    first = meshmath.first_copy(mesh.copies, mesh.n_base)
    if (first < 0).any():  # read_mesh sends the evaluated mesh only when every base vertex has a copy
        raise ResultError("Some vertices have no counterpart in the engine's mesh; apply the modifiers and "
                          "split again.")
    return labels[first]


def split_from_data(data: dict, mesh: MeshFiles, random_weights: bool) -> Split:
    """Load and check a segment_all result: one label per engine vertex, 0..P-1, one colour per part."""
    labels = _load(data.get("labels"), "part labels")
    if labels is None:
        raise ResultError("The engine's split sent no part labels; run it again.")
    parts = data.get("parts")
    if not isinstance(parts, list) or not parts or len(parts) != data.get("n_parts"):
        raise ResultError(f"The engine's split lists {len(parts) if isinstance(parts, list) else 'no'} parts "
                          f"but says {data.get('n_parts')}; run it again.")
    if labels.shape != (mesh.n_vertices,) or labels.dtype.kind not in "iu":
        raise ResultError(f"The engine's part labels have shape {labels.shape} ({labels.dtype}) but the mesh has "
                          f"{mesh.n_vertices} vertices; prepare the mesh again.")
    if labels.min() < 0 or labels.max() >= len(parts):
        raise ResultError(f"The engine's part labels run from {labels.min()} to {labels.max()}, outside the "
                          f"{len(parts)} parts it listed; run it again.")
    colors = []
    for i, part in enumerate(parts):
        color = part.get("color") if isinstance(part, dict) else None
        if (not isinstance(color, list) or len(color) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
            raise ResultError(f"The engine sent no valid colour for part {i + 1}; run it again.")
        colors.append(color)
    return Split(labels_to_base(labels.astype(np.int64), mesh), np.asarray(colors, np.uint8), parts,
                 float(data.get("granularity", 0.0)), bool(data.get("reused")), random_weights, {})


def run_segment_all(client: EngineClient, mesh: MeshFiles, job_dir: str, granularity: float,
                    progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Split:
    """prepare -> segment_all at `granularity` (0 coarse .. 1 fine)."""
    if not 0.0 <= granularity <= 1.0:
        raise EngineError(f"The granularity must lie between 0 and 1, got {granularity}.", "bad_request")
    mesh_data = prepare(client, mesh, _steps(progress, 0.0, 0.3), cancel)
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    data = client.request("segment_all", progress=_steps(progress, 0.3, 1.0), cancel=cancel,
                          mesh_id=mesh_data["mesh_id"], granularity=float(granularity), job_dir=str(job_dir))
    split = split_from_data(data, mesh, client.random_weights)
    split.provenance = provenance(client)
    return split


def check_part_text(text: str) -> str:
    """The part name to look for: one line, not blank, at most the protocol's 200 characters."""
    text = " ".join(text.split())
    if not text:
        raise InputError("Type the name of the part to find (for example 'handle' or 'wing').")
    if len(text) > 200:
        raise InputError(f"The part name has {len(text)} characters; a name of at most 200 is enough.")
    return text


def run_find_part(client: EngineClient, mesh: MeshFiles, text: str, job_dir: str,
                  progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> PartResult:
    """prepare -> find_part: the part named `text` on the mesh (found False with a reason when no view shows it)."""
    text = check_part_text(text)
    mesh_data = prepare(client, mesh, _steps(progress, 0.0, 0.3), cancel)
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    data = client.request("find_part", progress=_steps(progress, 0.3, 1.0), cancel=cancel,
                          mesh_id=mesh_data["mesh_id"], text=text, job_dir=str(job_dir))
    result = part_from_data(data, mesh, client.random_weights, name=text)
    result.provenance = provenance(client)
    return result
