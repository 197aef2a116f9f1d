"""The paper's evaluation baselines, with the same inputs and outputs as `match`.

- `nearest_vertex`: the single vertex most similar to the query feature (no segment test, no ranking).
- `random_valid_candidate`: a random valid candidate (segment test, but no IoU ranking).
Their `confidence` is the winner's cosine similarity (they compute no IoU); iSeg seeding is the same.
"""

from __future__ import annotations

import time

import numpy as np

from engine.bsb import features as ft
from engine.bsb.interfaces import MaskChooser, PromptSegmenter, Seeding
from engine.bsb.matching import (Candidates, candidate_list, find_candidates, original_pixel, prepare_query,
                                 query_feature, seed_result, vertex_bank)
from engine.bsb.prompting import default_chooser
from engine.bsb.result import MatchResult


def _setup(segmenter, grid, vertex_features, points, labels, box, scale, choose, k):
    t = time.perf_counter()
    bank = vertex_bank(vertex_features, grid)
    query = prepare_query(segmenter, grid.image_size, points, labels, box, scale, choose or default_chooser())
    timings = {"sam_s": time.perf_counter() - t}
    t = time.perf_counter()
    cands = find_candidates(grid, bank, query_feature(grid, query), query.object_mask, query.part_mask, k)
    timings["match_s"] = time.perf_counter() - t
    return bank, query, cands, timings


def _result(query, cands: Candidates, win: int | None, scale: float, timings: dict, reason: str | None) -> MatchResult:
    pixel = None if win is None else original_pixel(cands.pixels[win], scale)
    return MatchResult(win is not None, reason, 0.0 if win is None else float(cands.similarity[win]),
                       len(cands.vertices), int(cands.valid.sum()), None if win is None else int(cands.vertices[win]),
                       pixel, query.part_mask, query.object_mask, scale, candidate_list(cands, scale),
                       timings=timings)


def nearest_vertex(segmenter: PromptSegmenter, grid: ft.FeatureGrid, vertex_features: object, points: object,
                   labels: object, box: object | None = None, *, seed: Seeding | None = None, k: int = 100,
                   scale: float = 1.0, choose: MaskChooser | None = None) -> MatchResult:
    """The vertex whose feature is most similar to the click's; always 'found'."""
    bank, query, cands, timings = _setup(segmenter, grid, vertex_features, points, labels, box, scale, choose, k)
    result = _result(query, cands, 0, scale, timings, None)
    seed_result(result, seed, len(bank))
    return result


def random_valid_candidate(segmenter: PromptSegmenter, grid: ft.FeatureGrid, vertex_features: object,
                           points: object, labels: object, box: object | None = None, *,
                           seed: Seeding | None = None, k: int = 100, scale: float = 1.0,
                           choose: MaskChooser | None = None, rng: np.random.Generator | None = None) -> MatchResult:
    """A uniformly random valid candidate; 'no corresponding part' when none is valid, like BSB."""
    bank, query, cands, timings = _setup(segmenter, grid, vertex_features, points, labels, box, scale, choose, k)
    valid = np.flatnonzero(cands.valid)
    if len(valid) == 0:
        return _result(query, cands, None, scale, timings, "no valid candidate")
    result = _result(query, cands, int((rng or np.random.default_rng(0)).choice(valid)), scale, timings, None)
    seed_result(result, seed, len(bank))
    return result
