"""Best Segmentation Buddies: an image query (click(s) and/or box) -> the corresponding mesh part.

Steps (the paper's): SAM gives the query's object and part masks; the k vertices most similar to the query
feature (the clicked pixel's, as in the paper, plus the mean over SAM's part mask) are candidates; a
candidate is valid when its most similar pixel inside the object mask lies in the part mask; SAM
re-segments every valid candidate's pixel and the one whose part mask best overlaps the query's (IoU) wins
and seeds iSeg. No valid candidate means "no corresponding part" (e.g. a decal).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.bsb import features as ft
from engine.bsb.interfaces import Cancel, MaskChooser, Progress, PromptSegmenter, Seeding
from engine.bsb.prompting import click_masks, default_chooser, iou, query_masks
from engine.bsb.result import Candidate, MatchResult
from engine.errors import BsbError, Cancelled


@dataclass
class Query:
    """A query in the segmenter's (working) frame, with its SAM masks."""

    points: np.ndarray  # (P, 2) float working xy
    labels: np.ndarray  # (P,) int
    box: np.ndarray | None  # (4,) working xyxy
    object_mask: np.ndarray  # (H, W) bool
    part_mask: np.ndarray  # (H, W) bool


@dataclass
class Candidates:
    """The k vertices most similar to the query feature, with their nearest pixels and validity."""

    vertices: np.ndarray  # (k,) int
    similarity: np.ndarray  # (k,) cosine to the query feature
    pixels: np.ndarray  # (k, 2) int working (column, row) of each one's most similar object pixel
    valid: np.ndarray  # (k,) bool: that pixel lies in the part mask


def prepare_query(segmenter: PromptSegmenter, image_size: tuple[int, int], points: object, labels: object,
                  box: object | None, scale: float, choose: MaskChooser) -> Query:
    """Check the prompt, move it to the working frame (x working = x original * scale), segment it."""
    pts = np.asarray(points if points is not None else np.zeros((0, 2)), dtype=np.float64).reshape(-1, 2)
    lab = np.asarray(labels if labels is not None else np.zeros(0), dtype=np.int64).reshape(-1)
    if len(pts) != len(lab):
        raise BsbError(f"{len(pts)} points but {len(lab)} labels; give one label (1 or 0) per point", "bad_request")
    if not np.isin(lab, (0, 1)).all():
        raise BsbError("labels must be 1 (positive) or 0 (negative)", "bad_request")
    if box is None and not (lab == 1).any():
        raise BsbError("a query needs at least one positive point or a box", "bad_request")
    W, H = image_size
    pts = pts * scale
    if len(pts) and ((pts < 0).any() or (pts[:, 0] > W).any() or (pts[:, 1] > H).any()):
        raise BsbError(f"a point lies outside the image ({W / scale:.0f} x {H / scale:.0f} pixels)", "bad_request")
    bx = None if box is None else np.asarray(box, dtype=np.float64).reshape(4) * scale
    if bx is not None and not (bx[2] > bx[0] and bx[3] > bx[1]):
        raise BsbError("the box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0", "bad_request")
    obj, part = query_masks(segmenter, choose, pts, lab, bx)
    ft.check_mask(obj, (W, H), "the segmenter's object mask")
    if not part.any():
        raise BsbError("the segmenter found no part under the query; click inside the object", "bad_request")
    return Query(pts, lab, bx, obj | part, part)


QUERY_POOL_PIXELS = 4096  # part-mask pixels whose features are averaged into the query feature (evenly spaced)


def query_feature(grid: ft.FeatureGrid, query: Query) -> torch.Tensor:
    """The clicks' mean unit feature plus the part's (the mean over SAM's part mask), renormalised; a box
    alone has the part's only.

    Why the part too: one patch feature carries that patch's own noise (a highlight, a texture cell) and
    the k candidates are ranked by it; SAM's part mask says which pixels the click means, and their mean
    averages that noise out while the click keeps its weight. Chosen end to end under oracle teachers
    (bench/correspondence.py --mode e2e; README, "Accuracy and speed"): BSB's final part IoU +0.055 ± 0.026
    over the click alone on 6 meshes held out from the choice, where the part's mean alone gave +0.015.
    """
    rows, cols = np.nonzero(query.part_mask)
    pick = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), QUERY_POOL_PIXELS)).astype(np.int64))
    part = ft.sample(grid, np.stack([cols[pick], rows[pick]], axis=1).astype(np.float64) + 0.5).mean(dim=0)
    part = torch.nn.functional.normalize(part, dim=0)
    pos = query.points[query.labels == 1]
    if len(pos):
        part = part + torch.nn.functional.normalize(ft.sample(grid, pos).mean(dim=0), dim=0)
    return torch.nn.functional.normalize(part, dim=0)


def find_candidates(grid: ft.FeatureGrid, vertex_unit: torch.Tensor, q: torch.Tensor, object_mask: np.ndarray,
                    part_mask: np.ndarray, k: int) -> Candidates:
    """Top-k vertices by cosine to q; each one's most similar pixel in the object; valid if in the part."""
    verts, sims = ft.top_k(q, vertex_unit, k)
    lattice = ft.build_lattice(grid, object_mask)
    best, _ = ft.nearest_rows(vertex_unit[torch.as_tensor(verts, device=vertex_unit.device)], lattice.features)
    pixels = np.array([ft.block_pixel(lattice, lattice.cells[b], object_mask) for b in best],
                      dtype=np.int64).reshape(-1, 2)
    valid = part_mask[pixels[:, 1], pixels[:, 0]]
    return Candidates(verts, sims, pixels, valid)


def rank_by_iou(segmenter: PromptSegmenter, choose: MaskChooser, part_mask: np.ndarray, pixels: np.ndarray,
                box: np.ndarray | None, cancel: Cancel | None = None) -> np.ndarray:
    """IoU of SAM's part mask at each pixel (a positive click at its centre, plus the box) with the query's."""
    ious = np.zeros(len(pixels))
    for s, _, parts, _ in click_masks(segmenter, choose, pixels + 0.5, box, part_mask.shape[::-1], cancel):
        for i, m in enumerate(parts):
            ious[s + i] = iou(m, part_mask)
    return ious


def candidate_ious(segmenter: PromptSegmenter, choose: MaskChooser, query: Query, cands: Candidates,
                   max_prompts: int | None, cancel: Cancel | None = None) -> np.ndarray:
    """IoU per candidate: one prompt per distinct valid pixel; -1 for invalid or not re-segmented ones."""
    ious = np.full(len(cands.vertices), -1.0)
    valid = np.flatnonzero(cands.valid)
    if len(valid) == 0:
        return ious
    pixels, first, inverse = np.unique(cands.pixels[valid], axis=0, return_index=True, return_inverse=True)
    keep = np.argsort(first)[:max_prompts] if max_prompts else np.argsort(first)  # most similar first
    per_pixel = np.full(len(pixels), -1.0)
    per_pixel[keep] = rank_by_iou(segmenter, choose, query.part_mask, pixels[keep], query.box, cancel)
    ious[valid] = per_pixel[inverse.reshape(-1)]
    return ious


def _check_cancel(cancel: Cancel | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled()


def vertex_bank(vertex_features: object, grid: ft.FeatureGrid) -> torch.Tensor:
    """(V, D) unit vertex features on the grid's device; normalise once at prepare time to skip the copy."""
    bank = ft.unit_rows(ft.to_tensor(vertex_features, grid.grid.device))
    if bank.shape[1] != grid.dim:
        raise BsbError(f"vertex features have {bank.shape[1]} dims but the image features {grid.dim}; "
                       "distil the mesh with the same feature model as the image", "bad_array")
    return bank


def seed_result(result: MatchResult, seed: Seeding | None, n_vertices: int) -> None:
    """Fill the per-vertex probability and mask from iSeg seeded at the winner."""
    if seed is None or not result.found or result.winner_vertex is None:
        return
    t = time.perf_counter()
    weights = np.asarray(seed(int(result.winner_vertex)), dtype=np.float32).reshape(-1)
    if weights.shape != (n_vertices,):
        raise BsbError(f"seeding returned {weights.shape[0]} values for {n_vertices} vertices", "internal")
    result.weights, result.vertex_mask = weights, weights >= 0.5
    result.timings["iseg_s"] = time.perf_counter() - t


TIE_SEEDS = 16  # tied candidates (most similar first) whose iSeg part is computed to break a tie


def break_tie(result: MatchResult, cands: Candidates, ious: np.ndarray, seed: Seeding | None, scale: float) -> None:
    """Among the candidates tied at the best IoU, find the iSeg part (seeded at one of them, p >= 0.5) that
    best overlaps the tied candidates (IoU of the two vertex sets), and make the winner the tied candidate
    that part holds most surely (highest p); further ties go to the more similar one.

    Why: when every buddy pixel inside the part re-segments to exactly the query's part (a sharp segmenter,
    a part SAM outlines cleanly), all of them tie at IoU 1 and the argmax falls to the most similar one,
    which is often a vertex on the seam with a neighbouring part (distilled features blur across seams).
    iSeg seeded there selects the neighbour (or both); the part that matches the tied buddies is the
    queried one, and its surest buddy lies inside it, away from the seam. Only `TIE_SEEDS` candidates are
    seeded (each is one decoder pass); the overlap counts every tied one.
    """
    if seed is None or not result.found or result.winner_vertex is None:
        return
    tied = np.flatnonzero(ious == ious.max())
    if len(tied) < 2:
        return
    verts = np.unique(cands.vertices[tied])
    best_overlap, best_weights = -1.0, None
    for v in cands.vertices[tied[:TIE_SEEDS]]:
        weights = np.asarray(seed(int(v)), dtype=np.float32).reshape(-1)
        part = weights >= 0.5
        inside = int(part[verts].sum())
        overlap = inside / (int(part.sum()) + len(verts) - inside)
        if overlap > best_overlap:
            best_overlap, best_weights = overlap, weights
    best = tied[int(np.argmax(best_weights[cands.vertices[tied]]))]
    result.winner_vertex = int(cands.vertices[best])
    result.winner_pixel = original_pixel(cands.pixels[best], scale)


def original_pixel(pixel: np.ndarray, scale: float) -> tuple[float, float]:
    """The centre of working pixel `pixel` (column, row) in the original image frame (x, y)."""
    return (float(pixel[0]) + 0.5) / scale, (float(pixel[1]) + 0.5) / scale


def candidate_list(c: Candidates, scale: float, ious: np.ndarray | None = None) -> list[Candidate]:
    out = []
    for i in range(len(c.vertices)):
        px = original_pixel(c.pixels[i], scale)
        score = None if ious is None or ious[i] < 0 else float(ious[i])
        out.append(Candidate(int(c.vertices[i]), float(c.similarity[i]), px, bool(c.valid[i]), score))
    return out


def match(segmenter: PromptSegmenter, grid: ft.FeatureGrid, vertex_features: object, points: object,
          labels: object, box: object | None = None, *, seed: Seeding | None = None, k: int = 100,
          min_confidence: float | None = None, scale: float = 1.0, max_prompts: int | None = None,
          choose: MaskChooser | None = None, progress: Progress | None = None,
          cancel: Cancel | None = None) -> MatchResult:
    """BSB for one query; points/box in original image pixels, `scale` = working / original.

    `grid` covers the segmenter's working image; `vertex_features` (V, D) are the distilled DINO features
    (pass unit rows to avoid a per-call copy). The confidence is the winner's IoU; below `min_confidence`
    the answer is "no corresponding part". `seed(winner)` (iSeg) fills the per-vertex weights.
    Valid candidates sharing a pixel share one SAM prompt, and the distinct pixels go through SAM's prompt
    decoder in batches. Every valid candidate is ranked, as in the paper (the ranking is what lifts a random
    valid candidate to BSB); `max_prompts` caps the distinct pixels re-segmented to those of the most similar
    candidates (a SAM ViT-B decoder pass costs ~0.1-0.2 s on a CPU: bench/match.py).
    """
    choose = choose or default_chooser()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    bank = vertex_bank(vertex_features, grid)
    query = prepare_query(segmenter, grid.image_size, points, labels, box, scale, choose)
    timings["sam_s"] = time.perf_counter() - t
    if progress:
        progress(0.2, "matching features")
    _check_cancel(cancel)
    t = time.perf_counter()
    cands = find_candidates(grid, bank, query_feature(grid, query), query.object_mask, query.part_mask, k)
    timings["match_s"] = time.perf_counter() - t
    if progress:
        progress(0.5, f"ranking {int(cands.valid.sum())} candidates")
    _check_cancel(cancel)
    t = time.perf_counter()
    ious = candidate_ious(segmenter, choose, query, cands, max_prompts, cancel)
    timings["sam_s"] += time.perf_counter() - t
    result = _decide(cands, ious, query, scale, min_confidence, timings)
    if progress:
        progress(0.8, "segmenting the mesh")
    _check_cancel(cancel)
    break_tie(result, cands, ious, seed, scale)
    seed_result(result, seed, len(bank))
    if progress:
        progress(1.0, "done")
    return result


def _decide(cands: Candidates, ious: np.ndarray, query: Query, scale: float, min_confidence: float | None,
            timings: dict[str, float]) -> MatchResult:
    n_valid = int(cands.valid.sum())
    base = dict(n_candidates=len(cands.vertices), n_valid=n_valid, part_mask=query.part_mask,
                object_mask=query.object_mask, mask_scale=scale, timings=timings,
                candidates=candidate_list(cands, scale, ious))
    if n_valid == 0:
        return MatchResult(False, "no valid candidate: none of the vertices most similar to the click has its "
                           "best pixel inside the clicked part (texture or a part the mesh lacks)",
                           0.0, winner_vertex=None, winner_pixel=None, **base)
    win = int(np.argmax(ious))  # invalid ones are -1; ties go to the more similar (earlier) candidate
    conf = float(ious[win])
    pixel = original_pixel(cands.pixels[win], scale)
    found, reason = True, None
    if min_confidence is not None and conf < min_confidence:
        found, reason = False, f"confidence {conf:.2f} below minimum {min_confidence:g}"
    return MatchResult(found, reason, conf, winner_vertex=int(cands.vertices[win]), winner_pixel=pixel, **base)
