"""A 6000 x 4000 photo matches without a full-resolution feature image (< 2 GiB extra)."""

from __future__ import annotations

import gc
import tracemalloc

from engine.bsb import feature_grid, match
from engine.bsb.synthetic import BODY, DECAL, planted_scene


def test_large_image_matches_within_memory_bound():
    scene = planted_scene(width=6000, height=4000)
    grid = feature_grid(scene.grid, scene.image_size)  # the coarse 24 x 32 grid, as DINO gives it
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        r = match(scene.segmenter, grid, scene.vertex_features, [scene.click(BODY)], [1], k=24, seed=scene.seed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.found and scene.vertex_part[r.winner_vertex] == BODY
    assert scene.label_at(r.winner_pixel) == BODY
    assert r.part_mask.shape == (4000, 6000)
    # full-resolution features would be 6000*4000*64*4 bytes = 6.1 GB here (24 GB at D = 1024)
    assert peak - base < 2 * 2**30, f"{(peak - base) / 2**20:.0f} MiB"
    decal = match(scene.segmenter, grid, scene.vertex_features, [scene.click(DECAL)], [1], k=24)
    assert not decal.found
