"""Quality vs seconds of the per-mesh preparation: the curves the `cpu` profile's settings are chosen from.

Quality comes from ORACLE teachers on labelled PSB meshes, run through the real code (engine.distill,
engine.iseg.train_iseg, engine.iseg.postprocess):
- Feature fields. The teacher is planted: every vertex carries its ground-truth part's direction plus noise
  and outliers (engine.evaluation.oracle.PlantedSpace), rendered into the pipeline's views, pooled onto the
  real teacher grid (SAM: 64 x 64 cells over the render, DINOv2: 16 x 16 at 224 px) and mapped linearly to
  the real channel count (SAM 256, DINOv2-B 768) so a step costs what it costs in the pipeline. Quality:
  R^2 of the distilled field rendered into 6 HELD-OUT views (not the training views) against the teacher
  there, over well-covered cells, and the mean cosine of the distilled vertex features vs the planted ones.
- iSeg. The view segmenter answers from rendered human labels (OracleViewSegmenter) on the SAM views; the
  decoder learns on the SAM field distilled from the planted teacher. Quality: IoU of the selection after
  ONE positive click on random interior vertices, against the clicked vertex's part.
Seconds, for this CPU: the teachers' per-view cost (SAM ViT-B image encoder, DINOv2-B/14 at 224; defaults
from bench/models.py on this VM, `--measure-encoders` times them here with random weights of the real
architectures) x views + SAM prompt-decoder seconds (timed here, random ViT-B weights) x prompts the iSeg
data stage issues + the measured CPU seconds / threads of rendering, distillation and decoder training.
The machine is shared, so seconds are noisy. Prints the curve tables, then one JSON line.
`--quick`: one mesh, few settings (~15 min of CPU on 2 cores). Full: three meshes, the whole grid.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.cameras import sphere_views  # noqa: E402
from engine.distill import DistillConfig, distill  # noqa: E402
from engine.evaluation.data import LabelledMesh, load_labelled  # noqa: E402
from engine.evaluation.oracle import PlantedSpace  # noqa: E402
from engine.interp import interpolate, pool_images, pool_views  # noqa: E402
from engine.iseg import ISegConfig, OracleViewSegmenter, train_iseg  # noqa: E402
from engine.iseg.evaluate import interior_vertices, single_click_ious, vertex_labels  # noqa: E402
from engine.pipeline import PrepareSettings, _field_config, settings_for  # noqa: E402
from engine.raster import rasterize  # noqa: E402

QUICK_MESHES = ("fourleg/382",)
FULL_MESHES = ("fourleg/382", "chair/101", "airplane/61")
SAM_GRID, DINO_GRID, SAM_DIM, DINO_DIM = 64, 16, 256, 768
HELD_OUT_VIEWS, HELD_OUT_SIZE = 6, 128
SAM_VIEW_S, DINO_VIEW_S = 15.0, 0.3  # this VM, 2 threads: SAM ViT-B encoder at 1024 px, DINOv2-B at 224 px


class CpuClock:
    """Process CPU seconds / threads: closer to a quiet machine's wall time than wall time on a shared one."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    @contextmanager
    def __call__(self, out: dict, key: str):
        c = time.process_time()
        try:
            yield
        finally:
            out[key] = out.get(key, 0.0) + (time.process_time() - c) / self.threads


def views(lm: LabelledMesh, n: int, size: int, offset: bool = False):
    """Uniform (Fibonacci) views, as the pipeline renders; `offset`: a rotated set for held-out checks."""
    cams = sphere_views(n, "uniform")
    if offset:  # held-out views: the Fibonacci set of another count, so no camera coincides with training
        cams = sphere_views(n + 1, "uniform")[1:]
    return rasterize(lm.mesh.vertices, lm.mesh.faces, cams, size)


class Teacher:
    """The planted oracle teacher of one mesh: per-vertex features, rendered and pooled like a 2D model's."""

    def __init__(self, lm: LabelledMesh, out_dim: int, seed: int = 0) -> None:
        self.lm = lm
        self.planted = torch.from_numpy(PlantedSpace(lm.n_parts, seed=seed).vertex_features(lm, seed))
        g = torch.Generator().manual_seed(seed + 1)
        self.project = torch.randn(self.planted.shape[1], out_dim, generator=g) / math.sqrt(self.planted.shape[1])
        self.vertex = self.planted @ self.project  # (V, D): what a perfect field would hold

    def __call__(self, raster, grid: int) -> torch.Tensor:
        """(B, D, grid, grid): the planted features rendered into each view and pooled onto the teacher grid."""
        pooled = render_pooled(self.planted, self.lm.mesh.faces, raster, grid)  # (B, 32, g, g)
        return torch.einsum("bchw,cd->bdhw", pooled, self.project)


def render_pooled(features: torch.Tensor, faces, raster, grid: int) -> torch.Tensor:
    """Per-vertex features rendered into each view and averaged onto a grid x grid grid, one view at a time."""
    face_id = torch.as_tensor(np.asarray(raster.face_id)).long()
    bary = torch.as_tensor(np.asarray(raster.bary)).float()
    pools = pool_views(face_id, (grid, grid))
    out = [pool_images([pool], interpolate(features, faces, face_id[b:b + 1], bary[b:b + 1]))
           for b, pool in enumerate(pools)]
    return torch.cat(out)


def held_out_r2(vertex_features: torch.Tensor, teacher_vertex: torch.Tensor, faces, raster, grid: int) -> float:
    """R^2 of the field vs the teacher, both rendered into held-out views and pooled, over well-covered cells."""
    pred = render_pooled(vertex_features, faces, raster, grid)
    true = render_pooled(teacher_vertex, faces, raster, grid)
    cover = torch.stack([p.coverage.reshape(grid, grid) >= 0.5
                         for p in pool_views(torch.as_tensor(np.asarray(raster.face_id)).long(), (grid, grid))])
    p = pred.permute(0, 2, 3, 1)[cover]
    t = true.permute(0, 2, 3, 1)[cover]
    return float(1.0 - ((p - t) ** 2).sum() / ((t - t.mean(0)) ** 2).sum())


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def field_curve(lm: LabelledMesh, teacher: Teacher, held_out, settings: PrepareSettings, kind: str, n_views: int,
                checkpoints: tuple[int, ...], clock: CpuClock) -> list[dict]:
    """Distil one field (kind 'sam' or 'dino') from `n_views` uniform views; quality and seconds at each
    checkpoint step of the same run (the evaluation's own seconds are not counted)."""
    from engine.distill import train_field
    from engine.field import evaluate_vertices

    size, grid = (settings.sam_size, SAM_GRID) if kind == "sam" else (settings.dino_size, DINO_GRID)
    sec: dict = {}
    with clock(sec, "render"):
        raster = views(lm, n_views, size)
    targets = teacher(raster, grid)
    config = _field_config(settings, targets.shape[1])
    points: list[dict] = []

    def on_step(step: int, field) -> None:
        if step not in checkpoints:
            return
        with clock(sec, "eval"):
            features = evaluate_vertices(field, lm.mesh.vertices)
            field.train()
            points.append({"kind": kind, "views": n_views, "steps": step, "features": features, "raster": raster,
                           "r2": held_out_r2(features, teacher.vertex, lm.mesh.faces, held_out, grid),
                           "cosine": mean_cosine(features, teacher.vertex)})
        points[-1]["distill_s"] = time.process_time() / clock.threads - sec["start"] - sec["eval"]
        points[-1]["render_s"] = sec["render"]

    sec["eval"] = 0.0
    sec["start"] = time.process_time() / clock.threads
    train_field(lm.mesh.vertices, lm.mesh.faces, raster, targets, config,
                DistillConfig(steps=max(checkpoints), points_per_view=settings.points_per_view), on_step=on_step)
    return points


class CountingSegmenter(OracleViewSegmenter):
    """The oracle view segmenter, counting the prompts a SAM segmenter would decode."""

    prompts = 0

    def segment_views(self, view_ids, points, labels):
        self.prompts += len(view_ids)
        return super().segment_views(view_ids, points, labels)


def iseg_point(lm: LabelledMesh, field: dict, iseg: dict, clicks: np.ndarray, clock: CpuClock) -> dict:
    """Train iSeg on the field's views with the oracle segmenter; single-click IoU and seconds."""
    segmenter = CountingSegmenter(lm.face_labels, field["raster"])
    sec: dict = {}
    with clock(sec, "iseg"):
        model = train_iseg(lm.mesh.vertices, lm.mesh.faces, field["raster"], field["features"], segmenter,
                           ISegConfig(**iseg))
    labels = vertex_labels(lm.mesh.faces, lm.face_labels, lm.mesh.num_vertices)
    ious = single_click_ious(model, lm.mesh.faces, labels, clicks)
    return {"iou": float(ious.mean()), "iou_se": float(ious.std(ddof=1) / math.sqrt(len(ious))),
            "prompts": segmenter.prompts, "iseg_s": sec["iseg"]}


def sam_prompt_s(threads: int) -> float:
    """CPU seconds / threads of one SAM ViT-B prompt-decoder pass on a 256 px render (batch of 16)."""
    from engine.models.sam import SAM_SPECS, SamSegmenter, build_sam

    spec = replace(SAM_SPECS["vit_b"], depth=0, global_attn=())  # the decoder is the same without encoder blocks
    sam = SamSegmenter(build_sam(spec), "random", torch.device("cpu"), random_weights=True)
    sam.set_embedding(torch.randn(256, sam.grid, sam.grid), (256, 256))
    pts = np.random.default_rng(0).uniform(0, 256, (16, 1, 2))
    sam.predict(pts, np.ones((16, 1)))
    c = time.process_time()
    sam.predict(pts, np.ones((16, 1)))
    return (time.process_time() - c) / threads / 16


def encoder_seconds(threads: int) -> tuple[float, float]:
    """(SAM ViT-B, DINOv2-B) CPU seconds / threads per view, random weights of the real architectures."""
    from models import dino_for  # bench/models.py

    from engine.models.profiles import PROFILES
    from engine.models.sam import SamSegmenter, build_sam

    image = np.full((256, 256, 3), 128, np.uint8)
    sam = SamSegmenter(build_sam("vit_b"), "random", torch.device("cpu"), random_weights=True)
    dino = dino_for(PROFILES["cpu"])
    out = []
    for fn in (lambda: sam.encode(image[None]), lambda: dino(np.full((1, 224, 224, 3), 128, np.uint8))):
        fn()
        c = time.process_time()
        fn()
        out.append((time.process_time() - c) / threads)
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one mesh, fewer settings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clicks", type=int, default=24, help="single clicks per iSeg point")
    ap.add_argument("--measure-encoders", action="store_true", help="time SAM/DINOv2 per view here (random weights)")
    ap.add_argument("--meshes", nargs="*", help="labelled meshes, e.g. fourleg/382 chair/101")
    ap.add_argument("--only", choices=("sam", "dino", "iseg"), help="one curve (run the three in parallel)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = CpuClock(args.threads)
    shipped = settings_for("cpu")
    sam_view_s, dino_view_s = encoder_seconds(args.threads) if args.measure_encoders else (SAM_VIEW_S, DINO_VIEW_S)
    prompt_s = sam_prompt_s(args.threads)
    if args.quick:
        sam_runs = {4: (3, 10, 25, 50, 100), 2: (50,), 8: (50,)}
        dino_runs = {60: (10, 25, 50, 100), 30: (50,)}
        iseg_grid = [(4, 50, 300, 200), (4, 3, 300, 200), (2, 50, 300, 200), (8, 50, 300, 200)]
    else:
        sam_runs = {v: (3, 10, 20, 40, 80, 150, 300) for v in (2, 4, 6, 8)}
        dino_runs = {v: (20, 45, 90, 180, 360) for v in (30, 60, 100)}
        iseg_grid = [(v, 80, 300, 200) for v in (2, 4, 6, 8)] + [(4, s, 300, 200) for s in (3, 20, 150)] + \
                    [(4, 80, st, 200) for st in (150, 600)] + [(4, 80, 300, mc) for mc in (100, 400)]
    if args.only == "iseg":  # the SAM fields the iSeg points need, nothing else
        sam_runs = {}
        for v, s, _, _ in iseg_grid:
            sam_runs[v] = tuple(sorted(set(sam_runs.get(v, ())) | {s}))
    sam_runs = {} if args.only == "dino" else sam_runs
    dino_runs = dino_runs if args.only in (None, "dino") else {}
    iseg_grid = iseg_grid if args.only in (None, "iseg") else []
    meshes = args.meshes or (QUICK_MESHES if args.quick else FULL_MESHES)
    rows: dict[str, list[dict]] = {"sam": [], "dino": [], "iseg": []}
    for name in meshes:
        lm = load_labelled(name)
        held_out = views(lm, HELD_OUT_VIEWS, HELD_OUT_SIZE, offset=True)
        fields = {}
        for kind, runs, teacher, view_s in (("sam", sam_runs, Teacher(lm, SAM_DIM), sam_view_s),
                                            ("dino", dino_runs, Teacher(lm, DINO_DIM), dino_view_s)):
            for v, checkpoints in runs.items():
                for f in field_curve(lm, teacher, held_out, shipped, kind, v, checkpoints, clock):
                    if kind == "sam" and any((v, f["steps"]) == g[:2] for g in iseg_grid):
                        fields[(v, f["steps"])] = f
                    if args.only == "iseg":
                        continue
                    rows[kind].append({"mesh": name, **{k: f[k] for k in ("views", "steps", "r2", "cosine", "distill_s")},
                                       "seconds": v * view_s + f["render_s"] + f["distill_s"]})
                    print(f"[{name}] {kind} field views={v} steps={f['steps']}: R2 {f['r2']:.3f} cos {f['cosine']:.3f} "
                          f"distill {f['distill_s']:.1f}s", flush=True)
        n = lm.mesh.num_vertices
        inside = np.flatnonzero(interior_vertices(lm.mesh.faces, lm.face_labels, n))
        clicks = np.random.default_rng(7).choice(inside, min(args.clicks, len(inside)), replace=False)
        for v, s, steps, max_clicks in iseg_grid:
            field = fields[(v, s)]
            r = iseg_point(lm, field, dict(shipped.iseg, steps=steps, max_clicks=max_clicks), clicks, clock)
            seconds = v * sam_view_s + field["render_s"] + field["distill_s"] + r["iseg_s"] + r["prompts"] * prompt_s
            rows["iseg"].append({"mesh": name, "sam_views": v, "sam_steps": s, "iseg_steps": steps,
                                 "max_clicks": max_clicks, "iou": r["iou"], "iou_se": r["iou_se"],
                                 "prompts": r["prompts"], "iseg_s": r["iseg_s"] + r["prompts"] * prompt_s,
                                 "seconds": seconds})
            print(f"[{name}] iseg sam_views={v} sam_steps={s} steps={steps} max_clicks={max_clicks}: IoU "
                  f"{r['iou']:.3f} +- {r['iou_se']:.3f}, {r['prompts']} prompts, {r['iseg_s']:.1f}s", flush=True)

    print(f"\nORACLE TEACHERS (planted features, rendered human labels), meshes: {', '.join(meshes)}; "
          f"{args.threads} threads, load {os.getloadavg()[0]:.1f}; seconds = CPU s / threads + model cost per view "
          f"(SAM {sam_view_s:.1f} s, DINOv2 {dino_view_s:.2f} s, SAM prompt {prompt_s * 1000:.0f} ms)")
    for kind, label in (("sam", "SAM field (64x64 grid, 256-d)"), ("dino", "DINO field (16x16 grid, 768-d)")):
        print(f"\n{label}: held-out R^2 / vertex cosine / seconds (teacher + render + distillation), mean over meshes")
        print(f"{'views':>6} {'steps':>6} {'R2':>7} {'cosine':>7} {'distill s':>10} {'seconds':>9}")
        for key, group in _groups(rows[kind], ("views", "steps")):
            print(f"{key[0]:>6} {key[1]:>6} {_m(group, 'r2'):7.3f} {_m(group, 'cosine'):7.3f} "
                  f"{_m(group, 'distill_s'):10.1f} {_m(group, 'seconds'):9.1f}")
    print("\niSeg single-click IoU (oracle view segmenter) / seconds (SAM views + field + decoder data & training)")
    print(f"{'sam views':>9} {'sam steps':>9} {'iseg steps':>10} {'max clicks':>10} {'IoU':>6} {'prompts':>8} "
          f"{'iseg s':>7} {'seconds':>8}")
    for key, group in _groups(rows["iseg"], ("sam_views", "sam_steps", "iseg_steps", "max_clicks")):
        print(f"{key[0]:>9} {key[1]:>9} {key[2]:>10} {key[3]:>10} {_m(group, 'iou'):6.3f} {_m(group, 'prompts'):8.0f} "
              f"{_m(group, 'iseg_s'):7.1f} {_m(group, 'seconds'):8.1f}")
    shipped_key = (shipped.sam_views, shipped.sam_steps, shipped.iseg.get("steps"), shipped.iseg.get("max_clicks"))
    result = {"oracle": True, "quick": args.quick, "meshes": list(meshes), "threads": args.threads,
              "sam_view_s": sam_view_s, "dino_view_s": dino_view_s, "sam_prompt_s": round(prompt_s, 4),
              "shipped_cpu": {"sam_views": shipped.sam_views, "sam_steps": shipped.sam_steps,
                              "dino_views": shipped.dino_views, "dino_steps": shipped.dino_steps,
                              "iseg_steps": shipped.iseg.get("steps"), "max_clicks": shipped.iseg.get("max_clicks")},
              "curves": {kind: [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rs]
                         for kind, rs in rows.items()}}
    shipped_iseg = [r for r in rows["iseg"] if (r["sam_views"], r["sam_steps"], r["iseg_steps"], r["max_clicks"])
                    == shipped_key]
    if shipped_iseg:
        result["shipped_iseg_iou"] = round(_m(shipped_iseg, "iou"), 4)
    print(json.dumps(result))
    return 0


def _groups(rows: list[dict], keys: tuple[str, ...]):
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return sorted(out.items())


def _m(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


if __name__ == "__main__":
    raise SystemExit(main())
