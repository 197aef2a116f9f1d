"""Distillation cost with the paper's DINO field (2048-d encoding, 6 x 1024, 1024 out) on 50k and 1M vertices.

Each case runs in its own subprocess so its peak RSS (ru_maxrss: torch allocations included, which
tracemalloc would miss) belongs to that case alone. The teacher is not timed: the targets are random
(B,1024,h,w) maps, which cost the same to fit as real ones. A full run trains the default schedule
(3 epochs over the views) and evaluates every vertex; `--quick` trains a few steps and evaluates a
16,384-vertex sample, extrapolating the vertex evaluation (marked "est." in the table).

    .venv/bin/python bench/distill.py [--quick] [--views 100] [--res 224] [--grid 16] [--device cpu]

The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASES = {"50k": (250, 200), "1m": (1000, 1000)}  # torus grid (around, across) -> vertex count
QUICK_STEPS = 3
QUICK_EVAL_VERTICES = 16384


def bumpy_torus(n_around: int, n_across: int):
    """A closed bumpy torus with n_around * n_across vertices, inside the unit sphere."""
    import numpy as np

    u = np.linspace(0, 2 * np.pi, n_around, endpoint=False)[:, None]
    v = np.linspace(0, 2 * np.pi, n_across, endpoint=False)[None, :]
    tube = 0.3 * (1 + 0.15 * np.sin(7 * u) * np.sin(5 * v))
    x = (0.7 + tube * np.cos(v)) * np.cos(u)
    z = (0.7 + tube * np.cos(v)) * np.sin(u)
    y = tube * np.sin(v) * np.ones_like(u)
    vertices = np.stack([x, y, z], -1).reshape(-1, 3)
    vertices /= np.linalg.norm(vertices, axis=1).max()
    i, j = np.meshgrid(np.arange(n_around), np.arange(n_across), indexing="ij")
    a = i * n_across + j
    b = ((i + 1) % n_around) * n_across + j
    c = ((i + 1) % n_around) * n_across + (j + 1) % n_across
    d = i * n_across + (j + 1) % n_across
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return vertices.astype(np.float32), faces.astype(np.int32)


def run_case(case: str, args: argparse.Namespace) -> dict:
    """One case in this process: rasterize, train, evaluate; timings and peak memory."""
    import torch

    from engine.cameras import sphere_views
    from engine.distill import DistillConfig, train_field
    from engine.field import FieldConfig, evaluate_vertices
    from engine.raster import rasterize

    vertices, faces = bumpy_torus(*CASES[case])
    field_config = FieldConfig.paper_dino()
    config = DistillConfig(steps=QUICK_STEPS if args.quick else None)
    steps = config.total_steps(args.views)

    t0 = time.perf_counter()
    raster = rasterize(vertices, faces, sphere_views(args.views, "uniform", seed=0), args.res)
    raster_s = time.perf_counter() - t0
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(args.views, field_config.out_dim, args.grid, args.grid, generator=generator)

    marks: dict[str, float] = {}

    def progress(fraction: float, message: str) -> None:
        if message.startswith("distilling:") and "train" not in marks:
            marks["train"] = time.perf_counter()

    t0 = time.perf_counter()
    field = train_field(vertices, faces, raster, targets, field_config, config, args.device, progress)
    t1 = time.perf_counter()
    prepare_s = marks["train"] - t0
    step_s = (t1 - marks["train"]) / steps

    sample = vertices if not args.quick else vertices[:QUICK_EVAL_VERTICES]
    t0 = time.perf_counter()
    evaluate_vertices(field, sample, chunk=config.eval_chunk, device=args.device)
    eval_s = (time.perf_counter() - t0) * len(vertices) / len(sample)
    return {
        "case": case,
        "vertices": len(vertices),
        "faces": len(faces),
        "steps": steps,
        "raster_s": raster_s,
        "prepare_s": prepare_s,
        "step_s": step_s,
        "eval_s": eval_s,
        "eval_estimated": bool(args.quick),
        "total_s": prepare_s + step_s * DistillConfig().total_steps(args.views) + eval_s,
        "full_steps": DistillConfig().total_steps(args.views),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps and a sampled vertex evaluation")
    parser.add_argument("--views", type=int, default=100)
    parser.add_argument("--res", type=int, default=224, help="render resolution (DINOv2 input size)")
    parser.add_argument("--grid", type=int, default=16, help="teacher grid: 16 (DINOv2 @224) or 64 (SAM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()

    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    results = []
    for case in CASES:
        command = [sys.executable, __file__, "--case", case, "--views", str(args.views), "--res", str(args.res),
                   "--grid", str(args.grid), "--device", args.device] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"distillation, paper DINO field, {args.views} views at {args.res}px, {args.grid}x{args.grid} targets, "
          f"device {args.device}, {results[0]['threads']} threads" + (" (quick)" if args.quick else ""))
    print(f"{'case':>5} {'verts':>9} {'faces':>9} {'raster s':>9} {'prep s':>7} {'s/step':>7} {'steps':>6} "
          f"{'eval s':>10} {'total s':>9} {'peak MiB':>9}")
    for r in results:
        eval_text = f"{r['eval_s']:.1f}" + (" est." if r["eval_estimated"] else "")
        print(f"{r['case']:>5} {r['vertices']:>9} {r['faces']:>9} {r['raster_s']:>9.2f} {r['prepare_s']:>7.2f} "
              f"{r['step_s']:>7.3f} {r['steps']:>6} {eval_text:>10} {r['total_s']:>9.1f} {r['peak_mib']:>9.0f}")
    print(f"total s = prepare + s/step x {results[0]['full_steps']} (default schedule: 3 epochs) + vertex evaluation")
    by_case = {r["case"]: r for r in results}
    print(json.dumps({
        "distill_step_s_50k": round(by_case["50k"]["step_s"], 4),
        "distill_step_s_1m": round(by_case["1m"]["step_s"], 4),
        "distill_peak_mib_1m": round(by_case["1m"]["peak_mib"], 1),
        "distill_total_s_50k": round(by_case["50k"]["total_s"], 2),
        "distill_total_s_1m": round(by_case["1m"]["total_s"], 2),
        "views": args.views,
        "grid": args.grid,
        "quick": bool(args.quick),
    }))


if __name__ == "__main__":
    main()
