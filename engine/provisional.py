"""Time to first answer: a provisional answer from the DINO field alone, while SAM and iSeg still prepare.

Why: the DINO field exists after a fraction of a preparation (a few DINO views and a small field), and
BSB's matching needs nothing else from the mesh: it ranks vertices by their DINO features and checks the
candidates with SAM on the *image*. Only the region grown from the winner needs iSeg. Until the decoder
is trained, `ProvisionalSeed` stands in for it: the vertices whose DINO feature is close to the clicked
vertex's (cosine above an Otsu threshold over the whole mesh, so it adapts to each mesh's contrast),
restricted to the surface connected to the click, minus what is closer to a negative click's feature.
Every answer built on it is labelled provisional; the client replaces it with the final (iSeg) answer
once the preparation ends. Built around `pipeline.Session` (its `on_dino` hook), not inside it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.iseg.postprocess import connected_region, otsu_threshold
from engine.mesh import Mesh
from engine.pipeline import CancelCheck, PreparedMesh, Progress, Session, mesh_cache_key


class ProvisionalSeed:
    """iSeg's `predict(clicks) -> (V,) probability`, from DINO feature similarity and mesh connectivity.

    The value is a cosine similarity mapped so that the selection threshold lands at 0.5 (what the
    pipeline's `weights >= 0.5` mask expects): selected vertices get [0.5, 1], the rest [0, 0.5).
    """

    def __init__(self, faces: np.ndarray, dino: torch.Tensor) -> None:
        self.faces = np.asarray(faces, dtype=np.int64)
        self.features = F.normalize(torch.as_tensor(dino, dtype=torch.float32), dim=1)

    def predict(self, clicks: list[tuple[int, bool]]) -> np.ndarray:
        positive = [int(v) for v, p in clicks if p]
        negative = [int(v) for v, p in clicks if not p]
        n = len(self.features)
        if not positive:
            return np.zeros(n, np.float32)
        sim = (self.features @ self.features[positive].T).max(dim=1).values.numpy()
        threshold = min(otsu_threshold(sim), float(sim[positive].min()))  # the clicks themselves always qualify
        keep = sim >= threshold
        if negative:
            keep &= sim > (self.features @ self.features[negative].T).max(dim=1).values.numpy()
        keep = connected_region(self.faces, keep, positive)
        above = 0.5 + 0.5 * (sim - threshold) / max(1.0 - threshold, 1e-6)
        below = 0.49 * np.clip((sim + 1.0) / (threshold + 1.0), 0.0, 1.0)
        return np.where(keep, np.clip(above, 0.5, 1.0), np.minimum(below, 0.49)).astype(np.float32)


def provisional_mesh(session: Session, mesh: Mesh, dino: torch.Tensor) -> PreparedMesh:
    """A PreparedMesh that the session's match/refine/shape_to_image accept, answering provisionally."""
    key = mesh_cache_key(mesh, session.models, session.settings)
    empty_sam = torch.zeros(mesh.num_vertices, 0)
    return PreparedMesh(mesh, dino, empty_sam, ProvisionalSeed(mesh.faces, dino), session.settings, key,
                        cached=False, seconds=0.0)


def is_provisional(prepared: PreparedMesh) -> bool:
    """Whether answers on `prepared` come from the DINO field alone (no trained iSeg decoder yet)."""
    return isinstance(prepared.iseg, ProvisionalSeed)


def prepare_early(session: Session, mesh: Mesh, on_provisional: Callable[[PreparedMesh], None],
                  progress: Progress | None = None, cancel: CancelCheck | None = None) -> PreparedMesh:
    """`session.prepare(mesh)`, handing `on_provisional` a clickable provisional mesh as soon as the DINO
    field exists (never on a cache hit: the final mesh is then ready at once)."""
    return session.prepare(mesh, progress, cancel,
                           on_dino=lambda dino: on_provisional(provisional_mesh(session, mesh, dino)))
