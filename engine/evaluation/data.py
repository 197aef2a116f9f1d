"""Labelled evaluation meshes: PSB meshes with one human segmentation each, or semantic airplane labels.

Why one annotation per mesh: PSB annotators disagree on granularity (human/1 has 6 to 60 segments), so
the harness picks the annotation whose segment count is the median one, a deterministic and typical
choice that keeps every trial's "ground-truth part" well defined.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import BsbError, NotFoundError
from engine.mesh import Mesh, load_mesh

SEMANTIC_AIRPLANE_PARTS = ("body", "wing", "stabilizer", "rudder", "engine")


def data_dir(path: str | Path | None = None) -> Path:
    """The evaluation data folder: the argument, $BSB_EVAL_DATA, or ../shared/eval/data beside the repo."""
    candidate = Path(path or os.environ.get("BSB_EVAL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "eval" / "data")
    if not (candidate / "manifest.json").is_file():
        raise NotFoundError(
            f"evaluation data not found at {candidate} (no manifest.json); put ../shared/eval/data beside the "
            "repository or set BSB_EVAL_DATA to the folder"
        )
    return candidate


@dataclass(frozen=True)
class MeshEntry:
    """One labelled mesh of the manifest: `name` is "<category>/<id>" (e.g. "airplane/61")."""

    name: str
    category: str
    mesh_path: Path
    label_paths: tuple[Path, ...]
    semantic_path: Path | None


def list_meshes(root: str | Path | None = None, categories: list[str] | None = None) -> list[MeshEntry]:
    """The labelled PSB meshes, in manifest order, optionally only some categories."""
    root = data_dir(root)
    records = json.loads((root / "manifest.json").read_text())
    entries = []
    for rec in records:
        if rec.get("source") != "psb" or not rec.get("labels"):
            continue
        if categories and rec["category"] not in categories:
            continue
        mesh_path = root / rec["mesh"]
        semantic = rec.get("semantic_labels")
        entries.append(MeshEntry(
            name=f"{rec['category']}/{mesh_path.stem}",
            category=rec["category"],
            mesh_path=mesh_path,
            label_paths=tuple(root / p for p in rec["labels"]),
            semantic_path=root / semantic if semantic else None,
        ))
    return entries


def find_mesh(name: str, root: str | Path | None = None) -> MeshEntry:
    """The entry called `name` ("airplane/61"), or a NotFoundError listing what exists."""
    entries = list_meshes(root)
    for entry in entries:
        if entry.name == name:
            return entry
    raise NotFoundError(f"no labelled mesh {name!r}; known: {', '.join(e.name for e in entries)}")


def read_labels(path: Path) -> np.ndarray:
    """A per-face label file (one integer a line) as int32."""
    return np.loadtxt(path, dtype=np.int64).astype(np.int32).reshape(-1)


def median_annotation(label_paths: tuple[Path, ...]) -> Path:
    """The annotation whose segment count is the median count (ties: the lower file name)."""
    counts = [(len(np.unique(read_labels(p))), p) for p in sorted(label_paths, key=lambda p: p.name)]
    median = float(np.median([c for c, _ in counts]))
    return min(counts, key=lambda cp: abs(cp[0] - median))[1]


@dataclass(frozen=True)
class LabelledMesh:
    """A normalised mesh with per-face part labels (aligned with `mesh.faces`) and derived vertex sets."""

    name: str
    category: str
    mesh: Mesh
    face_labels: np.ndarray
    part_names: tuple[str, ...] | None = None
    vertex_parts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n_parts = int(self.face_labels.max()) + 1
        member = np.zeros((len(self.mesh.vertices), n_parts), dtype=bool)
        for k in range(3):
            member[self.mesh.faces[:, k], self.face_labels] = True
        object.__setattr__(self, "vertex_parts", member)

    @property
    def n_parts(self) -> int:
        return self.vertex_parts.shape[1]

    def interior_vertices(self, part: int) -> np.ndarray:
        """Vertices whose incident faces all belong to `part`: their ground-truth part is unambiguous."""
        inside = self.vertex_parts[:, part] & (self.vertex_parts.sum(axis=1) == 1)
        return np.flatnonzero(inside)


def load_labelled(entry: MeshEntry | str, semantic: bool = False, root: str | Path | None = None) -> LabelledMesh:
    """Load a mesh with its median human segmentation, or with its semantic labels (airplanes 61/63/70)."""
    if isinstance(entry, str):
        entry = find_mesh(entry, root)
    if semantic and entry.semantic_path is None:
        raise BsbError(f"{entry.name} has no semantic labels; only airplanes 61, 63 and 70 do", "bad_request")
    label_path = entry.semantic_path if semantic else median_annotation(entry.label_paths)
    mesh = load_mesh(entry.mesh_path, up="y")
    labels = read_labels(label_path)
    if len(labels) != len(mesh.faces):
        raise BsbError(
            f"{label_path.name} has {len(labels)} labels but {entry.name} has {len(mesh.faces)} faces after loading; "
            "the mesh loader must keep every PSB face in file order", "bad_mesh"
        )
    names = SEMANTIC_AIRPLANE_PARTS if semantic else None
    return LabelledMesh(entry.name, entry.category, mesh, labels, names)
