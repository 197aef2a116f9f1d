"""Batch throughput on Ray: meshes per hour, scheduling overhead per asset, and a projected GPU rate.

A "mesh" here is one asset of a typical job: prepare the mesh (not cached) and answer one image click on
a rendered reference image, all through `python -m engine batch`'s runner on a local Ray.
- tiny profile (random weights): `batch_meshes_per_hour_tiny` on the PSB meshes, measured.
- cpu profile: its weights cannot be downloaded here, so the actors build the REAL architectures
  (DINOv2-B/14 with registers, SAM ViT-B) with RANDOM weights (bench/prepare.py's models; cost does not
  depend on weight values): `batch_meshes_per_hour_cpu` is a timing, the answers are meaningless.
  `--quick` runs it on `--cpu-meshes` (default 1) meshes instead of all of them.
- overhead: the same click job with every preparation cached, (a) through the batch runner and (b) as
  `python -m engine match` in a loop; per asset, wall time minus the in-actor work of the same tasks.
- GPU: a PROJECTION, not a measurement (no GPU here): the cpu run's measured per-stage seconds with the
  model stages divided by the FLOP-throughput ratio of a laptop-class GPU to this VM (research memo
  cpu_render_models.md: ~10 TFLOP/s effective vs ~0.2 TFLOP/s), CPU stages unchanged, one actor per GPU.
The machine is shared: numbers are noisy; the load average is printed. Ray workers run at niceness 0
here (Ray's default niceness would hand this job's CPU to the other users of the machine).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = str(ROOT / "bench")
sys.path.insert(0, str(ROOT))

from engine.batch.job import load_job  # noqa: E402
from engine.batch.runner import BatchOptions, run_batch  # noqa: E402

DATA = ROOT.parent / "shared" / "eval" / "data" / "psb"
# PSB meshes the tiny profile's 56-pixel DINO views can cover (thin shapes such as glasses cannot).
MESHES = ("cup/22", "cup/23", "cup/24", "vase/367", "vase/368", "vase/374", "teddy/161", "teddy/162",
          "teddy/174", "bust/316", "fourleg/382", "armadillo/284")
GPU_SPEEDUP = 10.0 / 0.2  # laptop GPU (~10 TFLOP/s effective) over this VM (~0.2 TFLOP/s fp32 on ViTs)
MODEL_STAGES = ("prepare", "set_image", "match")  # the rest (load_mesh, write) stays on the CPU


def random_cpu_session(options: dict):
    """Session factory run inside each actor: the cpu profile with random weights of the real architectures."""
    sys.path.insert(0, BENCH)
    from prepare import patched, random_models

    import engine.models.store
    from engine.pipeline import Session

    session = Session(profile="cpu", device="cpu", models_dir=options.get("models"), cache_dir=options.get("cache"),
                      offline=True)
    models = random_models("cpu")
    with patched(engine.models.store, "load_profile_models", lambda *a, **k: (models.dino, models.sam)):
        assert session.models.random_weights
    return session


def make_job(folder: Path, meshes: list[str], tag: str) -> Path:
    """One match per mesh on a rendered reference view, clicked at the median object pixel."""
    from engine.mesh import load_mesh
    from engine.pipeline import render_views
    from engine.preview import save_png

    lines = []
    for name in meshes:
        path = DATA / f"{name}.off"
        _, raster, renders = render_views(load_mesh(path), 1, 128, "uniform")
        image = folder / f"{name.replace('/', '_')}.png"
        save_png(image, renders[0])
        ys, xs = np.nonzero(raster.face_id[0] >= 0)
        lines.append({"id": f"{name.replace('/', '_')}-{tag}", "mesh": str(path), "task": "match",
                      "image": str(image), "pixels": [[float(np.median(xs)) + 0.5, float(np.median(ys)) + 0.5]]})
    job = folder / f"job-{tag}.jsonl"
    job.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return job


def run(job: Path, out: Path, profile: str, folder: Path, **extra):
    options = BatchOptions(out_dir=out, profile=profile, device="cpu", models=folder / "models",
                           cache=folder / f"cache-{profile}", offline=True, show_progress=False, **extra)
    start = time.perf_counter()
    report = run_batch(load_job(job), options)
    return report, time.perf_counter() - start


def stage_means(records: list[dict]) -> dict[str, float]:
    done = [r for r in records if r["status"] == "done"]
    stages = ("load_mesh", "models", "prepare", "set_image", "match", "write", "total")
    return {s: float(np.mean([r["timings"].get(s, 0.0) for r in done])) if done else 0.0 for s in stages}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="cpu profile on --cpu-meshes meshes only")
    ap.add_argument("--cpu-meshes", type=int, default=1)
    ap.add_argument("--meshes", type=int, default=len(MESHES))
    ap.add_argument("--skip-cpu", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    meshes = list(MESHES[: args.meshes])
    result: dict = {"random_weights": True, "threads": 2, "meshes": len(meshes), "quick": args.quick}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        result["ray_start_s"] = round(time.perf_counter() - start, 2)
        try:
            # tiny: prepare + click per mesh, nothing cached
            report, wall = run(make_job(folder, meshes, "tiny"), folder / "out-tiny", "tiny", folder)
            done = [r for r in report.records if r["status"] == "done"]
            result["batch_meshes_per_hour_tiny"] = round(3600 * len(done) / wall, 1)
            result["tiny_done"], result["tiny_failed"] = len(done), len(report.failed)
            rows.append(("tiny", len(done), len(report.failed), wall, stage_means(report.records)))

            # overhead: the same clicks again with cached preparations, through the runner ...
            click_job = make_job(folder, meshes, "click")
            report, wall = run(click_job, folder / "out-click", "tiny", folder)
            work = sum(r["timings"]["total"] for r in report.records)
            n = len(report.records)
            result["batch_overhead_s_per_asset"] = round((wall - work) / n, 3)
            result["batch_click_wall_s"] = round(wall, 2)
            # ... and through the CLI, one process per asset
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            start = time.perf_counter()
            for line in map(json.loads, click_job.read_text().splitlines()):
                subprocess.run([sys.executable, "-m", "engine", "match", line["mesh"], line["image"], "--pixel",
                                *map(str, line["pixels"][0]), "--out", str(folder / "cli" / f"{line['id']}.npz"),
                                "--profile", "tiny", "--device", "cpu", "--models", str(folder / "models"),
                                "--cache", str(folder / "cache-tiny"), "--offline"],
                               env=env, capture_output=True, check=False)
            cli_wall = time.perf_counter() - start
            result["cli_loop_wall_s"] = round(cli_wall, 2)
            result["cli_overhead_s_per_asset"] = round((cli_wall - work) / n, 3)

            if not args.skip_cpu:
                cpu_meshes = meshes[: args.cpu_meshes] if args.quick else meshes
                report, wall = run(make_job(folder, cpu_meshes, "cpu"), folder / "out-cpu", "cpu", folder,
                                   session_factory=random_cpu_session)
                done = [r for r in report.records if r["status"] == "done"]
                result["batch_meshes_per_hour_cpu"] = round(3600 * len(done) / wall, 2)
                result["cpu_meshes"], result["cpu_failed"] = len(done), len(report.failed)
                means = stage_means(report.records)
                rows.append(("cpu", len(done), len(report.failed), wall, means))
                # PROJECTION: model stages on one laptop-class GPU, CPU stages as measured
                gpu_s = sum(means[s] / GPU_SPEEDUP if s in MODEL_STAGES else means[s]
                            for s in ("load_mesh", "prepare", "set_image", "match", "write"))
                result["projected_gpu_meshes_per_hour_per_gpu"] = round(3600 / gpu_s, 0)
                result["projected_gpu_s_per_mesh"] = round(gpu_s, 2)
        finally:
            ray.shutdown()
    result["loadavg_1min"] = round(os.getloadavg()[0], 1)

    print(f"RANDOM WEIGHTS (timing only), 2-core shared VM, load {result['loadavg_1min']}; Ray start "
          f"{result['ray_start_s']} s (not in the rates)")
    stages = ("load_mesh", "models", "prepare", "set_image", "match", "write", "total")
    print(f"{'profile':8s}{'done':>5s}{'fail':>5s}{'wall s':>9s}{'mesh/h':>8s}" + "".join(f"{s:>10s}" for s in stages))
    for name, n_done, n_failed, wall, means in rows:
        print(f"{name:8s}{n_done:5d}{n_failed:5d}{wall:9.1f}{3600 * n_done / wall:8.1f}"
              + "".join(f"{means[s]:10.2f}" for s in stages))
    print(f"overhead per asset (cached preparations, {len(meshes)} clicks): batch "
          f"{result['batch_overhead_s_per_asset']:.2f} s vs CLI loop {result['cli_overhead_s_per_asset']:.2f} s")
    if "projected_gpu_meshes_per_hour_per_gpu" in result:
        print(f"PROJECTION (not measured): cpu-profile settings with model stages {GPU_SPEEDUP:.0f}x faster on a "
              f"laptop-class GPU: {result['projected_gpu_s_per_mesh']} s/mesh, "
              f"~{result['projected_gpu_meshes_per_hour_per_gpu']:.0f} meshes/hour per GPU (one actor per GPU)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
