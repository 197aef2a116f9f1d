"""Shape -> image: the image region that corresponds to clicked vertices (BSB with the roles swapped).

The query is a shape part S (iSeg's mask for the clicked vertices, the analogue of the part mask) and the
mean feature of the clicked vertices. The k image pixels most similar to it (inside an optional object hint)
are candidates; a candidate is valid when one of its `n_buddies` most similar vertices lies in S (the
symmetric buddy test, relaxed to a few vertices so that a handful of outlier vertices elsewhere on the mesh
that happen to resemble the image more closely cannot veto a true part). SAM
segments every valid candidate's pixel; the winner is the region that holds the most valid candidates, and
the confidence is the share of the candidates inside that region that are valid (1 when every image pixel
there that resembles the part maps back to it).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from engine.bsb import features as ft
from engine.bsb.interfaces import Cancel, MaskChooser, Progress, PromptSegmenter
from engine.bsb.matching import original_pixel, vertex_bank
from engine.bsb.prompting import click_masks, default_chooser
from engine.bsb.result import Candidate, MatchResult
from engine.errors import BsbError


def shape_to_image(segmenter: PromptSegmenter, grid: ft.FeatureGrid, vertex_features: object,
                   vertices: Sequence[int], shape_part: np.ndarray, *, object_hint: np.ndarray | None = None,
                   k: int = 100, n_buddies: int = 16, min_confidence: float | None = None, scale: float = 1.0,
                   choose: MaskChooser | None = None, progress: Progress | None = None,
                   cancel: Cancel | None = None) -> MatchResult:
    """The image region for `vertices`; `shape_part` (V,) bool is their part on the mesh (e.g. iSeg >= 0.5).

    Returns a MatchResult whose `part_mask` is the image region (working resolution, `mask_scale`),
    `winner_pixel` the chosen pixel (original frame), `winner_vertex` that pixel's most similar vertex in S.
    """
    choose = choose or default_chooser()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    bank = vertex_bank(vertex_features, grid)
    verts = np.asarray(vertices, dtype=np.int64).reshape(-1)
    part = np.asarray(shape_part, dtype=bool).reshape(-1)
    if len(verts) == 0 or verts.min() < 0 or verts.max() >= len(bank):
        raise BsbError(f"vertices must be indices in [0, {len(bank)}); got {verts.tolist()[:5]}", "bad_request")
    if part.shape != (len(bank),):
        raise BsbError(f"shape_part must have one value per vertex ({len(bank)}), got {part.shape[0]}", "bad_array")
    part = part.copy()
    part[verts] = True
    q = torch.nn.functional.normalize(bank[torch.as_tensor(verts, device=bank.device)].mean(dim=0), dim=0)
    lattice = ft.build_lattice(grid, object_hint)
    cells, sims = ft.top_k(q, lattice.features, k)
    pixels = np.array([ft.block_pixel(lattice, lattice.cells[c], object_hint) for c in cells],
                      dtype=np.int64).reshape(-1, 2)
    sim = lattice.features[torch.as_tensor(cells, device=bank.device)] @ bank.T
    near = torch.topk(sim, min(n_buddies, len(bank)), dim=1).indices.cpu().numpy()  # (k, m) best first
    in_part = part[near]
    valid = in_part.any(axis=1)
    buddies = near[np.arange(len(near)), in_part.argmax(axis=1)]  # best vertex in S, else the best one
    timings["match_s"] = time.perf_counter() - t
    if progress:
        progress(0.4, f"segmenting {int(valid.sum())} image candidates")
    base = dict(n_candidates=len(cells), n_valid=int(valid.sum()), mask_scale=scale, timings=timings)
    if not valid.any():
        cand = _candidates(buddies, sims, pixels, valid, scale, None)
        return MatchResult(False, "no valid candidate: no image pixel resembling the clicked part maps back to "
                           "it (the part is not visible in the image)", 0.0, winner_vertex=None, winner_pixel=None,
                           part_mask=None, object_mask=None, candidates=cand, **base)
    t = time.perf_counter()
    idx = np.flatnonzero(valid)
    best = (-1, -1.0, None, None, -1)  # (valid count, precision, part, object, candidate)
    scores = np.zeros(len(cells))
    for s, objs, parts, _ in click_masks(segmenter, choose, pixels[idx] + 0.5, None, grid.image_size, cancel):
        for j, (o, m) in enumerate(zip(objs, parts)):
            inside = m[pixels[:, 1], pixels[:, 0]]
            n_in, n_ok = int(inside.sum()), int((inside & valid).sum())
            precision = n_ok / max(1, n_in)
            scores[idx[s + j]] = precision
            if (n_ok, precision) > best[:2]:
                best = (n_ok, precision, m, o | m, idx[s + j])
    timings["sam_s"] = time.perf_counter() - t
    _, conf, region, obj, win = best
    pixel = original_pixel(pixels[win], scale)
    found, reason = True, None
    if min_confidence is not None and conf < min_confidence:
        found, reason = False, f"confidence {conf:.2f} below minimum {min_confidence:g}"
    if progress:
        progress(1.0, "done")
    return MatchResult(found, reason, float(conf), winner_vertex=int(buddies[win]), winner_pixel=pixel,
                       part_mask=region, object_mask=obj, candidates=_candidates(buddies, sims, pixels, valid, scale, scores), **base)


def _candidates(buddies: np.ndarray, sims: np.ndarray, pixels: np.ndarray, valid: np.ndarray, scale: float,
                scores: np.ndarray | None) -> list[Candidate]:
    return [Candidate(int(buddies[i]), float(sims[i]), original_pixel(pixels[i], scale), bool(valid[i]),
                      None if scores is None or not valid[i] else float(scores[i]))
            for i in range(len(buddies))]
