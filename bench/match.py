"""BSB per-click cost after preparation, and extra memory for a 6000 x 4000 photo.

Per click: SAM ViT-B architecture with RANDOM weights (prompt encoder + mask decoder; the image embedding
is cached, as after `set_image`), a random DINO grid of the CPU profile's size (1024 x 16 x 16), V vertices
with random 1024-d features. The chooser is wrapped so that every candidate is valid, and random features
spread them over distinct pixels, so a click re-segments as many pixels as there are candidates: the
latency is timed against that count (the shipped profiles rank every valid candidate, as the paper; k = 100
is the worst case, a real click has fewer valid, distinct pixels). iSeg seeding is excluded.
Memory: the planted 6000 x 4000 scene (fake segmenter returning full-resolution masks, D = 1024), peak of
tracemalloc (numpy) and of the process RSS (numpy + torch) above the level before the match.
Random weights: timings only, never a result.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.bsb import feature_grid, match  # noqa: E402
from engine.bsb.synthetic import BODY, planted_scene  # noqa: E402
from engine.models.masks import choose_object_part  # noqa: E402
from engine.models.sam import SamSegmenter, build_sam  # noqa: E402
from engine.pipeline import settings_for  # noqa: E402


def all_valid_chooser(masks, scores):
    """The real chooser's work, then part = object = whole image, so every candidate is valid (worst case)."""
    choose_object_part(masks, scores)
    full = np.ones((masks.shape[0], *masks.shape[2:]), bool)
    return full, full.copy(), scores.max(axis=1)


def click_seconds(n_vertices: int, size: tuple[int, int], repeats: int, k: int, max_prompts: int | None) -> dict:
    W, H = size
    rng = np.random.default_rng(0)
    sam = SamSegmenter(build_sam("vit_b"), model_id="vit_b-random", device=torch.device("cpu"))
    sam.set_embedding(torch.randn(256, 64, 64), (H, W))  # the cached embedding of the working image
    grid = feature_grid(torch.randn(1024, 16, 16), (W, H))
    bank = torch.nn.functional.normalize(torch.randn(n_vertices, 1024), dim=1)  # normalised once per mesh
    times, last = [], None
    for i in range(repeats + 1):
        pt = [[float(rng.uniform(0, W)), float(rng.uniform(0, H))]]
        t = time.perf_counter()
        last = match(sam, grid, bank, pt, [1], k=k, choose=all_valid_chooser, max_prompts=max_prompts)
        if i:  # the first call warms up
            times.append(time.perf_counter() - t)
    prompts = sum(c.iou is not None for c in last.candidates)
    return {"seconds": float(np.median(times)), "n_valid": last.n_valid, "timings": last.timings,
            "resegmented": len({c.pixel for c in last.candidates if c.iou is not None}), "prompted": prompts}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def large_image_memory(k: int) -> dict:
    scene = planted_scene(width=6000, height=4000, dim=1024)
    grid = feature_grid(scene.grid, scene.image_size)
    gc.collect()
    peak, stop = [rss_bytes()], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.005)

    before = rss_bytes()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    t = time.perf_counter()
    r = match(scene.segmenter, grid, scene.vertex_features, [scene.click(BODY)], [1], k=k)
    seconds = time.perf_counter() - t
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stop.set()
    sampler.join()
    assert r.found and scene.vertex_part[r.winner_vertex] == BODY
    return {"traced_mib": traced / 2**20, "rss_mib": (peak[0] - before) / 2**20, "seconds": seconds,
            "n_valid": r.n_valid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer vertices and repeats (under 60 s)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    n_vertices = 20_000 if args.quick else 50_000
    cpu = settings_for("cpu")
    counts = (8, 32, cpu.k) if args.quick else (8, 16, 32, 64, cpu.k)
    curve = {k: click_seconds(n_vertices, (1024, 768), repeats=1 if args.quick else 3, k=k,
                              max_prompts=cpu.max_prompts) for k in counts}
    click = curve[cpu.k]
    mem = large_image_memory(k=20 if args.quick else 100)
    rows = [(f"per click, {c['resegmented']} valid pixels re-segmented (ViT-B decoder, random weights)",
             f"V={n_vertices}, 1024x768, k={k}", f"{c['seconds']:.2f} s") for k, c in curve.items()]
    rows += [
        ("  worst case (k valid): SAM / matching", "", f"{click['timings']['sam_s']:.2f} / {click['timings']['match_s']:.2f} s"),
        ("6000x4000 match, extra memory (tracemalloc)", f"fake SAM, D=1024, k={20 if args.quick else 100}",
         f"{mem['traced_mib']:.0f} MiB"),
        ("6000x4000 match, extra memory (RSS)", f"{mem['n_valid']} re-segmented", f"{mem['rss_mib']:.0f} MiB"),
        ("6000x4000 match, seconds", "", f"{mem['seconds']:.1f} s"),
    ]
    for name, setup, value in rows:
        print(f"{name:<70} {setup:<28} {value:>10}")
    print(json.dumps({"match_click_s_cpu": round(click["seconds"], 3),
                      "click_s_by_prompts": {c["resegmented"]: round(c["seconds"], 3) for c in curve.values()},
                      "max_prompts_cpu": cpu.max_prompts,
                      "match_extra_mib_6000x4000": round(max(mem["traced_mib"], mem["rss_mib"]), 1),
                      "n_vertices": n_vertices, "random_weights": True, "iseg_included": False}))


if __name__ == "__main__":
    main()
