"""Shape -> image: the image region that corresponds to clicked vertices (BSB with the roles swapped).

The query is a shape part S (iSeg's part for the clicked vertices, the analogue of the image's part mask)
and the mean feature of the clicked vertices. The k image pixels most similar to it (inside an optional
object hint) are candidates. Two rules decide among them:
- "paper" (default, the paper's symmetric BSB): a candidate is valid when its most similar vertex lies in
  S; iSeg re-segments each valid candidate's vertex and the one whose part best overlaps S (3D IoU) wins;
  SAM outlines the winner's pixel. The confidence is that 3D IoU.
- "buddies" (the earlier rule, kept as an option): a candidate is valid when one of its `n_buddies` most
  similar vertices lies in S (so that a few outlier vertices elsewhere on the mesh that resemble the image
  more closely cannot veto a true part); SAM segments every valid candidate's pixel and the region that
  holds the most valid candidates wins, with the share of valid candidates inside it as the confidence.
No valid candidate means "no corresponding region" (the part is not visible in the image).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from engine.bsb import features as ft
from engine.bsb.interfaces import Cancel, MaskChooser, Progress, PromptSegmenter, Seeding
from engine.bsb.matching import original_pixel, vertex_bank
from engine.bsb.prompting import chosen_masks, click_masks, default_chooser
from engine.bsb.result import Candidate, MatchResult
from engine.errors import BsbError, Cancelled

RULES = ("paper", "buddies")


def shape_to_image(segmenter: PromptSegmenter, grid: ft.FeatureGrid, vertex_features: object,
                   vertices: Sequence[int], shape_part: np.ndarray, *, seed: Seeding | None = None,
                   rule: str = "paper", object_hint: np.ndarray | None = None, k: int = 100, n_buddies: int = 16,
                   min_confidence: float | None = None, scale: float = 1.0, choose: MaskChooser | None = None,
                   progress: Progress | None = None, cancel: Cancel | None = None) -> MatchResult:
    """The image region for `vertices`; `shape_part` (V,) bool is their part on the mesh (e.g. iSeg >= 0.5).

    `seed(vertex)` is iSeg from one positive click ((V,) probability), needed by the "paper" rule.
    Returns a MatchResult whose `part_mask` is the image region (working resolution, `mask_scale`),
    `winner_pixel` the chosen pixel (original frame), `winner_vertex` that pixel's most similar vertex in S.
    """
    if rule not in RULES:
        raise BsbError(f"unknown shape-to-image rule {rule!r}; use one of {', '.join(RULES)}", "bad_request")
    if rule == "paper" and seed is None:
        raise BsbError("the paper's shape-to-image rule re-segments candidates with iSeg: pass seed=", "internal")
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
    near = torch.topk(sim, min(n_buddies if rule == "buddies" else 1, len(bank)), dim=1).indices.cpu().numpy()
    in_part = part[near]  # (k, m): m = 1 for the paper's rule, the most similar vertex only
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
    if rule == "paper":
        return _by_shape_iou(segmenter, choose, seed, part, buddies, sims, pixels, valid, scale, min_confidence,
                             base, progress, cancel)
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


def _by_shape_iou(segmenter: PromptSegmenter, choose: MaskChooser, seed: Seeding, part: np.ndarray,
                  buddies: np.ndarray, sims: np.ndarray, pixels: np.ndarray, valid: np.ndarray, scale: float,
                  min_confidence: float | None, base: dict, progress: Progress | None,
                  cancel: Cancel | None) -> MatchResult:
    """The paper's ranking: iSeg at each distinct valid candidate's vertex, 3D IoU with S; SAM at the winner."""
    timings = base["timings"]
    t = time.perf_counter()
    scores = np.full(len(buddies), -1.0)
    per_vertex: dict[int, float] = {}
    for i in np.flatnonzero(valid):  # most similar first, so ties go to the more similar pixel
        v = int(buddies[i])
        if v not in per_vertex:
            if cancel is not None and cancel():
                raise Cancelled()
            region = np.asarray(seed(v), dtype=np.float32).reshape(-1) >= 0.5
            region[v] = True
            per_vertex[v] = float(np.count_nonzero(region & part) / np.count_nonzero(region | part))
        scores[i] = per_vertex[v]
    timings["iseg_s"] = time.perf_counter() - t
    win = int(np.argmax(scores))
    conf = float(scores[win])
    t = time.perf_counter()
    obj, region, _ = chosen_masks(segmenter, choose, pixels[win][None, None].astype(np.float64) + 0.5,
                                  np.ones((1, 1), np.int64), None)
    timings["sam_s"] = time.perf_counter() - t
    found, reason = True, None
    if min_confidence is not None and conf < min_confidence:
        found, reason = False, f"confidence {conf:.2f} below minimum {min_confidence:g}"
    if progress:
        progress(1.0, "done")
    return MatchResult(found, reason, conf, winner_vertex=int(buddies[win]),
                       winner_pixel=original_pixel(pixels[win], scale), part_mask=region[0],
                       object_mask=obj[0] | region[0], candidates=_candidates(buddies, sims, pixels, valid, scale, scores),
                       **base)


def _candidates(buddies: np.ndarray, sims: np.ndarray, pixels: np.ndarray, valid: np.ndarray, scale: float,
                scores: np.ndarray | None) -> list[Candidate]:
    return [Candidate(int(buddies[i]), float(sims[i]), original_pixel(pixels[i], scale), bool(valid[i]),
                      None if scores is None or not valid[i] else float(scores[i]))
            for i in range(len(buddies))]
